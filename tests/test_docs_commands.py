"""Every command of README.md and docs/*.md runs as typed (issue 25, item 3).

`tests/docs_commands.py` reads the fenced ```bash blocks. Each command is one test, named after
its doc and line, and runs with bash in a fresh copy of the repository (its tracked and
untracked-but-not-ignored files), from the copy's root, with the relative paths as written.

A command starts from what the docs made before it:
- a path it reads (`--weights`, a read-only command's `--workdir`, `--config.init_from`, the
  `.pth` it converts) is copied from the state of the docs command that writes it (`--out`,
  train.py's `--workdir`), which runs first where no test has run it yet;
- in a doc of CHAINS, every command starts from the whole state the one before it left.
Each command runs once per session: its state is kept, behind a file lock, for the xdist
workers to share.

What this machine cannot do as typed is in STAND_INS: a stand-in for an input that needs the
internet, the user or hardware, a rewrite of an install, or flags appended to a program's
invocation where the typed run would take hours. A command that matches no entry runs exactly as
typed, so a command added to the docs is tested from then on; an entry that matches no command
fails `test_every_entry_is_used`, so the list cannot go stale.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import re
import shutil
import time
from pathlib import Path

import pytest

from tests.docs_commands import Command, Invocation, invocations, producer, read_commands, reads
from tests.docs_runner import Done, Shared, State, copy_repository, environment, locked, run_bash
from tests.docs_standins import inputs

STANDINS = Path(__file__).parent / "docs_standins"  # gcloud, sudo, apt-get, standin-venv, standin-pip


@dataclasses.dataclass(frozen=True)
class Entry:
    kind: str  # skip | rewrite | standin | override | detached
    pattern: str  # searched in the command (override: in each program invocation)
    reason: str
    value: object = None  # rewrite: the replacement; standin: its setup; override: flags; detached: (log, expected)


def skip(pattern, reason):
    return Entry("skip", pattern, reason)


def rewrite(pattern, replacement, reason):
    return Entry("rewrite", pattern, reason, replacement)


def standin(pattern, setup, reason):
    return Entry("standin", pattern, reason, setup)


def override(pattern, flags, reason):
    return Entry("override", pattern, reason, flags)


def detached(pattern, log, expected, reason):
    return Entry("detached", pattern, reason, (log, expected))


# A few steps instead of a recipe's epochs; double quotes only, so that the flags also fit
# inside an ssh command's single-quoted payload.
_FEW_STEPS = (
    "--config.num_epochs=-1 --config.num_train_steps=2 --config.schedule.boundaries_unit=steps "
    '"--config.schedule.boundaries=(1,)" --config.schedule.warmup_steps=0 --config.log_every_steps=1 '
    "--config.eval_every_steps=2 --config.checkpoint_every_steps=2 --config.eval_batch_size=64"
)


def _setup_cloud(state, command):
    return {"DOCS_CLOUD": str(state.cloud)}


def _setup_pretrained(state, command):
    for invocation in _programs(command, "resnet_identity.convert"):
        source, tag = invocation.flag("from"), invocation.flag("pretrained")
        if tag is not None:
            state.session.pretrained(source, invocation.flag("model"), tag)
    return {}


def _setup_photos(state, command):
    for seed, name in enumerate(sorted(set(re.findall(r"\b[\w-]+\.(?:jpg|png)\b", command.text)))):
        inputs.photo(state.repo / name, seed)
    return {}


def _setup_flowers(state, command):
    inputs.image_folder(state.repo / "flowers")
    return {}


def _setup_cifar_archive(state, command):
    from tests.cifar_archive import write_archive

    write_archive("cifar10", state.repo / "cifar-10-binary.tar.gz")
    return {}


def _setup_imagenet(state, command):
    return {"TFDS_DATA_DIR": str(state.session.tiny_imagenet())}


def _setup_cifar(state, command):
    return {"TFDS_DATA_DIR": str(state.session.tiny_cifar())}


STAND_INS = [
    skip(r"python -m pytest", "it is this suite; .ci/run runs it as typed"),
    skip(
        r"^python -m resnet_identity\.prepare cifar10$",
        "downloads CIFAR's official archive and checks it against TFDS's recorded checksum, which no stand-in "
        "passes; tests/test_prepare.py runs the same download path against a local server",
    ),
    rewrite(
        r"\b(python3(?:\.\d+)?) -m venv\b",
        r"standin-venv \1",
        "a new virtual environment needs the network and minutes: the suite's own stands in "
        "(docs_standins/standin-venv checks the Python version, and on a TPU VM its apt-get install)",
    ),
    rewrite(
        r"\bpip install\b",
        "standin-pip install",
        "installing needs the network and would repoint the suite's environment at a temporary copy; "
        "docs_standins/standin-pip checks that each extra named exists in pyproject.toml",
    ),
    standin(
        r"\bgcloud\b",
        _setup_cloud,
        "Cloud TPU VMs and Cloud Storage: docs_standins/gcloud runs ssh payloads on a local worker home "
        "in a one-process JAX cluster, and creates buckets on the Cloud Storage emulator; sudo and apt-get "
        "(the VM's root and package archive) are stand-ins that check and record their arguments",
    ),
    rewrite(
        r"\bgs://BUCKET\b",
        "gs://docs-bucket",
        "BUCKET is the doc's placeholder for the reader's bucket, and not a valid bucket name (upper case)",
    ),
    standin(
        r"--pretrained",
        _setup_pretrained,
        "torchvision's and timm's downloads: random weights saved in their caches (TORCH_HOME, HF_HOME), "
        "where their own loaders read them",
    ),
    standin(r"\.(?:jpg|png)\b", _setup_photos, "the user's photos: random 300x400 images"),
    standin(
        r"--config\.folder\.path=flowers\b|--workdir=runs/flowers\b",
        _setup_flowers,
        "the reader's folder of images, flowers/: 36 generated ones",
    ),
    standin(
        r"--archive=cifar-10-binary\.tar\.gz",
        _setup_cifar_archive,
        "CIFAR's official archive, fetched elsewhere: a tiny one in the real format (tests/cifar_archive.py)",
    ),
    standin(
        r"(?s)train\.py .*configs/cifar_",
        _setup_cifar,
        "CIFAR's download: tiny archives in the real format, prepared by TFDS's own builder from a "
        "server on 127.0.0.1 (tests/cifar_archive.py)",
    ),
    standin(
        r"(?s)resnet_identity\.evaluate .*imagenet_\w+\.py",
        _setup_imagenet,
        "ImageNet, a manual download of 150 GB: a tiny ILSVRC2012 in the official tars' layout, prepared by "
        "TFDS's own builder (tests/imagenet_archive.py)",
    ),
    override(
        r"(?s)resnet_identity\.evaluate .*imagenet_\w+\.py",
        "--config.eval_batch_size=3",
        "the recipe's eval batch, 250 images x 10 crops of 224, needs over 23 GB on a CPU: the 3 validation images",
    ),
    override(
        r"train\.py --config=configs/quickstart\.py ",
        _FEW_STEPS,
        "300 steps take over a minute on 2 cores, and the suite trains the quickstart elsewhere: 2 steps",
    ),
    override(
        r"(?s)train\.py .*cifar_preact1001\.py",
        "--config.model_overrides.depth=11 --config.batch_size=8 --config.model_overrides.bn_group_size=8 "
        + _FEW_STEPS,
        "ResNet-1001's 64k steps of 128 take days on a CPU: 11 layers of the same units, 2 steps of 8",
    ),
    override(
        r"(?s)train\.py .*imagenet_\w+\.py(?!:finetune)(?!.*dataset=folder)",
        '--config.dataset=synthetic --config.synthetic.image_size=32 "--config.eval_crops=()" '
        "--config.model_overrides.depth=18 "
        f"--config.batch_size=4 --config.model_overrides.bn_group_size=4 {_FEW_STEPS}",
        "ImageNet is a 150 GB manual download (and TFDS's records on gs:// cannot be read from the emulator): "
        "synthetic 32x32 images (the final evaluation of all 256 at 64x64 took 40 s), 2 steps of 4",
    ),
    override(
        r"(?s)train\.py .*(?::finetune|dataset=folder)",
        f"--config.folder.image_size=32 {_FEW_STEPS}",
        "ResNet-50 steps at 224x224 take seconds each on a CPU: 32x32 crops (ResNet-50's last stage at 1x1), 2 steps",
    ),
    override(
        r"reproduce v1-table6",
        "--preset=quick --rows=resnet20 --seeds=1 --steps=2",
        "50 full CIFAR runs: one row, one seed, 2 steps of the quick preset",
    ),
    override(
        r"reproduce v2-table3",
        "--preset=quick --rows=cifar10-preact164 --steps=2",
        "8 runs of 64k steps: one row, 2 steps of the quick preset",
    ),
    override(r"(?s)reproduce v\d-(?:fig6|table1) .*--steps=", "--steps=2", "hundreds of steps: 2"),
    override(
        r"(?s)reproduce v1-fig6 .*--config\.model_overrides\.depth=20",
        "--config.model_overrides.depth=8",
        "20-layer plain nets and ResNets: 8 layers, one unit per stage as the quick preset has",
    ),
    override(r"benchmarks\.step_time", "--depth=11 --steps=1 --warmup=0", "a 1001-layer compile: 11 layers, 1 step"),
    override(
        r"benchmarks\.compare",
        "--quick --ready_models=cifar_preact20 --rounds=1 --steps=1",
        "minutes of timings: the smallest models, one round of one step",
    ),
    override(
        r"benchmarks\.compare --sections=torch",
        "--torch_remat=none",
        "each remat scheme timed against torch is another ResNet-164 to build and compile: the first, none",
    ),
    detached(
        r"nohup scripts/run_until_done\.sh",
        "train.log",
        r"run_until_done: run \d+ exited with status 0",
        "the launch returns at once: the test waits for the detached run and reads its log",
    ),
]

# Docs whose commands each start from the state the one before left (a VM, a bucket, a run).
CHAINS = {"docs/tpu.md": "each step works on the VM, the bucket and the run the steps before it made"}

COMMANDS = read_commands()
_TIMEOUT_S = 600


def _entries(command: Command, kind: str) -> list[Entry]:
    if kind == "override":
        return [
            e
            for e in STAND_INS
            if e.kind == kind and any(re.search(e.pattern, _text(command, i)) for i in invocations(command.text))
        ]
    text = command.text if kind in ("skip", "rewrite") else script(command)  # stand-ins serve the overrides too
    return [e for e in STAND_INS if e.kind == kind and re.search(e.pattern, text)]


def _text(command: Command, invocation: Invocation) -> str:
    return command.text[invocation.start : invocation.end]


def _programs(command: Command, program: str) -> list[Invocation]:
    return [i for i in invocations(command.text) if i.program == program]


def script(command: Command) -> str:
    """The command with the table's rewrites and overrides applied: what bash runs."""
    text = command.text
    for invocation in reversed(invocations(text)):  # from the end, so earlier offsets stay valid
        flags = [
            e.value for e in STAND_INS if e.kind == "override" and re.search(e.pattern, _text(command, invocation))
        ]
        if flags:
            text = f"{text[: invocation.end]} {' '.join(flags)}{text[invocation.end :]}"
    for entry in _entries(command, "rewrite"):
        text = re.sub(entry.pattern, entry.value, text)
    return f"{command.preamble}\n{text}" if command.preamble else text


