"""Checkpoints that prove their integrity: a digest of every array, checked on restore.

TensorStore's compressed chunks carry no checksum: one flipped bit in a checkpoint's array
data restores without an error, as a wrong value or a few. `Checkpointer` therefore saves
beside each step a record of the digests of the state's arrays (`digests`), and a restored
state whose digests differ (`verify`) is treated as a corrupt checkpoint: moved aside, and
the previous step restored instead.

The record protects itself: `record_crc32` is the CRC-32 of its other two fields, so a
damaged record (a changed digest, a renamed key, another algorithm's name) is told apart
from damaged data (`DigestRecordError` against `DigestMismatchError`), and neither can pass
as a smaller record that checks fewer arrays. The record must name exactly the arrays of
the state read (a record without `record_crc32`, written before it existed, is held to
that too).

Digests are taken per addressable shard, keyed by the array's path and the shard's index,
so a pod slice never gathers the state; replicas (shards at one index) are recorded once,
and a shard whose index was not recorded (a state restored onto another sharding) is not
checked. The algorithm is recorded with them:

- "crc32" (zlib's CRC-32 of the shard's bytes) where the arrays live in host memory (the
  CPU backend): no copy, and faster there than XLA:CPU's sums (benchmarks/RESULTS.md,
  "checkpoint digest").
- "sums32" on an accelerator, computed where the shard lives, so that a save copies two
  32-bit words per shard to the host, not the state. With the shard's bits read as 32-bit
  words w_0..w_{n-1} (narrower types widened, wider ones split):

      (sum_i w_i,  sum_i (2i + 1) w_i)   mod 2^32.

  A flipped bit changes one word by +-2^b, b < 32, and so each sum by 2^b times an odd
  number, which is never 0 mod 2^32.

Either catches every single-bit flip. They are checksums against bit rot, not
cryptographic hashes.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import re
import zlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


class DigestMismatchError(ValueError):
    """A restored array differs from the one saved: the checkpoint's data is damaged."""


class DigestRecordError(ValueError):
    """A step's digest record is missing or damaged, so its data cannot be verified."""


RECORD_CHECKSUM = "record_crc32"  # the record's checksum over its other fields


def _words(x: jax.Array) -> jax.Array:
    """The bits of `x` as a flat uint32 vector."""
    if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    if x.dtype == jnp.bool_:
        x = x.astype(jnp.uint8)
    size = x.dtype.itemsize
    if size == 4:
        return jax.lax.bitcast_convert_type(x, jnp.uint32).reshape(-1)
    if size < 4:
        unsigned = {1: jnp.uint8, 2: jnp.uint16}[size]
        return jax.lax.bitcast_convert_type(x, unsigned).reshape(-1).astype(jnp.uint32)
    return jax.lax.bitcast_convert_type(x, jnp.uint32).reshape(-1)  # 8 bytes: two words each


def _checksum(x: jax.Array) -> jax.Array:
    words = _words(x)
    odd = 2 * jnp.arange(words.size, dtype=jnp.uint32) + 1
    return jnp.stack([jnp.sum(words, dtype=jnp.uint32), jnp.sum(words * odd, dtype=jnp.uint32)])


@jax.jit
def _checksums(shards: list[jax.Array]) -> list[jax.Array]:
    return [_checksum(s) for s in shards]


def _shards(tree: Any) -> dict[str, jax.Array]:
    """This process's shards of `tree`'s arrays, one per distinct index, by "path[index]"."""
    shards = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        if not isinstance(leaf, jax.Array):
            leaf = jnp.asarray(leaf)
        name = jax.tree_util.keystr(path)
        for shard in leaf.addressable_shards:
            bounds = (s.indices(size)[:2] for s, size in zip(shard.index, leaf.shape))
            index = ",".join(f"{start}:{stop}" for start, stop in bounds)
            shards.setdefault(f"{name}[{index}]", shard.data)
    return shards


def _crc32(shards: dict[str, jax.Array]) -> dict[str, str]:
    def one(data: jax.Array) -> str:
        return f"{zlib.crc32(np.ascontiguousarray(np.asarray(data)).view(np.uint8)):08x}"

    with concurrent.futures.ThreadPoolExecutor(os.cpu_count()) as pool:  # zlib releases the GIL
        return dict(zip(shards, pool.map(one, shards.values())))


def _sums(shards: dict[str, jax.Array]) -> dict[str, str]:
    by_device: dict[Any, list[str]] = {}
    for key, data in shards.items():  # one program per device: jit wants its inputs on one
        by_device.setdefault(next(iter(data.devices())), []).append(key)
    result = {}
    for keys in by_device.values():
        sums = np.asarray(jax.device_get(_checksums([shards[k] for k in keys])))
        result.update({k: f"{int(a):08x}{int(b):08x}" for k, (a, b) in zip(keys, sums.tolist())})
    return result


ALGORITHMS = {"crc32": _crc32, "sums32": _sums}


