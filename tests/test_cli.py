"""Command-line apps: one-line errors with documented exit codes, quiet start-up."""

import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
import warm

from meta_drn_tf import cli, errors
from meta_drn_tf.data.synthetic import synthetic_bank, write_fss_layout

TINY = ["--algo=fomaml", "--image_size=16", "--width=0.0625", "--queries=1", "--meta_batch_size=2",
        "--tasks_per_epoch=2", "--epochs=1", "--val_episodes=1", "--inner_lr=0.01", "--test_at_end=false",
        "--export_at_end=false"]
# Without TF_CPP_MIN_LOG_LEVEL: what a user's shell has (TensorFlow then starts cold, in a new process).
USER_ENV = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
CHATTER = ("I0000", "E0000", "W0000", "absl::InitializeLog", "cuda", "oneDNN", "cpu_feature_guard")


def _run(args, env=None, timeout=300):
    return warm.run([sys.executable, *args], env=env, capture_output=True, text=True, timeout=timeout)


def _error_line(out):
    """The one line a user error prints: stderr is exactly 'error: ...' (plus the files it lists)."""
    lines = out.stderr.strip().splitlines()
    assert lines and lines[0].startswith("error: "), out.stderr[-3000:]
    assert "Traceback" not in out.stderr
    return lines


@pytest.fixture(scope="module")
def damaged_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("damaged")
    write_fss_layout(synthetic_bank(num_classes=12, images_per_class=4, image_size=16, seed=5), str(root))
    classes = sorted(os.listdir(root))
    open(root / classes[0] / "1.jpg", "wb").write(b"not a jpeg")
    os.remove(root / classes[1] / "2.png")
    cv2.imwrite(str(root / classes[2] / "3.png"), np.zeros((5, 5), np.uint8))
    return root


@pytest.mark.slow
def test_train_lists_every_bad_file_then_skip_bad_files_trains_on_the_rest(damaged_dir, tmp_path):
    # --test_at_end: the test split is read too, so its files are checked before training.
    args = ["-m", "meta_drn_tf.train", f"--data_dir={damaged_dir}", f"--model_dir={tmp_path / 'run'}", *TINY,
            "--test_at_end", "--baseline_at_end=false"]
    out = _run(args)
    assert out.returncode == cli.EXIT_DATA
    lines = _error_line(out)
    assert "3 image/mask pair(s) cannot be used" in lines[0] and "--skip_bad_files" in lines[0]
    assert any("1.jpg: cannot be decoded" in x for x in lines)
    assert any("2.png: mask is missing" in x for x in lines)
    assert any("3.png: mask is 5x5" in x for x in lines)

    out = _run(args + ["--skip_bad_files"])
    assert out.returncode == 0, out.stderr[-3000:]
    assert "3 image/mask pair(s) cannot be used (skipped, --skip_bad_files)" in out.stderr


@pytest.mark.parametrize("error,code", [
    (errors.NonFiniteLoss("non-finite loss at epoch 1, step 1. Last good checkpoint: ckpt-3"), cli.EXIT_NONFINITE),
    (errors.WorkerLost("lost contact with another worker"), cli.EXIT_WORKER_LOST),
    (errors.DataError("a/1.png: mask is missing"), cli.EXIT_DATA),
    (errors.ConfigError("--model_dir x: no training run there"), cli.EXIT_USAGE),
    (FileNotFoundError(2, "No such file or directory", "x.txt"), cli.EXIT_USAGE),
    (KeyboardInterrupt(), cli.EXIT_INTERRUPTED),
    (errors.Stopped("SIGTERM: stopped at epoch 2, step 14 of 25, and saved ckpt-39", preempted=True),
     cli.EXIT_PREEMPTED),
    (errors.Stopped("SIGINT: stopped at epoch 2, step 14 of 25, and saved ckpt-39", preempted=False),
     cli.EXIT_INTERRUPTED),
])
def test_user_errors_become_one_line_and_their_exit_code(error, code, capsys):
    def main(argv):
        raise error

    with pytest.raises(SystemExit) as exit_:
        cli._guarded(main, ["app"])
    assert exit_.value.code == code
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert str(error) in err