RUN = [c for c in COMMANDS if not _entries(c, "skip")]


def _key(command: Command) -> str:
    """Names a command's state by what makes it: its script and the states it starts from."""
    before = predecessor(command)
    sources = [producer(path, command, RUN) for path in sorted(reads(command))]
    typed = re.sub(r"[ \t]+#[^'\"\n]*$", "", script(command), flags=re.MULTILINE)  # a trailing comment runs nothing
    parts = [typed, *(_key(c) for c in ([before] if before else []) + [s for s in sources if s])]
    return hashlib.sha1("\0".join(parts).encode()).hexdigest()[:16]


def predecessor(command: Command) -> Command | None:
    if command.doc not in CHAINS:
        return None
    earlier = [c for c in COMMANDS if c.doc == command.doc and c.line < command.line]
    return earlier[-1] if earlier else None


class Session(Shared):
    """The states the session's commands leave, beside the shared stand-ins."""

    def state_after(self, command: Command, chain: tuple[str, ...] = ()) -> tuple[Path, str]:
        """The state `command` leaves, and its output; made by running it (after what it needs)
        unless a test or another command's set-up already did. The same command with the same
        inputs in two docs runs once."""
        if command.id in chain:
            pytest.fail(f"the docs commands need each other in a circle: {' -> '.join((*chain, command.id))}")
        key = _key(command)
        path, log = self.root / f"after-{key}", self.root / f"after-{key}.log"
        with locked(self.root / f"after-{key}.lock"):
            if (path / ".failed").exists():
                pytest.fail(f"{command.id} failed:\n{log.read_text()[-6000:]}")
            if not (path / ".done").exists():
                shutil.rmtree(path, ignore_errors=True)
                state = State(path, self)
                self._prepare(state, command, (*chain, command.id))
                started = time.monotonic()
                done = _run(command, state)
                seconds = time.monotonic() - started
                ran = f"{command.id}: $ {script(command)}\n{done.output}"
                log.write_text(f"{ran}\n(exit status {done.returncode}, {seconds:.1f} s)")
                if done.returncode != 0:
                    (path / ".failed").touch()
                    pytest.fail(f"exit status {done.returncode}: {ran[-6000:]}")
                (path / ".done").touch()
        return path, log.read_text()

    def _prepare(self, state: State, command: Command, chain: tuple[str, ...]) -> None:
        before = predecessor(command)
        if before is not None:
            shutil.copytree(self.state_after(before, chain)[0], state.root, symlinks=True)
            (state.root / ".done").unlink()
            return
        for directory in (state.home, state.cloud, state.gcs):
            directory.mkdir(parents=True)
        copy_repository(state.repo)
        for path in sorted(reads(command)):
            source = producer(path, command, RUN)
            if source is not None:
                made = self.state_after(source, chain)[0] / "repo" / path
                (state.repo / path).parent.mkdir(parents=True, exist_ok=True)
                (shutil.copytree if made.is_dir() else shutil.copy)(made, state.repo / path)


