"""What a compiled XLA program runs per call, counted from its optimised HLO text.

A scanned ResNet-1001 step on a GPU is bound by how many kernels it runs, not by its
arithmetic: tens of thousands of kernels per step, a few microseconds each
(benchmarks/results/history/2026-11-23.md, "7. GPU (one H200)"). `census(compiled.as_text())`
counts the operations of the scheduled program that each run as a kernel or library call,
the body of a while loop once per iteration (its `known_trip_count`), by kind:
- "fusion:kLoop", "fusion:kInput" (reductions), "fusion:__triton_gemm", ... for fusions
  (a kCustom fusion is named by its backend config);
- "custom-call:TARGET" for library calls ("__cudnn$convForward", "__cublas$gemm", ...);
- the opcode for anything else that does work: "copy", "dynamic-update-slice", ...

It is a static count: command buffers (CUDA graphs) and library calls that launch several
kernels are not told apart, so it ranks variants of one program; it does not replace a trace.
"""

from __future__ import annotations

import collections
import re
from typing import Any

# Operations that only name, regroup or alias buffers: no kernel runs for them.
_FREE = {
    "parameter",
    "constant",
    "get-tuple-element",
    "tuple",
    "bitcast",
    "after-all",
    "opt-barrier",
    "add-dependency",
    "partition-id",
    "replica-id",
    "domain",
}
_HEADER = re.compile(r"^(ENTRY )?%?([\w.\-]+) \(.*\{$")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%?[\w.\-]+ = .*?\s([a-z][a-z0-9\-]*)\((.*)$")


def _computations(text: str) -> tuple[dict[str, list[str]], str]:
    """The computations of an HLO module's text, by name, and the entry's name."""
    computations: dict[str, list[str]] = {}
    entry, current = "", None
    for line in text.splitlines():
        header = _HEADER.match(line)
        if header:
            current = header.group(2)
            computations[current] = []
            entry = current if header.group(1) else entry
        elif line == "}":
            current = None
        elif current is not None:
            computations[current].append(line)
    if not entry:
        raise ValueError("no ENTRY computation: not the text of a compiled HLO module.")
    return computations, entry


def _kind(opcode: str, rest: str) -> str:
    if opcode == "fusion":
        custom = re.search(r'"kind":"([\w$]+)"', rest)
        if "kind=kCustom" in rest and custom:
            return f"fusion:{custom.group(1)}"
        kind = re.search(r"kind=(k\w+)", rest)
        return f"fusion:{kind.group(1) if kind else '?'}"
    if opcode == "custom-call":
        target = re.search(r'custom_call_target="([^"]+)"', rest)
        return f"custom-call:{target.group(1) if target else '?'}"
    return opcode


def census(text: str) -> dict[str, Any]:
    """Operations run per call of the program, by kind, and their total ("launches")."""
    computations, entry = _computations(text)
    counts: collections.Counter[str] = collections.Counter()
    loops = []

    def visit(name: str, times: int) -> None:
        for line in computations[name]:
            match = _INSTRUCTION.match(line)
            if not match or match.group(1) in _FREE:
                continue
            opcode, rest = match.groups()
            if opcode == "while":
                trips = re.search(r'"known_trip_count":\{"n":"(\d+)"', rest)
                n = int(trips.group(1)) if trips else 1
                body = re.search(r"body=%?([\w.\-]+)", rest).group(1)
                condition = re.search(r"condition=%?([\w.\-]+)", rest).group(1)
                loops.append({"trips": n, "known": bool(trips), "times": times})
                visit(body, times * n)
                visit(condition, times * (n + 1))
            elif opcode in ("call", "conditional"):
                called = re.findall(
                    r"(?:to_apply|branch_computations=\{|true_computation|false_computation)"
                    r"=?%?([\w.\-]+)",
                    rest,
                )
                for callee in called[:1]:  # a conditional runs one branch: count the first
                    visit(callee, times)
            else:
                counts[_kind(opcode, rest)] += times

    visit(entry, 1)
    return {"launches": sum(counts.values()), "by_kind": dict(counts.most_common()), "loops": loops}


def summary(text: str, top: int = 8) -> dict[str, Any]:
    """`census`, with only the `top` most frequent kinds (for one JSON line)."""
    result = census(text)
    return {
        "launches": result["launches"],
        "by_kind": dict(list(result["by_kind"].items())[:top]),
        "loop_trips": [loop["trips"] for loop in result["loops"]],
    }
