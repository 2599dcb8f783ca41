"""Metrics to the console, to TensorBoard event files and to `metrics.jsonl`, in a local or
gs:// workdir.

clu's writers import TensorFlow at import time, and tensorboardX's `SummaryWriter` flushes
from a thread every `flush_secs` and reaches gs:// only through a client of its own. So
events are encoded with tensorboardX's protobufs and written here, synchronously: each
`write` leaves its values in `metrics.jsonl` and in the event file before it returns, so a
SIGKILL costs at most the window being logged. An event file is created with its first
values, so a run killed before logging anything leaves no empty one.

On Cloud Storage, where an object cannot grow, `metrics.jsonl` and the event file are
rewritten whole at each write from an in-memory copy, in one upload each (GCS makes an
upload visible whole or not at all); locally they are appended to. A write that meets a
Cloud Storage outage waits it out (`cloud_storage.Outage`, bounded by `storage_retry_s`).

Resume: `metrics.jsonl` is cut back to the restored step, so no step appears twice there,
and lines that are not records (undecodable bytes, a torn last line) are moved aside.
A resumed run starts a new event file and logs a `resumed_from_step` scalar, and
`read_metrics` keeps the newest file's value of each step.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import struct
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from absl import logging
from etils import epath

from resnet_identity.runs import cloud_storage
from resnet_identity.runs.files import append_text, as_path, explain_write_errors, is_local, write_atomically

METRICS_FILE = "metrics.jsonl"
# Records of steps a resumed run redoes (and lines without a step), moved out of METRICS_FILE
# rather than deleted.
SUPERSEDED_FILE = "metrics.superseded.jsonl"
# Lines of METRICS_FILE that are not records (undecodable bytes, not JSON), kept as they were.
DAMAGED_FILE = "metrics.damaged.jsonl"
EVENTS_PATTERN = "events.out.tfevents.*"


class MetricLogger:
    """Writes scalars from process 0; other processes only log to the console."""

    def __init__(
        self, workdir: epath.PathLike, *, resumed_from: int, is_main: bool = True, storage_retry_s: float = 300.0
    ):
        self.is_main = is_main
        self.path = as_path(workdir) / METRICS_FILE
        self._outage = None if is_local(self.path) else cloud_storage.Outage(str(self.path.parent), storage_retry_s)
        self._events: EventFile | None = None
        self._lines: list[str] | None = None  # METRICS_FILE's content, kept where it cannot be appended to
        if not is_main:
            return
        with explain_write_errors(f"metrics to {self.path}"):
            kept = _truncate_after(self.path, resumed_from)
        if not is_local(self.path):
            self._lines = kept
        self._events = EventFile(self.path.parent)
        if resumed_from > 0:
            self._events.add_scalar("resumed_from_step", resumed_from, resumed_from)

    def write(self, step: int, prefix: str, scalars: Mapping[str, float]) -> None:
        """Records `scalars` as `prefix/name` at `step`, in both files when it returns: a
        SIGKILL after it loses none of it (see the module doc)."""
        if not self.is_main:
            return
        line = json.dumps({"step": step, **{f"{prefix}/{k}": float(v) for k, v in scalars.items()}}) + "\n"
        for k, v in scalars.items():
            self._events.add_scalar(f"{prefix}/{k}", float(v), step)
        try:
            with explain_write_errors(f"metrics to {self.path.parent}"):
                if self._lines is None:
                    append_text(self.path, line)
                else:
                    self._lines.append(line)
                    self._retrying(lambda: write_atomically(self.path, "".join(self._lines)))
                self._retrying(self._events.flush)
        except BaseException:
            self._events = None  # the first failure is the one reported: close() tries no more
            raise

    def _retrying(self, write: Callable[[], None]) -> None:
        """`write()`; on Cloud Storage, once more after an outage (`cloud_storage.Outage`)."""
        try:
            write()
        except Exception as e:
            if self._outage is None or not cloud_storage.is_outage(e):
                raise
            self._outage.wait(f"writing metrics to {self.path.parent}", e)
            write()

    def console(self, message: str) -> None:
        if self.is_main:
            print(message, flush=True)
        else:
            logging.info(message)

    def close(self) -> None:
        """Writes what is still pending: only a `resumed_from_step` of a run that logged nothing."""
        if self._events is not None:
            with explain_write_errors(f"metrics to {self.path.parent}"):
                self._events.flush()


class EventFile:
    """One TensorBoard event file (TFRecord framing of `Event` protobufs), named as
    TensorBoard expects, created at the first `flush` that has values to write."""

    def __init__(self, directory: epath.Path):
        from tensorboardX.proto import event_pb2

        self._event_pb2 = event_pb2
        # TensorBoard's naming, with a random tail: two loggers of one process never share a file.
        self.path = directory / (
            f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}.{secrets.token_hex(4)}"
        )
        version = event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2")
        self._pending = [_record(version.SerializeToString())]
        self._has_values = False
        self._written = b""  # the file's content so far, where it is rewritten whole

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        from tensorboardX.proto import summary_pb2

        summary = summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=tag, simple_value=value)])
        event = self._event_pb2.Event(wall_time=time.time(), step=step, summary=summary)
        self._pending.append(_record(event.SerializeToString()))
        self._has_values = True

    def flush(self) -> None:
        if not self._has_values or not self._pending:
            return
        data = b"".join(self._pending)
        if is_local(self.path):
            with open(self.path, "ab") as f:
                f.write(data)
        else:
            self.path.write_bytes(self._written + data)
            self._written += data
        self._pending.clear()


def _record(data: bytes) -> bytes:
    """`data` framed as one TFRecord: length, its masked CRC-32C, data, the data's CRC."""
    from tensorboardX.record_writer import masked_crc32c

    header = struct.pack("<Q", len(data))
    return header + struct.pack("<I", masked_crc32c(header)) + data + struct.pack("<I", masked_crc32c(data))