def _environment(state: State, command: Command) -> dict[str, str]:
    env = environment(state, STANDINS)
    for entry in _entries(command, "standin"):
        env.update(entry.value(state, command))
    return env


def _run(command: Command, state: State) -> Done:
    env = _environment(state, command)
    with contextlib.ExitStack() as stack:
        if "DOCS_CLOUD" in env:
            from tests.gcs_emulator import Emulator

            emulator = Emulator(filesystem_root=str(state.gcs))
            stack.callback(emulator.stop)
            env["STORAGE_EMULATOR_HOST"] = emulator.url
        done = run_bash(script(command), state.repo, env, state.root / "output.txt", _TIMEOUT_S)
    for entry in _entries(command, "detached"):
        log_name, expected = entry.value
        logs = [p.read_text() for p in state.root.rglob(log_name)]
        if not any(re.search(expected, log) for log in logs):
            done = Done(
                done.returncode or 1, f"{done.output}\nno {log_name} holds {expected!r}:\n{''.join(logs)[-4000:]}"
            )
    return done


@pytest.fixture(scope="session")
def session(tmp_path_factory, worker_id):
    # The folder above a worker's basetemp is shared by the xdist workers of one run.
    base = tmp_path_factory.getbasetemp()
    return Session((base.parent if worker_id != "master" else base) / "docs_commands")


