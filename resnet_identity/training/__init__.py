"""Training: the config and its presets, the optimizer, the sharded train state, the loop.

`config` checks a run's settings, `recipes` holds the papers' presets, `optim` the schedules,
`train_state` and `parallel` the state and its sharding, `trainer` the set-up and the loop,
with `evaluation`, `diagnostics` and `train_log` beside it.
"""
