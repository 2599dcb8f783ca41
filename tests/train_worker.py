"""Runs a tiny training job in a fresh process and saves its final state for comparison.

Used by the multi-device, multi-process and fault-injection tests, which need a process of
their own (device count and distributed init are fixed at start-up; kills need a victim).

  python tests/train_worker.py WORKDIR OUT.npz [--steps N] [--process_id I --num_processes P --port PORT]
      [--override key=value ...]
"""

import argparse
import ast
import sys

import numpy as np


def tiny_config(steps: int):
    from resnet_identity.training.config import default_config

    c = default_config()
    c.model = "cifar_preact20"
    c.model_overrides.depth = 8
    c.model_overrides.bn_group_size = 2
    c.dataset = "digits"
    c.batch_size = 16
    c.eval_batch_size = 120
    c.num_train_steps = steps
    c.schedule.boundaries = (max(steps - 1, 1),) if steps > 1 else ()
    c.schedule.warmup_steps = 0
    c.log_every_steps = 1
    c.eval_every_steps = 10_000
    c.checkpoint_every_steps = 10_000
    return c


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("workdir")
    parser.add_argument("out")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--process_id", type=int, default=None)
    parser.add_argument("--num_processes", type=int, default=1)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--override", action="append", default=[])
    args = parser.parse_args()

    import jax

    if args.process_id is not None:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(
            coordinator_address=f"127.0.0.1:{args.port}", num_processes=args.num_processes, process_id=args.process_id
        )
    from resnet_identity.training import trainer

    config = tiny_config(args.steps)
    for item in args.override:
        key, _, value = item.partition("=")
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            pass
        target = config
        *parents, leaf = key.split(".")
        for p in parents:
            target = target[p]
        target[leaf] = value
    result = trainer.train_and_evaluate(config, args.workdir, return_state=True)
    state = result["state"]
    flat = {
        jax.tree_util.keystr(path): np.asarray(jax.device_get(leaf.addressable_data(0)))
        for path, leaf in jax.tree_util.tree_flatten_with_path(
            {"params": state.params, "batch_stats": state.batch_stats}
        )[0]
    }
    np.savez(args.out, **flat)
    print("done", result.get("step"), file=sys.stderr)


if __name__ == "__main__":
    main()
