"""Checkpointing ("never lose a run"): round trips, retention, atomicity, corruption
fallback and unwritable workdirs, against the pinned orbax-checkpoint.

The state is a real `TrainState` from `create_train_state` (via `jax.eval_shape`, then filled
with random values of each leaf's dtype): compiling the model's init or `train_step` takes
10-25 s on a CPU runner, while random leaves exercise bitwise equality just as well.
"""

import functools
import logging
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from resnet_identity.models import create_model
from resnet_identity.runs import checkpointing
from resnet_identity.runs.checkpointing import Checkpointer, CheckpointWriteError
from resnet_identity.training.optim import sgd
from resnet_identity.training.train_state import TrainState, create_train_state


@pytest.fixture(scope="module")
def abstract_state():
    model = create_model("cifar_preact164", num_classes=10, depth=11)
    init = functools.partial(create_train_state, model, sgd(learning_rate=0.1), 32)
    return jax.eval_shape(init, jax.random.key(0))


def random_state(abstract, seed):
    rng = np.random.default_rng(seed)

    def fill(leaf):
        if jnp.issubdtype(leaf.dtype, jnp.floating):
            return jnp.asarray(rng.standard_normal(leaf.shape), leaf.dtype)
        return jnp.asarray(rng.integers(-1000, 1000, leaf.shape), leaf.dtype)

    return jax.tree.map(fill, abstract)


def assert_bitwise_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == y.dtype and x.shape == y.shape
        assert x.tobytes() == y.tobytes()


def biggest_array_file(step_dir):
    """The largest TensorStore data file (OCDBT keeps array bytes under `.../d/`)."""
    files = [
        os.path.join(root, f) for root, _, names in os.walk(step_dir) for f in names if os.path.basename(root) == "d"
    ]
    return max(files, key=os.path.getsize)


def save_steps(directory, abstract, steps, **kwargs):
    states = {s: random_state(abstract, s) for s in steps}
    with Checkpointer(directory, every_steps=1, keep=10, **kwargs) as ckpt:
        for s in steps:
            assert ckpt.maybe_save(s, states[s])
    return states


def test_round_trip_is_bitwise_for_concrete_and_abstract_targets(tmp_path, abstract_state):
    state = random_state(abstract_state, 0).replace(
        step=jnp.asarray(7, jnp.int32), nonfinite_step=jnp.asarray(-1, jnp.int32)
    )
    with Checkpointer(tmp_path, every_steps=5, keep=2) as ckpt:
        assert ckpt.maybe_save(7, state, force=True, metadata={"examples_seen": 7 * 128})
    with Checkpointer(tmp_path, every_steps=5, keep=2) as ckpt:
        assert ckpt.latest_step() == 7
        for target in (random_state(abstract_state, 1), abstract_state):
            restored, step = ckpt.restore(target)
            assert step == 7 and isinstance(restored, TrainState)
            assert_bitwise_equal(restored, state)
        assert ckpt.metadata(7) == {"step": 7, "examples_seen": 896}


def test_saves_on_the_interval_keeps_the_last_k_and_never_rewrites_a_step(tmp_path, abstract_state):
    state = random_state(abstract_state, 0)
    with Checkpointer(tmp_path, every_steps=2, keep=2) as ckpt:
        asked = [s for s in range(1, 8) if ckpt.should_save(s)]
        saved = [s for s in range(1, 8) if ckpt.maybe_save(s, state)]
        assert asked == saved == [2, 4, 6]
        assert not ckpt.should_save(4)  # already saved
        assert ckpt.maybe_save(7, state, force=True)
        assert not ckpt.maybe_save(7, state, force=True)  # Scheduled and preemption save at one step.
        ckpt.wait()
        assert ckpt.all_steps() == [6, 7]
    assert sorted(os.listdir(tmp_path)) == ["6", "7"]


