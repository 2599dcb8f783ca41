"""What the checkpoint digests cost: digesting a state against saving it.

    python -m benchmarks.checkpoint_digest [--model=preact_resnet200] [--rounds=3] [--workdir=DIR]

Builds the model's training state (parameters, batch statistics and SGD momentum, as
`trainer.py` initialises it; pre-act ResNet-200, 1000 classes: about 129M numbers), then,
round after round, times `integrity.digests(state)` by each algorithm ("crc32", the
default where arrays live in host memory, and "sums32", the accelerators' default, here
run by XLA:CPU) and a whole checkpoint save (`Checkpointer.maybe_save` then `wait`, which
includes the default digest) into a fresh directory, so that all share the machine's
load. The first call of each, which compiles "sums32", is reported apart. Prints one JSON
line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

from benchmarks import step_time
from resnet_identity.training import xla_config


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="preact_resnet200")
    parser.add_argument("--num_classes", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workdir", default=None, help="where the checkpoints go (default: a temporary folder)")
    args = parser.parse_args(argv)
    import jax

    from resnet_identity.runs import integrity
    from resnet_identity.runs.checkpointing import Checkpointer

    setup = step_time.training_setup(args.model, 1, num_classes=args.num_classes)
    options = xla_config.init_compiler_options(jax.default_backend())
    state = setup.init.lower(setup.init_key).compile(compiler_options=options)(setup.init_key)
    jax.block_until_ready(state)
    numbers = sum(leaf.size for leaf in jax.tree.leaves(state))
    nbytes = sum(leaf.nbytes for leaf in jax.tree.leaves(state))

    def timed(algorithm: str) -> float:
        start = time.perf_counter()
        integrity.digests(state, algorithm)
        return time.perf_counter() - start

    first = {algorithm: timed(algorithm) for algorithm in integrity.ALGORITHMS}
    digest_s: dict[str, list[float]] = {algorithm: [] for algorithm in integrity.ALGORITHMS}
    save_s = []
    with tempfile.TemporaryDirectory(dir=args.workdir) as directory:
        with Checkpointer(os.path.join(directory, "checkpoints"), every_steps=1, keep=1) as checkpointer:
            for step in range(1, args.rounds + 1):
                for algorithm, times in digest_s.items():
                    times.append(timed(algorithm))
                start = time.perf_counter()
                checkpointer.maybe_save(step, state)
                checkpointer.wait()
                save_s.append(time.perf_counter() - start)
    save = statistics.median(save_s)
    result = {
        "model": args.model,
        "state_numbers": numbers,
        "state_mb": round(nbytes / 2**20, 1),
        "leaves": len(jax.tree.leaves(state)),
        "device": f"{jax.devices()[0].platform}",
        "default_algorithm": integrity.digests({"x": jax.numpy.zeros(1)})["algorithm"],
        "save_s": round(save, 3),
        "rounds": args.rounds,
    }
    for algorithm, times in digest_s.items():
        digest = statistics.median(times)
        result.update(
            {
                f"{algorithm}_first_s": round(first[algorithm], 3),
                f"{algorithm}_s": round(digest, 3),
                f"{algorithm}_gb_per_s": round(nbytes / digest / 1e9, 2),
                f"{algorithm}_share_of_save": round(digest / save, 4),
            }
        )
    result["loadavg_1m_5m"] = [round(x, 2) for x in os.getloadavg()[:2]]
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    xla_config.use_huge_pages()
    main()
