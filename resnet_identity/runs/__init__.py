"""Runs that survive: paths local or gs://, checkpoints and their digests, the workdir lease,
signals and preemption, the metrics record, and exported weights.

Nothing here knows a model or a dataset; training and the commands build on it.
"""
