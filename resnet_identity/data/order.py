"""Which examples make up each batch, for the sources held in host memory.

Training order: for epoch e, ``perm_e = np.random.default_rng([seed, e])
.permutation(N)``. The global batch of step s is positions
``[s*B, (s+1)*B)`` of the infinite concatenation ``perm_0, perm_1, ...``, so a
batch may straddle an epoch boundary and no example is ever dropped. Process
p takes rows ``[p*B/P, (p+1)*B/P)`` of that global batch.

Because position -> example is a closed-form function of (seed, position),
the stream can start at any step without replaying the steps before it.

Evaluation order: the evaluation split in its stored order, padded at the end
to a whole number of global batches; process p again takes its row slice of
each global batch.
"""

from collections.abc import Iterator

import numpy as np


class EpochOrder:
    """Maps stream positions to example indices.

    Only the permutations of the epochs currently being read are kept (at most
    two: a batch straddling a boundary needs both), so a long run never
    recomputes a permutation per step and never holds more than two.
    """

    def __init__(self, seed: int, num_examples: int):
        if num_examples < 1:
            raise ValueError(f"num_examples must be >= 1, got {num_examples}.")
        self.seed = seed
        self.num_examples = num_examples
        self._cache: dict[int, np.ndarray] = {}

    def permutation(self, epoch: int) -> np.ndarray:
        """``perm_epoch`` of the module docstring."""
        if epoch not in self._cache:
            if len(self._cache) >= 2:
                del self._cache[min(self._cache)]
            rng = np.random.default_rng([self.seed, epoch])
            self._cache[epoch] = rng.permutation(self.num_examples)
        return self._cache[epoch]

    def indices(self, start: int, count: int) -> np.ndarray:
        """Example indices at stream positions ``[start, start + count)``."""
        pieces = []
        position, end = start, start + count
        while position < end:
            epoch, offset = divmod(position, self.num_examples)
            take = min(end - position, self.num_examples - offset)
            pieces.append(self.permutation(epoch)[offset : offset + take])
            position += take
        return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)


def train_slice_start(step: int, global_batch_size: int, process_index: int, local_batch: int) -> int:
    """Stream position of the first row this process yields at ``step``."""
    return step * global_batch_size + process_index * local_batch


def eval_index_batches(
    num_examples: int, global_batch_size: int, process_index: int, local_batch: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yields ``(indices, mask)`` for each of this process's evaluation batches.

    Padding rows get index 0 (any valid row would do; the mask hides it) and
    mask False. All processes yield ``ceil(num_examples / global_batch_size)``
    batches, so collective evaluation steps stay in lockstep.
    """
    num_batches = -(-num_examples // global_batch_size)
    rows = np.arange(local_batch)
    for batch in range(num_batches):
        positions = batch * global_batch_size + process_index * local_batch + rows
        mask = positions < num_examples
        yield np.where(mask, positions, 0), mask
