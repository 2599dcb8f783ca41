"""Metrics to the console, to TensorBoard event files and to `metrics.jsonl`.

clu's writers import TensorFlow at import time (`clu.metric_writers` pulls in its TF
summary writer), which would break the rule that training on embedded or synthetic data
needs no TensorFlow. So events are written with tensorboardX (pure Python), and every
logged value is also appended to `metrics.jsonl`, which notebooks read without either.

Resume: `metrics.jsonl` is cut back to the restored step, so no step appears twice there.
TensorBoard files are append-only; a resumed run starts a new event file and logs a
`resumed_from_step` scalar, and `read_metrics` keeps the newest value of each step.
"""

from __future__ import annotations

import glob
import json
import os
import struct
from typing import Any, Mapping

from resnet_identity.files import write_atomically

from absl import logging

METRICS_FILE = "metrics.jsonl"
# Records of steps a resumed run redoes, moved out of METRICS_FILE rather than deleted.
SUPERSEDED_FILE = "metrics.superseded.jsonl"


class MetricLogger:
    """Writes scalars from process 0; other processes only log to the console."""

    def __init__(self, workdir: str, *, resumed_from: int, is_main: bool = True):
        self.is_main = is_main
        self.path = os.path.join(workdir, METRICS_FILE)
        self._events = None
        if not is_main:
            return
        _truncate_after(self.path, resumed_from)
        from tensorboardX import SummaryWriter

        self._events = SummaryWriter(logdir=workdir, flush_secs=30)
        if resumed_from > 0:
            self._events.add_scalar("resumed_from_step", resumed_from, resumed_from)

    def write(self, step: int, prefix: str, scalars: Mapping[str, float]) -> None:
        if not self.is_main:
            return
        record = {"step": step, **{f"{prefix}/{k}": float(v) for k, v in scalars.items()}}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        for k, v in scalars.items():
            self._events.add_scalar(f"{prefix}/{k}", float(v), step)

    def console(self, message: str) -> None:
        if self.is_main:
            print(message, flush=True)
        else:
            logging.info(message)

    def close(self) -> None:
        if self._events is not None:
            self._events.close()


def _truncate_after(path: str, step: int) -> None:
    """Moves records past `step` to `SUPERSEDED_FILE` beside `path`: they belong to steps
    the resumed run will redo (after a preemption, or a fallback to an older checkpoint).

    A line that does not parse (the half-written last record of a killed run) is dropped,
    with a warning, so that the next append starts on a line of its own.
    """
    if not os.path.exists(path):
        return
    kept, superseded = [], []
    with open(path) as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                logging.warning("Dropping line %d of %s, which is not a whole record (a run killed "
                                "while writing it): %.80r", number, path, line)
                continue
            (kept if record["step"] <= step else superseded).append(line)
    if superseded:
        with open(os.path.join(os.path.dirname(path), SUPERSEDED_FILE), "a") as f:
            f.writelines(superseded)
    write_atomically(path, "".join(kept))


def read_metrics(workdir: str) -> dict[str, dict[int, float]]:
    """{tag: {step: value}} from a workdir's TensorBoard event files, newest file winning."""
    from tensorboardX.proto import event_pb2

    series: dict[str, dict[int, float]] = {}
    for path in sorted(glob.glob(os.path.join(workdir, "events.out.tfevents.*")), key=os.path.getmtime):
        for record in _tfrecords(path):
            event = event_pb2.Event.FromString(record)
            for value in event.summary.value:
                number = value.simple_value if value.HasField("simple_value") else _tensor_value(value)
                series.setdefault(value.tag, {})[event.step] = number
    return series


def _tensor_value(value: Any) -> float:
    return float(value.tensor.float_val[0]) if value.tensor.float_val else float("nan")


def _tfrecords(path: str):
    """Yields the payloads of a TFRecord file (length, crc, data, crc), skipping a torn tail."""
    with open(path, "rb") as f:
        while header := f.read(12):
            if len(header) < 12:
                return
            (length,) = struct.unpack("<Q", header[:8])
            data = f.read(length)
            if len(data) < length or len(f.read(4)) < 4:
                return
            yield data
