"""The commands of README.md and docs/*.md, read from their fenced ```bash blocks.

A block is a shell session: each top-level line is one command, a line ending in `\\` or
inside an open quote (a multi-line `--command='...'`) goes on, and a comment line or a blank
line is skipped. ```text and ```console blocks are output or synopses, not commands.

A line that only sets variables (`ZONE=us-east5-b`) is not a command of its own: a terminal
keeps the variable, so it is prepended to the doc's later commands (`Command.preamble`).

`invocations(text)` finds each program run in a command (`python train.py ...`,
`python -m resnet_identity.X ...`), with the place where flags can be appended to it, also
inside a quoted ssh payload.
"""

from __future__ import annotations

import dataclasses
import pathlib
import re
import shlex

ROOT = pathlib.Path(__file__).resolve().parent.parent
_FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<lang>[\w-]*)\s*$")
_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=\S*$")
_PROGRAM = re.compile(r"\bpython3?(?:\.\d+)? (?:-m (?P<module>[\w.]+)|(?P<script>[\w/]+\.py))")


@dataclasses.dataclass(frozen=True)
class Command:
    doc: str  # relative to the repository, e.g. "docs/tpu.md"
    line: int  # where the command starts in the doc, 1-based
    text: str  # as typed, continuation lines included
    preamble: str = ""  # the doc's earlier variable assignments

    @property
    def id(self) -> str:
        return f"{self.doc}:{self.line}"


def doc_paths() -> list[pathlib.Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def read_commands(paths=None) -> list[Command]:
    commands = []
    for path in paths or doc_paths():
        doc = path.relative_to(ROOT).as_posix()
        assignments = {}  # name -> the line that set it last
        for first_line, lines in _bash_blocks(path.read_text().splitlines()):
            for line, text in _split(lines, first_line):
                if _ASSIGNMENT.match(text):
                    assignments[text.split("=", 1)[0]] = text
                else:
                    commands.append(Command(doc, line, text, "\n".join(assignments.values())))
    return commands


def _bash_blocks(lines: list[str]):
    """(first line number, lines without the fence's indent) of each ```bash block."""
    block, indent, lang = None, "", None
    for number, line in enumerate(lines, start=1):
        fence = _FENCE.match(line)
        if block is None:
            if fence:
                indent, lang, block, start = fence["indent"], fence["lang"], [], number + 1
        elif fence and fence["lang"] == "":
            if lang == "bash":
                yield start, block
            block = None
        else:
            block.append(line[len(indent) :] if line.startswith(indent) else line)


def _split(lines: list[str], first_line: int):
    """(line number, text) of each command of a block."""
    text, start, quote = "", None, None
    for number, line in enumerate(lines, start=first_line):
        if start is None:
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            start = number
        text = f"{text}\n{line}" if text else line
        quote = _open_quote(line, quote)
        if quote is None and not line.endswith("\\"):
            yield start, text
            text, start = "", None
    if start is not None:
        raise ValueError(f"line {start}: a command that never ends (an open quote or a trailing backslash)")


def _open_quote(line: str, quote: str | None) -> str | None:
    """The quote still open at the end of `line`, given the one open at its start."""
    i = 0
    while i < len(line):
        c = line[i]
        if quote is None:
            if c == "#" and (i == 0 or line[i - 1].isspace()):
                return None  # a comment runs to the end of the line
            if c in "'\"":
                quote = c
            elif c == "\\":
                i += 1
        elif c == quote:
            quote = None
        elif c == "\\" and quote == '"':
            i += 1
        i += 1
    return quote


@dataclasses.dataclass(frozen=True)
class Invocation:
    program: str  # "train.py", "resnet_identity.predict", ...
    start: int
    end: int  # where appended flags go: before a redirection, `&`, `&&`, `;`, a comment or the line's end
    argv: tuple[str, ...]  # the arguments after the program

    def flag(self, name: str) -> str | None:
        """The last value of --name=VALUE, as the flag parser takes it."""
        values = [a.split("=", 1)[1] for a in self.argv if a.startswith(f"--{name}=")]
        return values[-1] if values else None

    def positionals(self) -> list[str]:
        return [a for a in self.argv if not a.startswith("-")]


def invocations(text: str) -> list[Invocation]:
    found = []
    for match in _PROGRAM.finditer(text):
        in_single_quotes = _quote_at(text, match.start()) == "'"
        end = _end_of_invocation(text, match.end(), in_single_quotes)
        words = shlex.split(text[match.end() : end].replace("\\\n", " "), comments=True)
        found.append(Invocation(match["module"] or match["script"], match.start(), end, tuple(words)))
    return found


def _quote_at(text: str, position: int) -> str | None:
    quote = None
    for line in text[:position].split("\n"):
        quote = _open_quote(line, quote)
    return quote


def _end_of_invocation(text: str, i: int, in_single_quotes: bool) -> int:
    """Where the invocation starting before `i` ends: its flags may be appended there."""
    quote = None
    end = i
    while i < len(text):
        c = text[i]
        if quote is not None:
            if c == quote:
                quote = None
        elif c == "'" and in_single_quotes:
            break  # the end of the ssh payload that holds the invocation
        elif c in "'\"":
            quote = c
        elif c == "\\" and text[i + 1 : i + 2] == "\n":
            i += 2
            continue
        elif c in "\n&;|<>" or (c == "#" and text[i - 1].isspace()) or (c.isdigit() and text[i + 1 : i + 2] == ">"):
            break
        if not c.isspace():
            end = i + 1
        i += 1
    return end


# What a command reads and writes, by its flags.
_READERS = ("resnet_identity.convert", "resnet_identity.predict", "resnet_identity.evaluate")


def reads(command: Command) -> set[str]:
    paths = set()
    for invocation in invocations(command.text):
        paths |= {invocation.flag("weights"), invocation.flag("config.init_from")}
        if invocation.program in _READERS:
            paths.add(invocation.flag("workdir"))
        if invocation.program == "resnet_identity.convert":
            paths |= {p for p in invocation.positionals() if p.endswith((".pth", ".safetensors"))}
    return {p for p in paths if p and not p.startswith(("/", "gs://"))}


def writes(command: Command) -> set[str]:
    paths = set()
    for invocation in invocations(command.text):
        paths |= {invocation.flag("out"), invocation.flag("features")}
        if invocation.program == "train.py":
            paths.add(invocation.flag("workdir"))
    return {p for p in paths if p and not p.startswith(("/", "gs://"))}


def producer(path: str, reader: Command, commands: list[Command]) -> Command | None:
    """The docs command that writes `path` for `reader`: in the reader's doc, the nearest before
    it, else the nearest after it; else the first in another doc."""
    writers = [c for c in commands if path in writes(c) and c != reader]
    same_doc = [c for c in writers if c.doc == reader.doc]
    before = [c for c in same_doc if c.line < reader.line]
    if before:
        return before[-1]
    return (same_doc or writers or [None])[0]