@pytest.mark.parametrize("command", COMMANDS, ids=[c.id for c in COMMANDS])
def test_command_runs_as_typed(command, session):
    skipped = _entries(command, "skip")
    if skipped:
        pytest.skip(skipped[0].reason)
    _, output = session.state_after(command)
    print(output)


def test_every_entry_is_used():
    """An entry that matches no command is stale: the docs changed under it."""
    used = {
        id(e)
        for c in COMMANDS
        for kind in ("skip", "rewrite", "standin", "override", "detached")
        for e in _entries(c, kind)
    }
    stale = [f"{e.kind} {e.pattern!r}" for e in STAND_INS if id(e) not in used]
    assert not stale, f"entries that match no docs command: {stale}"
    assert set(CHAINS) <= {c.doc for c in COMMANDS}


# What some commands leave is checked beyond their exit status: the fine-tuned run's read-only
# commands (they were run again on a run of their own in tests/test_finetune.py).


def _typed(fragment: str) -> Command:
    """The first docs command whose text holds `fragment`; fails if the docs have none."""
    found = [c for c in RUN if fragment in c.text]
    assert found, f"no docs command holds {fragment!r}"
    return found[0]


def test_evaluate_workdir_agrees_with_the_runs_own_final_evaluation(session):
    """`evaluate --workdir=runs/flowers --output_dir=flowers_eval` reads the run on its own
    config's dataset and agrees with the run's final evaluation; --output_dir is made."""
    import json

    state, _ = session.state_after(_typed("evaluate --workdir=runs/flowers --output_dir=flowers_eval"))
    final = json.loads((state / "repo" / "runs" / "flowers" / "final_metrics.json").read_text())
    (saved,) = [json.loads(p.read_text()) for p in (state / "repo" / "flowers_eval").glob("eval_step*.json")]
    assert saved["top1_error"] == pytest.approx(final["test_error"], abs=1e-9)
    assert saved["loss"] == pytest.approx(final["test_loss"], rel=1e-5)


