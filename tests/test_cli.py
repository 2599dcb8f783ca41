"""The command line as a user meets it (`train.py`, through `resnet_identity.cli`): `--help`,
`--list_config`, and a mistake in the flags or the config reported as one line, exit 1, no
traceback. Each case runs the real `train.py` in a subprocess; none of them trains."""

import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


def train(*args: str, cwd: pathlib.Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )


def assert_user_error(done: subprocess.CompletedProcess, message: str) -> None:
    """Exit 1, stderr is the `error: ...` message alone, and it says `message`."""
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    assert done.stderr.startswith("error: "), done.stderr
    assert message in done.stderr, done.stderr
    assert len(done.stderr.splitlines()) <= 4, done.stderr


def test_help_exits_0_and_names_the_configs_presets_and_fields():
    done = train("--help")
    assert done.returncode == 0, done.stderr
    for expected in (
        "--workdir",
        "--config",
        "--list_config",
        "configs/quickstart.py",
        "presets: smoke",
        "batch_size",
        "model_overrides.depth",
        "--verbosity",
    ):
        assert expected in done.stdout


def test_list_config_prints_each_field_with_its_override():
    done = train("--config=configs/quickstart.py:smoke", "--config.seed=7", "--list_config")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "seed = 7" in lines
    assert "dataset = 'synthetic'" in lines  # the preset's value
    assert any(line.startswith("model_overrides.depth = ") for line in lines)


def test_unknown_field_says_did_you_mean():
    done = train("--config=configs/quickstart.py", "--workdir=unused", "--config.batch_sise=64")
    assert_user_error(done, "error: no config field 'batch_sise'. Did you mean 'batch_size'?")


def test_a_field_of_an_older_version_names_its_new_place():
    done = train("--config=configs/quickstart.py", "--workdir=unused", "--config.learning_rate=0.05")
    assert_user_error(done, "error: no config field 'learning_rate'. It is now 'schedule.learning_rate'.")


def test_unknown_nested_field_names_its_full_path():
    done = train("--config=configs/quickstart.py", "--workdir=unused", "--config.model_overrides.nonexistent=3")
    assert_user_error(done, "no config field 'model_overrides.nonexistent'")


def test_missing_config_file_lists_the_configs():
    done = train("--config=configs/quickstar.py", "--workdir=unused")
    assert_user_error(done, "'configs/quickstar.py' does not exist. Did you mean 'configs/quickstart.py'?")


def test_syntax_error_in_config_names_file_and_line(tmp_path):
    config = tmp_path / "broken.py"
    config.write_text("def get_config():\n    return dict(batch_size=64\n")
    done = train(f"--config={config}", "--workdir=unused")
    assert_user_error(done, f"syntax error in config file {config}, line 2")


def test_unknown_preset_lists_the_presets():
    done = train("--config=configs/cifar_preact1001.py:smok", "--workdir=unused")
    assert_user_error(done, "Unknown preset 'smok'")
    assert "smoke" in done.stderr


def test_a_preset_on_a_config_without_presets_says_so_and_names_the_presets(tmp_path):
    config = tmp_path / "mine.py"
    config.write_text(
        "from resnet_identity.training.config import default_config\n\ndef get_config():\n    return default_config()\n"
    )
    done = train(f"--config={config}:smoke", "--workdir=unused")
    assert_user_error(done, f"config file '{config}' has no presets")
    assert "released_code" in done.stderr and "recipes.apply_preset" in done.stderr


@pytest.mark.parametrize(
    "command,statuses",
    [
        (("train.py", "--help"), (141,)),
        (("train.py", "--config=configs/quickstart.py", "--list_config"), (141,)),
        # every entry point goes through cli.run; absl's usage text ignores EPIPE itself (0)
        (("-m", "resnet_identity.evaluate", "--help"), (0, 141)),
        (("-m", "resnet_identity.models"), (141,)),  # its own argparse, wrapped in cli.closed_pipe_is_quiet
    ],
)
def test_a_reader_that_closed_the_pipe_ends_the_command_quietly(command, statuses):
    """`python train.py --help | head`: the reader has gone before the first write (its end of
    a real pipe is closed). No BrokenPipeError traceback; the status a shell gives a writer
    that SIGPIPE ended, 141, as `cat` or `seq` report under `set -o pipefail`."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = subprocess.run(
            [sys.executable, *command], cwd=ROOT, stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=300
        )
    finally:
        os.close(write_end)
    assert done.returncode in statuses, done.stderr
    assert done.stderr == "", done.stderr


def test_help_piped_into_head_in_a_shell_is_quiet():
    done = subprocess.run(
        ["bash", "-c", f"{sys.executable} train.py --help | head -1; echo status=${{PIPESTATUS[0]}}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.stdout.startswith("Train a ResNet") and done.stderr == "", done
    assert done.stdout.strip().splitlines()[-1] in ("status=0", "status=141")  # 0: all fitted in the pipe


@pytest.mark.parametrize(
    "args,message",
    [
        (("--config=configs/quickstart.py",), "--workdir is required"),
        (("--config=configs/quickstart.py", "--workdir="), "--workdir is required"),
        (("configs/quickstart.py",), "Did you mean --config=configs/quickstart.py?"),
        (
            ("--config=configs/quickstart.py", "--workdir=unused", "--config.batch_size=sixty"),
            "--config.batch_size=sixty",
        ),
        (("--config=configs/quickstart.py", "--workdir=unused", "--wokdir=x"), "Unknown command line flag 'wokdir'"),
    ],
)
def test_flag_mistakes_get_one_line(args, message):
    assert_user_error(train(*args), message)


def test_invalid_value_is_reported_before_anything_is_written(tmp_path):
    done = train("--config=configs/quickstart.py", f"--workdir={tmp_path / 'run'}", "--config.num_train_steps=-5")
    assert_user_error(done, "num_train_steps")
    assert not (tmp_path / "run").exists()


def test_missing_extra_names_its_install_command(tmp_path):
    """A TFDS dataset without TensorFlow Datasets installed (shadowed here by a module that
    fails to import, as on a machine without the extra)."""
    (tmp_path / "tensorflow_datasets.py").write_text("raise ImportError('No module named tensorflow_datasets')\n")
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "train.py"),
            "--config=configs/quickstart.py",
            f"--workdir={tmp_path / 'run'}",
            "--config.dataset=cifar10",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"},
    )
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    # TensorFlow itself was importable: its C++ start-up lines may come first.
    assert done.stderr.splitlines()[-1].startswith("error: "), done.stderr
    assert "pip install -e '.[tfds]'" in done.stderr