def test_save_interrupted_before_its_rename_is_ignored(tmp_path, abstract_state):
    states = save_steps(tmp_path, abstract_state, [1, 2])
    # Orbax writes step N into `N.orbax-checkpoint-tmp` and renames it when complete. Fake a
    # save of step 3 killed just before the rename (every file written) and one of step 4
    # killed mid-write (array data missing).
    shutil.copytree(tmp_path / "2", tmp_path / "3.orbax-checkpoint-tmp")
    shutil.copytree(tmp_path / "2", tmp_path / "4.orbax-checkpoint-tmp")
    os.remove(biggest_array_file(tmp_path / "4.orbax-checkpoint-tmp"))
    with Checkpointer(tmp_path, every_steps=1, keep=10) as ckpt:
        assert ckpt.latest_step() == 2
        restored, step = ckpt.restore(abstract_state)
        assert step == 2
        assert_bitwise_equal(restored, states[2])
        assert ckpt.maybe_save(3, states[1])  # Leftovers do not block re-saving their step.
        ckpt.wait()
        assert ckpt.all_steps() == [1, 2, 3]
    assert not any(name.endswith(".orbax-checkpoint-tmp") for name in os.listdir(tmp_path))


# A failed Orbax restore abandons TensorStore reads whose callbacks then find the asyncio
# loop closed ("Event loop is closed"): noise from orbax, not a failure of the fallback.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("damage", ["truncate", "delete"])
def test_corrupt_latest_falls_back_to_previous_and_is_kept(tmp_path, abstract_state, caplog, damage):
    states = save_steps(tmp_path, abstract_state, [1, 2, 3])
    victim = biggest_array_file(tmp_path / "3")
    if damage == "truncate":
        with open(victim, "r+b") as f:
            f.truncate(os.path.getsize(victim) // 2)
    else:
        os.remove(victim)
    with Checkpointer(tmp_path, every_steps=1, keep=2) as ckpt:
        with caplog.at_level(logging.WARNING, logger=checkpointing.__name__):
            restored, step = ckpt.restore(abstract_state)
        assert step == 2
        assert_bitwise_equal(restored, states[2])
        messages = " ".join(r.getMessage() for r in caplog.records)
        assert "step 3" in messages and "unreadable" in messages and "not deleted" in messages
        kept = tmp_path / checkpointing.CORRUPT_SUBDIR / "3"
        assert kept.is_dir() and (kept / "state" / "_METADATA").exists()
        assert ckpt.latest_step() == 2
        # Saving and garbage collection carry on past the quarantined step.
        for s in (3, 4, 5):
            assert ckpt.maybe_save(s, states[1])
        ckpt.wait()
        assert ckpt.all_steps() == [4, 5]
    assert kept.is_dir()


def test_unrestorable_everywhere_raises_and_moves_nothing(tmp_path, abstract_state):
    save_steps(tmp_path, abstract_state, [1, 2])
    wrong = abstract_state.replace(params={"other": jax.ShapeDtypeStruct((3,), jnp.float32)})
    with Checkpointer(tmp_path, every_steps=1, keep=10) as ckpt:
        with pytest.raises(RuntimeError, match="config probably differs"):
            ckpt.restore(wrong)
        assert ckpt.all_steps() == [1, 2]
    assert not (tmp_path / checkpointing.CORRUPT_SUBDIR).exists()


def test_restore_without_checkpoints_returns_none(tmp_path, abstract_state):
    with Checkpointer(tmp_path / "new", every_steps=1, keep=1) as ckpt:
        assert ckpt.latest_step() is None
        assert ckpt.restore(abstract_state) is None


@pytest.mark.parametrize("below", ["", "ckpt"])
def test_workdir_on_or_under_a_file_gives_a_clear_error(tmp_path, below):
    """Fails for root too, unlike a chmod'd directory."""
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("")
    with pytest.raises(CheckpointWriteError, match="not a directory. Choose another workdir"):
        Checkpointer(blocker / below, every_steps=1, keep=1)


@pytest.mark.skipif(
    hasattr(os, "geteuid") and os.geteuid() == 0,
    reason="root ignores directory permissions; the path-under-a-file test covers this",
)
def test_read_only_workdir_gives_a_clear_error(tmp_path, abstract_state):
    tmp_path.chmod(0o555)
    try:
        with pytest.raises(CheckpointWriteError, match="not writable by this user"):
            ckpt = Checkpointer(tmp_path / "ckpt", every_steps=1, keep=1, async_save=False)
            ckpt.maybe_save(1, random_state(abstract_state, 0))
    finally:
        tmp_path.chmod(0o755)


def test_full_disk_gives_a_clear_error(tmp_path, abstract_state, monkeypatch):
    # TensorStore's own wording for ENOSPC (seen on a full tmpfs): a ValueError, not OSError.
    def full(*args, **kwargs):
        raise ValueError(
            'RESOURCE_EXHAUSTED: Error writing "params/0": Failed to write 502127 bytes '
            "to file 4: No space left on device [os_error_code='28']"
        )

    with Checkpointer(tmp_path, every_steps=1, keep=1) as ckpt:
        monkeypatch.setattr(ocp.CheckpointManager, "save", full)
        with pytest.raises(CheckpointWriteError, match="disk is full.*last complete checkpoint is intact"):
            ckpt.maybe_save(1, random_state(abstract_state, 0))


def test_finalized_steps_lists_what_latest_step_sees_without_a_manager(tmp_path, abstract_state):
    from resnet_identity.runs.checkpointing import finalized_steps

    assert finalized_steps(str(tmp_path / "absent")) == []
    save_steps(tmp_path, abstract_state, [3, 5])
    (tmp_path / "7.orbax-checkpoint-tmp").mkdir()  # a save killed mid-write
    assert finalized_steps(str(tmp_path)) == [3, 5]


def _layout_state(remat, depth=47, *, seed=None):
    """A pre-act bottleneck net with 4 repeated units a stage: "nested" stacks them as blocks
    [2, 2] and "block" as [4, 1], the same tree paths with other shapes. Abstract, with a
    device sharding on every leaf, or filled with random values (`seed`)."""
    model = create_model("cifar_preact164", num_classes=10, depth=depth, remat=remat)
    abstract = jax.eval_shape(
        functools.partial(create_train_state, model, sgd(learning_rate=0.1), 32), jax.random.key(0)
    )
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding), abstract)
    return abstract if seed is None else random_state(abstract, seed)