def _algorithm(tree: Any) -> str:
    """CRC-32 where the arrays are in host memory already (no copy, and zlib is faster than
    XLA:CPU's sums); the sums on an accelerator, which then copies nothing to the host."""
    leaves = jax.tree.leaves(tree)
    on_cpu = all(d.platform == "cpu" for leaf in leaves if isinstance(leaf, jax.Array) for d in leaf.devices())
    return "crc32" if on_cpu else "sums32"


def _record_checksum(algorithm: Any, shards: Any) -> str:
    canonical = json.dumps({"algorithm": algorithm, "shards": shards}, sort_keys=True, separators=(",", ":"))
    return f"{zlib.crc32(canonical.encode()):08x}"


def digests(tree: Any, algorithm: str | None = None) -> dict[str, Any]:
    """The record of each of this process's shards of `tree`'s arrays: their digests, the
    algorithm (one of `ALGORITHMS`; by default the one for where the arrays are), and the
    record's own checksum."""
    algorithm = algorithm or _algorithm(tree)
    shards = ALGORITHMS[algorithm](_shards(tree))
    return {"algorithm": algorithm, "shards": shards, RECORD_CHECKSUM: _record_checksum(algorithm, shards)}


def check_record(record: Any) -> None:
    """Raises `DigestRecordError` saying what is wrong with a digest record as read."""
    if not isinstance(record, dict):
        raise DigestRecordError(f"its digest record is damaged: not a JSON object but {type(record).__name__}")
    fields = {"algorithm", "shards", RECORD_CHECKSUM}
    unknown, missing = sorted(set(record) - fields), sorted({"algorithm", "shards"} - set(record))
    if unknown or missing:
        raise DigestRecordError(
            "its digest record is damaged: "
            + "; ".join([f"unknown field(s) {unknown}"] * bool(unknown) + [f"no field(s) {missing}"] * bool(missing))
        )
    if RECORD_CHECKSUM in record:
        expected = _record_checksum(record["algorithm"], record["shards"])
        if record[RECORD_CHECKSUM] != expected:
            raise DigestRecordError(
                f"its digest record is damaged: the record's own checksum is {record[RECORD_CHECKSUM]!r}, "
                f"its content gives {expected!r}"
            )
    if record["algorithm"] not in ALGORITHMS:
        raise DigestRecordError(
            f"its digest record names the algorithm {record['algorithm']!r}, which this version does not know "
            f"({', '.join(sorted(ALGORITHMS))}): a damaged record, or one written by a newer version"
        )
    shards = record["shards"]
    if not isinstance(shards, dict) or not all(isinstance(v, str) and "[" in k for k, v in shards.items()):
        raise DigestRecordError("its digest record is damaged: its shards are not a map of array shards to digests")


def _canonical(key: str) -> str:
    """One spelling of a shard's path however its containers were restored: a field (a
    dataclass's `.params`, a NamedTuple's `.trace`) reads as the dict key it becomes when a
    checkpoint is read without its classes (`['params']`)."""
    return re.sub(r"\.([A-Za-z_]\w*)", r"['\1']", key)


def _array(shard_key: str) -> str:
    """The array's path of a shard's key "path[index]"."""
    return shard_key.rpartition("[")[0]


def verify(tree: Any, record: dict[str, Any], *, complete: bool = False) -> None:
    """Checks `tree` against a digest `record` (as `digests` writes it, read back).

    Raises `DigestRecordError` if the record is damaged: its checksum does not match, an
    unknown algorithm, or other arrays than `tree`'s (a renamed key is a damaged record,
    never an array left unchecked). Raises `DigestMismatchError` naming the first shard
    whose digest differs. A shard whose index was not recorded (another sharding) is
    skipped; with `complete`, every recorded shard must be in `tree` (a read of the whole
    state as saved)."""
    check_record(record)
    sealed = RECORD_CHECKSUM in record
    expected = {_canonical(k): v for k, v in record["shards"].items()}
    shards = {_canonical(k): v for k, v in _shards(tree).items()}
    recorded_arrays, arrays = {_array(k) for k in expected}, {_array(k) for k in shards}
    if recorded_arrays != arrays:
        extra, absent = sorted(recorded_arrays - arrays), sorted(arrays - recorded_arrays)
        names = [f"names {len(extra)} array(s) the state lacks, the first {extra[0]}"] * bool(extra) + [
            f"lacks {len(absent)} of its array(s), the first {absent[0]}"
        ] * bool(absent)
        raise DigestRecordError(f"its digest record is damaged: it {' and '.join(names)}")
    missing = [k for k in expected if k not in shards]
    if complete and missing:
        raise DigestMismatchError(
            f"{len(missing)} of the {len(expected)} array shards recorded with it are not in the state read, the "
            f"first {missing[0]}: its data is damaged or incomplete"
        )
    shards = {k: v for k, v in shards.items() if k in expected}
    for key, digest in ALGORITHMS[record["algorithm"]](shards).items():
        if expected[key] != digest:
            whose = (
                "its data is damaged (the digest record itself is intact)"
                if sealed
                else "its data, or its digest record (written before records carried a checksum), is damaged"
            )
            raise DigestMismatchError(
                f"array {key} does not match the digest saved with it ({digest} instead of {expected[key]}): {whose}"
            )