def test_predict_workdir_names_the_runs_own_classes(session):
    """`predict --workdir=runs/flowers --json cat.jpg`: the top 5 are the folder's three classes,
    by name, with probabilities that sum to 1."""
    import json

    state, _ = session.state_after(_typed("predict --workdir=runs/flowers --json"))
    lines = [line for line in (state / "output.txt").read_text().splitlines() if line.startswith('{"image"')]
    (line,) = lines
    top = json.loads(line)["top5"]
    assert sorted(name for _, name, _ in top) == ["cat", "dog", "eel"]
    assert sum(probability for _, _, probability in top) == pytest.approx(1.0, abs=1e-5)


def test_convert_to_torchvision_gives_the_fine_tuned_runs_logits(session, monkeypatch):
    """`convert --to=torchvision --workdir=runs/flowers --out=flowers.pth`, the README's last step:
    the file loads strictly into torchvision's resnet50 of 3 classes and gives the run's logits."""
    pytest.importorskip("torch")
    import numpy as np
    import torch

    from resnet_identity.interop._torch import import_torchvision
    from resnet_identity.training import weights as weights_lib

    state, _ = session.state_after(_typed("convert --to=torchvision --workdir=runs/flowers --out=flowers.pth"))
    network = import_torchvision().models.resnet50(num_classes=3)
    network.load_state_dict(torch.load(state / "repo" / "flowers.pth", weights_only=True), strict=True)
    monkeypatch.chdir(state / "repo")  # the run's folder.path is relative, as the docs type it
    run = weights_lib.load_run_weights("runs/flowers")
    model, variables = run.create_model()
    images = np.random.default_rng(0).random((2, 32, 32, 3), np.float32)
    with torch.no_grad():
        theirs = network.eval()(torch.from_numpy(images.transpose(0, 3, 1, 2))).numpy()
    np.testing.assert_allclose(theirs, model.apply(variables, images, train=False), rtol=1e-4, atol=1e-5)