def test_a_step_saved_in_another_layout_is_converted_and_nothing_is_moved(tmp_path, caplog):
    from resnet_identity.training.train_state import convert_layout

    older, newer = _layout_state("block", seed=1), _layout_state("nested", seed=2)
    assert jax.tree.structure(older) != jax.tree.structure(newer) or any(
        a.shape != b.shape for a, b in zip(jax.tree.leaves(older), jax.tree.leaves(newer))
    )
    with Checkpointer(tmp_path, every_steps=1, keep=3, async_save=False) as checkpointer:
        checkpointer.maybe_save(1, older, force=True)
        checkpointer.maybe_save(2, newer, force=True)
        state, step = checkpointer.restore(_layout_state("block"), relayout=convert_layout)
    assert step == 2 and "converted it" in caplog.text
    assert not (tmp_path / checkpointing.CORRUPT_SUBDIR).exists()
    assert [a.shape for a in jax.tree.leaves(state)] == [a.shape for a in jax.tree.leaves(older)]
    for a, b in zip(jax.tree.leaves(convert_layout(state, newer)), jax.tree.leaves(newer)):  # momentum included
        np.testing.assert_array_equal(a, b)


def test_a_step_of_another_model_is_refused_not_moved(tmp_path):
    from resnet_identity.training.train_state import convert_layout

    with Checkpointer(tmp_path, every_steps=1, keep=3, async_save=False) as checkpointer:
        checkpointer.maybe_save(1, _layout_state("nested", seed=1), force=True)
        checkpointer.maybe_save(2, _layout_state("nested", depth=56, seed=2), force=True)
        with pytest.raises(checkpointing.CheckpointLayoutError, match=r"Checkpoint 2 .* another model's state"):
            checkpointer.restore(_layout_state("block"), relayout=convert_layout)
        with pytest.raises(ValueError, match="one sharding set on every leaf"):
            checkpointer.restore(jax.eval_shape(lambda: _layout_state("block", seed=0)), relayout=convert_layout)
    assert checkpointing.finalized_steps(str(tmp_path)) == [1, 2]
    assert not (tmp_path / checkpointing.CORRUPT_SUBDIR).exists()
