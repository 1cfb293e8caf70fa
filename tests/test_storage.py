"""Full disks, read-only folders and SIGTERM while writing: one `error:` line (exit 6, or 75 for
SIGTERM), nothing half-written, and training's last intact checkpoint stays loadable. The disks are
real: small tmpfs mounts where the suite runs as root (skipped elsewhere)."""

import contextlib
import glob
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid

import cv2
import numpy as np
import pytest
import tensorflow as tf
import warm

from meta_drn_tf.errors import storage_problem
from meta_drn_tf.runs.config import RunConfig
from meta_drn_tf.runs.directory import RunDirectory
from meta_drn_tf.runs.learners import build_learner, restore_learner

STORAGE, PREEMPTED = 6, 75
# First-order MAML: what is tested is the run's files, not the meta-gradient (a cheaper step to trace).
TINY = ["--algo=fomaml", "--image_size=16", "--width=0.0625", "--synthetic_classes=12", "--synthetic_images=4",
        "--queries=1", "--meta_batch_size=2", "--tasks_per_epoch=2", "--val_episodes=2", "--test_at_end=false",
        "--export_at_end=false"]


@contextlib.contextmanager
def small_disk(tmp_path, size: str):
    """A tmpfs of `size` mounted in tmp_path (root only); unmounted after."""
    mount = tmp_path / f"disk-{uuid.uuid4().hex[:6]}"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def _fill(folder) -> None:
    """Leaves no free byte in `folder`'s file system."""
    with open(os.path.join(folder, "filler"), "wb") as f, contextlib.suppress(OSError):
        while True:
            f.write(b"\0" * 65536)
            f.flush()


def _run(*args, timeout=300):
    return warm.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=timeout)


def _one_error_line(out, code):
    assert out.returncode == code, out.stderr[-3000:]
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr[-3000:]
    return lines[0]