def test_whatever_a_command_ends_with_after_sigterm_is_the_preempted_exit(monkeypatch, capsys):
    """SIGTERM can break into TensorFlow's own context managers, which then raise errors of their own."""
    def main(argv):
        raise RuntimeError("Exiting device scope without proper scope nesting")

    monkeypatch.setattr(cli, "_SIGTERM_RECEIVED", [15])
    with pytest.raises(SystemExit) as exit_:
        cli._guarded(main, ["app"])
    assert exit_.value.code == cli.EXIT_PREEMPTED
    assert capsys.readouterr().err.startswith("error: stopped by SIGTERM; nothing half-written was left")


def test_a_bug_keeps_its_traceback():
    def main(argv):
        raise ZeroDivisionError("a bug")

    with pytest.raises(ZeroDivisionError):
        cli._guarded(main, ["app"])


@pytest.mark.slow
def test_tensorflow_start_up_chatter_only_with_verbosity():
    raw = _run(["-c", "import tensorflow as tf; tf.config.list_physical_devices()"], USER_ENV)
    quiet = _run(["-m", "meta_drn_tf.summary", "--image_size=16", "--width=0.0625"], USER_ENV)
    assert quiet.returncode == 0 and "receptive field" in quiet.stdout
    assert not any(c in quiet.stderr for c in CHATTER), quiet.stderr
    if not any(c in raw.stderr for c in CHATTER):
        pytest.skip("TensorFlow prints nothing at start-up on this machine")
    loud = _run(["-m", "meta_drn_tf.summary", "--image_size=16", "--width=0.0625", "--verbosity=0"], USER_ENV)
    assert loud.returncode == 0 and any(c in loud.stderr for c in CHATTER)


@pytest.mark.parametrize("argv,expected", [
    (["x"], False), (["x", "--verbosity=0"], True), (["x", "-v", "1"], True), (["x", "--verbosity=-1"], False),
    (["x", "--v=2"], True),
])
def test_verbosity_is_read_off_raw_arguments(argv, expected):
    assert cli.verbosity_in(argv) == expected


@pytest.mark.slow
def test_commands_print_their_devices_and_train_can_require_a_gpu(tmp_path):
    """No GPU here (conftest hides them): the devices line says so, and --require_gpu stops before training."""
    out = _run(["-m", "meta_drn_tf.train", *TINY, f"--model_dir={tmp_path / 'run'}", "--require_gpu"])
    assert out.returncode == cli.EXIT_USAGE, out.stderr[-2000:]
    assert out.stdout.startswith("devices: CPU only")
    assert "--require_gpu: no usable GPU" in _error_line(out)[0]
    assert not os.path.exists(tmp_path / "run" / "checkpoints")


def test_cuda_libraries_without_a_usable_gpu_are_named(monkeypatch):
    from meta_drn_tf import hardware

    monkeypatch.setattr(hardware, "cuda_packages", lambda: [])
    assert hardware.gpu_problem() is None  # a CPU-only install: nothing was expected
    monkeypatch.setattr(hardware, "cuda_packages", lambda: ["nvidia-cudnn-cu12"])
    problem = hardware.gpu_problem()
    # This TensorFlow build has CUDA support (PyPI's Linux wheels do) and conftest hides the GPUs.
    assert problem and ("CUDA_VISIBLE_DEVICES" in problem or "CUDA support" in problem), problem


@pytest.mark.slow
def test_shared_flags_are_listed_by_each_commands_help():
    """--model, --checkpoint, --kernels and --tf32 are defined once (shared_flags) and still listed by each
    command's own --help, with the defaults each command gives them."""
    expected = {"segment": ("auto", True), "app": ("auto", True), "evaluate": (None, False),
                "export": ("stock", False)}
    procs = {c: warm.Popen([sys.executable, "-m", f"meta_drn_tf.{c}", "--helpshort"], stdout=subprocess.PIPE,
                           stderr=subprocess.DEVNULL, text=True) for c in expected}
    for command, (kernels, model) in expected.items():
        out = procs[command].communicate(timeout=120)[0]  # (absl's --help exits 1)
        assert "--checkpoint: <best|latest>" in out, command
        assert "--[no]tf32: NVIDIA GPUs" in out and "Default:\n    full float32" in out, command
        assert ("--model:" in out) == model and ("--[no]trust_model:" in out) == model, command
        listed = out[out.index("--kernels:"):].split("\n  --")[0]
        assert (f"(default: '{kernels}')" in listed) if kernels else ("the run's setting" in listed), listed