def _truncate_after(path: epath.Path, step: int) -> list[str]:
    """Moves records past `step` to `SUPERSEDED_FILE` beside `path`, and returns the lines
    kept: records past `step` belong to steps the resumed run will redo (after a preemption,
    or a fallback to an older checkpoint).

    A line without a step (written by hand, say) is moved to `SUPERSEDED_FILE` with a
    warning. A line that is not a record (bytes that are not UTF-8, from a damaged disk or
    an editor; a half-written last record of a killed run) is moved, byte for byte, to
    `DAMAGED_FILE` with a warning: the resume repairs the file rather than fail on it.
    """
    if not path.exists():
        return []
    kept, superseded, damaged = [], [], []
    for number, raw in enumerate(path.read_bytes().splitlines(keepends=True), 1):
        if not raw.strip():
            continue
        try:
            line = raw.decode()
            record = json.loads(line)
        except ValueError as e:  # UnicodeDecodeError and JSONDecodeError alike
            logging.warning(
                "Moving line %d of %s, which is not a whole record (%s), to %s: %.80r",
                number,
                path,
                "not UTF-8 text" if isinstance(e, UnicodeDecodeError) else "not JSON: a run killed while writing it?",
                DAMAGED_FILE,
                raw,
            )
            damaged.append(raw if raw.endswith(b"\n") else raw + b"\n")
            continue
        if not isinstance(record, dict) or not isinstance(record.get("step"), int):
            logging.warning(
                "Moving line %d of %s, which has no step (this trainer did not write it), to %s: %.80r",
                number,
                path,
                SUPERSEDED_FILE,
                line,
            )
            superseded.append(line)
            continue
        (kept if record["step"] <= step else superseded).append(line if line.endswith("\n") else line + "\n")
    if damaged:
        damaged_path = path.parent / DAMAGED_FILE
        write_atomically(
            damaged_path, (damaged_path.read_bytes() if damaged_path.exists() else b"") + b"".join(damaged)
        )
    if superseded:
        append_text(path.parent / SUPERSEDED_FILE, "".join(superseded))
    write_atomically(path, "".join(kept))
    return kept


def read_metrics(workdir: epath.PathLike) -> dict[str, dict[int, float]]:
    """{tag: {step: value}} from a workdir's TensorBoard event files (local or gs://); where
    files disagree on a step, the newest file (by its first event's time) wins."""
    from tensorboardX.proto import event_pb2

    files = []
    for path in as_path(workdir).glob(EVENTS_PATTERN):
        events = [event_pb2.Event.FromString(record) for record in _tfrecords(path.read_bytes())]
        if events:
            files.append((events[0].wall_time, path.name, events))
    series: dict[str, dict[int, float]] = {}
    for _, _, events in sorted(files, key=lambda f: f[:2]):
        for event in events:
            for value in event.summary.value:
                number = value.simple_value if value.HasField("simple_value") else _tensor_value(value)
                series.setdefault(value.tag, {})[event.step] = number
    return series


def _tensor_value(value: Any) -> float:
    return float(value.tensor.float_val[0]) if value.tensor.float_val else float("nan")


def _tfrecords(data: bytes) -> Iterator[bytes]:
    """The payloads of a TFRecord file's bytes (length, crc, data, crc), less a torn tail."""
    offset = 0
    while offset + 12 <= len(data):
        (length,) = struct.unpack("<Q", data[offset : offset + 8])
        end = offset + 12 + length
        if end + 4 > len(data):
            return
        yield data[offset + 12 : end]
        offset = end + 4
