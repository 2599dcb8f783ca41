"""What every command-line entry point shares: a quiet console and one line per mistake.

`cli.run(main)` replaces `absl.app.run(main)`:

- library INFO logging (Orbax's checkpoint chatter, JAX's backend probing, TensorFlow's C++
  start-up lines) stays off unless `--verbosity` asks for it (`--verbosity=0` is INFO);
- `--help` prints the module's docstring, its flags and the entry point's `help_epilog`, then
  exits 0 (absl's own `--help` exits 1); `--helpfull` adds every library's flags;
- a user's mistake, whether in the flags, in a config file or its overrides, or raised by the
  run as a `UserError` (or passed to `fail`), is printed as one message that says what to do,
  and the process exits 1 without a traceback; so is a missing optional extra (an ImportError
  whose message gives the `pip install` command);
- a signal outside the training loop's own handler (`interrupts`) ends the command with one
  line: Ctrl-C exits 130 ("interrupted."), SIGTERM or SIGHUP exits 75 with what was saved, so
  that a retry loop reruns it; once the command is exiting, a further signal changes nothing;
- a reader that closes the pipe early (`--help | head`) ends the command quietly, with the
  status 141 a shell gives a writer that SIGPIPE ended (what `cat`, `seq` or `yes` report).
"""

from __future__ import annotations

import contextlib
import difflib
import os
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import NoReturn

from absl import app, flags, logging
from ml_collections.config_flags import config_flags

from resnet_identity.runs import interrupts

EXIT_USER_ERROR = 1
EXIT_INTERRUPTED = 130  # the shell's status for a process ended by SIGINT
EXIT_READER_GONE = 141  # the shell's status for a process ended by SIGPIPE

HELP_FLAGS = ("--help", "-help", "-h", "--helpshort", "-helpshort", "-?")
HELPFULL_FLAGS = ("--helpfull", "-helpfull")


class UserError(Exception):
    """A mistake the user can fix; the message says how. Printed alone, exit status 1."""


def fail(message: str) -> NoReturn:
    """Prints `error: message` to stderr and exits 1; after a signal, the signal's exit instead
    (a failure then is usually its doing: an import it cut short, say)."""
    interrupts.check()
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(EXIT_USER_ERROR)


def run(main: Callable[[list[str]], int | None], *, help_epilog: Callable[[], str] | None = None) -> NoReturn:
    """Parses the flags and calls `main(argv)` as `app.run` does, with the behaviour above.

    `help_epilog` is called only for `--help`, so it may import what it needs.
    """
    interrupts.catch_early()  # done already by a program that must catch signals sooner (train.py)

    def parse(argv: list[str]) -> list[str]:
        options = argv[1 : argv.index("--")] if "--" in argv else argv[1:]
        if any(a in HELP_FLAGS or a in HELPFULL_FLAGS for a in options):
            app.usage(shorthelp=not any(a in HELPFULL_FLAGS for a in options), writeto_stdout=True)
            if help_epilog is not None:
                print(help_epilog())
            sys.exit(0)
        try:
            with interrupts.deferred():  # a config file imports JAX, whose imports a signal would break
                remaining = flags.FLAGS(argv)
                _load_config_files()
        except flags.Error as e:
            fail(_flag_error_message(e, argv))
        except Exception as e:  # noqa: BLE001 - whatever a config file raised, reported as one line
            fail(_config_error_message(e, argv))
        return remaining

    def quiet_main(argv: list[str]) -> int | None:
        if not flags.FLAGS["verbosity"].present:
            logging.set_verbosity(logging.WARNING)
            os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")  # TensorFlow's C++ INFO lines, if it is imported
        try:
            return main(argv)
        except UserError as e:
            fail(str(e))
        except ImportError as e:
            interrupts.check()  # an import a signal cut short
            if "pip install" not in str(e):  # a missing extra names its install command; anything else is a bug
                raise
            fail(str(e))

    try:
        with closed_pipe_is_quiet():
            interrupts.arm()  # a signal recorded while the program started stops it here
            app.run(quiet_main, flags_parser=parse)
    except KeyboardInterrupt as interrupt:
        _exit_interrupted(getattr(interrupt, "saved", ""))
    except interrupts.Stopped as stop:
        _exit_stopped(stop)
    except SystemExit:
        interrupts.ignore_from_now()
        raise
    raise AssertionError("app.run returned")  # it always exits


