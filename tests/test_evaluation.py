"""Evaluation (`training/evaluation.py`): what the console says while a long evaluation runs."""


def test_a_long_evaluation_says_how_far_it_has_got(monkeypatch):
    import jax.numpy as jnp
    import numpy as np

    from resnet_identity.training import evaluation, parallel

    monkeypatch.setattr(evaluation, "EVAL_PROGRESS_SECONDS", 0.0)  # report after every finished batch

    class TenExamples:
        num_test = 10

        def eval_batches(self, *, global_batch_size, process_index, process_count, crop):
            for start in range(0, 12, global_batch_size):  # 3 batches of 4, the last padded
                yield {"mask": np.arange(start, start + global_batch_size) < self.num_test}

    def eval_fn(state, batch):
        real = jnp.sum(batch["mask"].astype(jnp.float32))
        return {"count": real, "error_sum": real / 2, "top5_error_sum": 0 * real, "loss_sum": real}

    lines = []
    metrics = evaluation.evaluate_split(
        None,
        TenExamples(),
        eval_fn,
        batch_size=4,
        sharding=parallel.batch_sharded(parallel.create_mesh()),
        progress=lines.append,
    )
    assert lines == ["evaluated 4 of 10 examples", "evaluated 8 of 10 examples"]
    assert metrics["examples"] == 10 and metrics["error"] == 0.5