def test_storage_problems_are_told_apart_from_other_errors(tmp_path):
    full = OSError(28, "No space left on device", str(tmp_path / "x.png"))
    assert storage_problem(full).startswith(f"cannot write {tmp_path / 'x.png'}: the disk is full (")
    assert f"MiB free in {tmp_path})" in storage_problem(full)
    read_only = tf.errors.FailedPreconditionError(None, None, f"{tmp_path}/ckpt-3_temp; Read-only file system")
    assert "the folder is on a read-only file system" in storage_problem(read_only)
    assert storage_problem(OSError(2, "No such file or directory")) is None
    assert storage_problem(ValueError("bad value")) is None
    # TensorFlow names its device in the same message: the file and its disk are named, not "/job".
    tf_full = tf.errors.ResourceExhaustedError(None, None, "/job:localhost/replica:0/task:0/device:CPU:0; "
                                               f"{tmp_path}/ckpt-1_temp/part-00000; No space left on device")
    assert storage_problem(tf_full).startswith(f"cannot write {tmp_path}/ckpt-1_temp/part-00000: the disk is full")
    assert f"MiB free in {tmp_path})" in storage_problem(tf_full)
    assert "cannot write: the disk is full." in storage_problem(tf.errors.ResourceExhaustedError(
        None, None, "/job:localhost/replica:0/task:0/device:CPU:0; No space left on device"))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A run folder with a best checkpoint (what export and segment read)."""
    path = str(tmp_path_factory.mktemp("run") / "run")
    config = RunConfig.from_flags(model_dir=path, image_size=16, width=0.0625, synthetic_classes=12,
                                  synthetic_images=4)
    RunDirectory(path).claim(config)
    tf.train.CheckpointManager(tf.train.Checkpoint(learner=build_learner(config)), os.path.join(path, "best"),
                               1).save()
    return path


@pytest.mark.slow
def test_export_to_a_full_disk_leaves_no_partial_version(run, tmp_path):
    with small_disk(tmp_path, "256k") as disk:
        out = _run("meta_drn_tf.export", f"--model_dir={run}", f"--export_dir={disk}/models")
        line = _one_error_line(out, STORAGE)
        assert f"cannot write {disk}/models/" in line and "the disk is full" in line, line
        assert os.listdir(disk / "models") == []  # no version, no .partial folder


@pytest.mark.slow
def test_segment_on_a_full_disk_leaves_whole_masks_only(run, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for i in range(40):
        cv2.imwrite(str(photos / f"{i:02d}.png"), rng.integers(0, 256, (200, 200, 3), dtype=np.uint8))
    mask = np.zeros((200, 200), np.uint8)
    mask[50:150, 50:150] = 255
    cv2.imwrite(str(tmp_path / "mask.png"), mask)
    with small_disk(tmp_path, "1m") as disk:  # room for a few masks and overlays of the 40
        out = _run("meta_drn_tf.segment", f"--model={run}", f"--support={photos / '00.png'}",
                   f"--support_mask={tmp_path / 'mask.png'}", f"--images={photos}", f"--out={disk}", "--overlay")
        line = _one_error_line(out, STORAGE)
        assert f"cannot write {disk}/" in line, line
        written = os.listdir(disk)
        assert written and all(not name.startswith(".") for name in written)  # no partial files left
        for name in written:
            assert cv2.imread(str(disk / name), cv2.IMREAD_UNCHANGED) is not None, name  # each one whole


@pytest.mark.slow
def test_training_on_a_full_disk_stops_and_its_last_checkpoint_loads(tmp_path):
    with small_disk(tmp_path, "8m") as disk:
        model_dir = str(disk / "run")
        first = _run("meta_drn_tf.train", f"--model_dir={model_dir}", "--epochs=1", *TINY)
        assert first.returncode == 0, first.stderr[-3000:]
        _fill(disk)
        out = _run("meta_drn_tf.train", f"--model_dir={model_dir}", "--epochs=3", *TINY)
        line = _one_error_line(out, STORAGE)
        assert "the disk is full" in line and str(disk) in line, line
        os.remove(disk / "filler")
        restore_learner(model_dir, "latest")  # the newest intact checkpoint
        again = _run("meta_drn_tf.train", f"--model_dir={model_dir}", "--epochs=3", *TINY)
        assert again.returncode == 0, again.stderr[-3000:]


@pytest.mark.slow
def test_sigterm_during_export_stops_in_one_line_with_nothing_half_written(run, tmp_path):
    process = warm.Popen([sys.executable, "-m", "meta_drn_tf.export", f"--model_dir={run}",
                         f"--export_dir={tmp_path / 'models'}"], stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not glob.glob(str(tmp_path / "models" / ".export.*.partial")) and time.time() < deadline:
        time.sleep(0.05)  # the export is writing
    process.send_signal(signal.SIGTERM)
    stderr = process.communicate(timeout=120)[1]
    out = subprocess.CompletedProcess(process.args, process.returncode, "", stderr)
    assert "stopped by SIGTERM; nothing half-written was left" in _one_error_line(out, PREEMPTED)
    assert os.listdir(tmp_path / "models") == []
    shutil.rmtree(tmp_path / "models")


@contextlib.contextmanager
def read_only_view(tmp_path, folder):
    """`folder` seen through a read-only bind mount (root only); unmounted after."""
    view = tmp_path / f"ro-{uuid.uuid4().hex[:6]}"
    view.mkdir()
    done = subprocess.run(["mount", "--bind", str(folder), str(view)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot bind-mount here (needs root): {done.stderr.decode().strip()}")
    try:
        remount = subprocess.run(["mount", "-o", "remount,ro,bind", str(view)], capture_output=True)
        if remount.returncode != 0:
            pytest.skip(f"cannot remount read-only here: {remount.stderr.decode().strip()}")
        yield view
    finally:
        subprocess.run(["umount", "-l", str(view)], capture_output=True)


@pytest.mark.slow
def test_a_read_only_run_folder_is_a_storage_problem_for_every_command(run, tmp_path):
    with read_only_view(tmp_path, run) as view:
        for command in (["meta_drn_tf.train", f"--model_dir={view}", "--epochs=2", *TINY],
                        ["meta_drn_tf.evaluate", f"--model_dir={view}", "--episodes=1"]):
            line = _one_error_line(_run(*command), STORAGE)
            assert str(view) in line and "read-only file system" in line, line


@pytest.mark.slow
def test_sigterm_while_tensorflow_starts_ends_with_the_preempted_code(run, tmp_path):
    """Cold: the signal lands while TensorFlow is imported, before the command's own code."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    process = subprocess.Popen([sys.executable, "-m", "meta_drn_tf.export", f"--model_dir={run}",
                                f"--export_dir={tmp_path / 'models'}"], stderr=subprocess.PIPE, text=True, env=env)
    time.sleep(1.0)
    process.send_signal(signal.SIGTERM)
    stderr = process.communicate(timeout=120)[1]
    out = subprocess.CompletedProcess(process.args, process.returncode, "", stderr)
    assert "stopped by SIGTERM" in _one_error_line(out, PREEMPTED)
    assert not (tmp_path / "models").exists()