def _exit_interrupted(saved: str = "") -> NoReturn:
    """Says "interrupted." (and what was saved, if the run said) and exits 130, as a shell
    reports a process ended by Ctrl-C."""
    interrupts.ignore_from_now()
    print(f"interrupted: {saved}." if saved else "interrupted.", file=sys.stderr, flush=True)
    sys.exit(EXIT_INTERRUPTED)


def _exit_stopped(stop: interrupts.Stopped) -> NoReturn:
    """Says which signal stopped the command and what was saved, and exits 75 for a rerun."""
    interrupts.ignore_from_now()
    saved = stop.saved or "stopped before anything was saved"
    interrupts.write_line(f"received {stop.signal_name}: {saved}; rerun the same command")
    sys.exit(interrupts.EXIT_STOPPED)


@contextlib.contextmanager
def closed_pipe_is_quiet() -> Iterator[None]:
    """A reader that closes the pipe early ends the block quietly, status 141 (`run` does this;
    an entry point with its own argument parser wraps its `main()` in it)."""
    try:
        try:
            yield
        finally:
            sys.stdout.flush()  # a reader gone from the pipe is noticed here, not at exit
    except BrokenPipeError:
        _exit_reader_gone()


def _exit_reader_gone() -> NoReturn:
    """stdout's reader closed the pipe: nothing more can be shown, and nothing is wrong."""
    interrupts.ignore_from_now()
    devnull = os.open(os.devnull, os.O_WRONLY)
    for stream in (sys.stdout, sys.stderr):  # Python's last flush at exit would fail again
        os.dup2(devnull, stream.fileno())
    sys.exit(EXIT_READER_GONE)


def require(**values: object) -> None:
    """Fails, naming each flag in `values` that is unset (None) or empty (`--workdir=` would
    otherwise mean the current directory)."""
    missing = [name for name, value in values.items() if value is None or value == ""]
    if missing:
        fail(
            " and ".join(f"--{name}" for name in missing)
            + (" is" if len(missing) == 1 else " are")
            + " required; `--help` says what each does."
        )


def no_arguments(argv: Sequence[str]) -> None:
    """Refuses positional arguments, which absl would otherwise pass over silently."""
    if len(argv) > 1:
        hint = f" Did you mean --config={argv[1]}?" if argv[1].endswith(".py") or ".py:" in argv[1] else ""
        fail(f"unexpected argument(s) {list(argv[1:])}: options are written --name=value.{hint} `--help` lists them.")


def _config_flag_names() -> list[str]:
    return [name for name, flag in flags.FLAGS._flags().items() if isinstance(flag, config_flags._ConfigFlag)]


def _load_config_files() -> None:
    """ml_collections defers a config file it could not read (missing, a directory, no
    permission) until the value is used; this makes the failure happen here, at parse time."""
    for name in _config_flag_names():
        value = flags.FLAGS[name].value
        if value is not None:
            getattr(value, "keys", None)  # an unreadable file's placeholder raises OSError on any attribute


def _flag_argument(name: str, argv: Iterable[str]) -> str | None:
    """The command-line value of `--name=VALUE` (the last one given)."""
    found = None
    for arg in argv:
        if arg.startswith((f"--{name}=", f"-{name}=")):
            found = arg.split("=", 1)[1]
    return found


def _flag_error_message(error: flags.Error, argv: list[str]) -> str:
    """absl's flag errors, with 'must have a value other than None' said as 'is required'."""
    required = re.findall(r"Flag --(\S+) must have a value other than None", str(error))
    if required:
        return (
            " and ".join(f"--{name}" for name in dict.fromkeys(required))
            + (" is" if len(set(required)) == 1 else " are")
            + " required; `--help` says what each does."
        )
    inner = _innermost(error)
    if inner is not error and "Error whilst parsing config file" in str(error):
        return _config_error_message(inner, argv)
    return f"{str(error).removeprefix('flag ')} (`--help` lists the flags)."


def _chain(error: BaseException) -> list[BaseException]:
    """The exception and those it was raised from or while handling, outermost first."""
    chain = [error]
    while (inner := chain[-1].__cause__ or chain[-1].__context__) is not None and inner not in chain:
        chain.append(inner)
    return chain


def _innermost(error: BaseException) -> BaseException:
    return _chain(error)[-1]


def _config_argument(argv: list[str]) -> str | None:
    for name in _config_flag_names():
        value = _flag_argument(name, argv)
        if value is not None:
            return value
    return None


def _config_path(argv: list[str]) -> str | None:
    value = _config_argument(argv)
    return None if value is None else value.split(":", 1)[0]


def _config_preset(argv: list[str]) -> str | None:
    value = _config_argument(argv)
    return value.split(":", 1)[1] if value is not None and ":" in value else None


def _no_presets_message(path: str | None, preset: str) -> str:
    """`--config=mine.py:smoke` on a file whose get_config() takes no preset."""
    from resnet_identity.training.recipes import PRESETS  # here: importing it imports JAX

    return (
        f"config file {path!r} has no presets: its get_config() takes no argument, so ':{preset}' cannot apply. "
        f"Drop ':{preset}', or give it one as the shipped configs do: `def get_config(preset=None)` ending in "
        f"`return recipes.apply_preset(c, preset)`. Their presets: {', '.join(PRESETS)} "
        f"(`python train.py --help` lists each config's)."
    )


def _config_error_message(error: BaseException, argv: list[str]) -> str:
    """One line for what went wrong with a config file or a `--config.FIELD=VALUE` override."""
    path = _config_path(argv)
    # An unknown field: ml_collections raises AttributeError(KeyError(message)) from a chain
    # of KeyErrors; the fullest message carries its "Did you mean".
    key_messages = [str(e.args[0]) for e in _chain(error) if isinstance(e, KeyError) and e.args]
    if key_messages:
        return _unknown_field_message(max(key_messages, key=len), argv)
    inner = _innermost(error)
    if isinstance(inner, SyntaxError):
        where = f"{inner.filename}, line {inner.lineno}" if inner.lineno else str(inner.filename)
        code = f": {inner.text.strip()}" if inner.text else ""
        return f"syntax error in config file {where}{code} ({inner.msg}). Fix the file and rerun."
    if isinstance(inner, OSError) and path is not None:
        if not os.path.exists(path):
            return f"config file {path!r} does not exist.{_nearby_configs(path)}"
        if os.path.isdir(path):
            return f"--config={path} is a folder; name a config file in it.{_nearby_configs(os.path.join(path, ''))}"
        reason = inner.strerror or str(inner).strip().splitlines()[-1].strip()
        return f"cannot read config file {path!r} ({reason})."
    if isinstance(inner, AttributeError) and "get_config" in str(inner):
        return f"config file {path!r} defines no get_config(); a config file returns its ConfigDict from get_config()."
    preset = _config_preset(argv)
    if isinstance(inner, TypeError) and preset and "get_config() takes 0 positional arguments" in str(inner):
        return _no_presets_message(path, preset)
    kind = "" if isinstance(inner, ValueError) else f"{type(inner).__name__}: "
    return f"config file {path!r}: {kind}{inner}"


def _unknown_field_message(key_message: str, argv: list[str]) -> str:
    """`--config.batch_sise=64`: ml_collections says "'batch_sise'\\nDid you mean "batch_size"
    instead of "batch_sise"?"; this says it once, plainly, with the field's full path."""
    field = re.match(r"'([^']*)'", key_message)
    name = field.group(1) if field else key_message
    overrides = [
        a.split("=", 1)[0].lstrip("-").split(".", 1)[1]
        for a in argv
        if a.startswith("--") and "." in a.split("=", 1)[0]
    ]
    path = next((o for o in overrides if o == name or o.endswith("." + name)), name)
    suggestion = re.search(r'Did you mean "([^"]+)"', key_message)
    hint = ""
    from resnet_identity.training.config_migration import RENAMED  # here: importing it imports JAX

    if path in RENAMED:  # an older version's name, from an old command or notes
        hint = f" It is now {RENAMED[path]!r}."
    elif suggestion:
        hint = f" Did you mean {path[: len(path) - len(name)] + suggestion.group(1)!r}?"
    return (
        f"no config field {path!r}.{hint} `python train.py --config=FILE --list_config` lists the fields "
        f"and their values."
    )


def _nearby_configs(path: str) -> str:
    folder = os.path.dirname(path) or "."
    if not os.path.isdir(folder):
        return ""
    configs = sorted(f for f in os.listdir(folder) if f.endswith(".py") and not f.startswith("_"))
    if not configs:
        return ""
    close = difflib.get_close_matches(os.path.basename(path), configs, n=1)
    hint = f" Did you mean {os.path.join(folder, close[0])!r}?" if close else ""
    return f"{hint} Configs in {folder}/: {', '.join(configs)}."
