"""Faults: signals while training (`stopping.StopRequest`), the run directory's lock (`runlock.RunLock`),
readers and exporters beside a run that is training."""

import os
import signal
import socket

import pytest

from meta_drn_tf.errors import ConfigError
from meta_drn_tf.runs.runlock import LOCK_FILE, RunLock
from meta_drn_tf.training.stopping import StopRequest, StopSignal


def test_a_signal_is_recorded_and_raises_only_where_work_may_be_interrupted():
    previous = signal.getsignal(signal.SIGTERM)
    with StopRequest() as stops:
        with pytest.raises(StopSignal, match="SIGTERM"), stops.interruptible():
            os.kill(os.getpid(), signal.SIGTERM)
    with StopRequest() as stops:
        os.kill(os.getpid(), signal.SIGTERM)
        reached = True  # the handler returned: the meta-step goes on
        assert reached and stops.requested and stops.preempted
        with pytest.raises(StopSignal, match="SIGTERM"), stops.interruptible():  # recorded before: raises on entry
            raise AssertionError("the block ran after a stop was requested")
    assert signal.getsignal(signal.SIGTERM) is previous  # handlers restored on exit


def test_a_second_ctrl_c_stops_at_once():
    with StopRequest() as stops:
        os.kill(os.getpid(), signal.SIGINT)
        assert stops.requested and not stops.preempted
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)


def test_the_lock_admits_one_holder_and_names_it(tmp_path):
    root = str(tmp_path / "run")
    with RunLock(root):
        # flock belongs to an open file: a second open in the same process is a second writer too.
        with pytest.raises(ConfigError) as refused:
            RunLock(root).acquire()
        assert f"PID {os.getpid()} on {socket.gethostname()}" in str(refused.value)
        assert f"--model_dir {root} is being trained by" in str(refused.value)
    with RunLock(root):  # released on exit: the next writer gets it
        assert os.path.isfile(os.path.join(root, LOCK_FILE))


def test_a_checkpoint_deleted_while_it_is_read_is_followed_by_the_newest(tmp_path, monkeypatch):
    import numpy as np
    import tensorflow as tf

    from meta_drn_tf.runs import learners
    from meta_drn_tf.runs.config import RunConfig
    from meta_drn_tf.runs.directory import RunDirectory

    config = RunConfig.from_flags(model_dir=str(tmp_path), image_size=16, width=0.0625)
    RunDirectory(str(tmp_path)).claim(config)
    learner = learners.build_learner(config)
    manager = tf.train.CheckpointManager(tf.train.Checkpoint(learner=learner), str(tmp_path / "best"), 2)
    manager.save()
    learner.model.trainable_variables[0].assign_add(tf.ones_like(learner.model.trainable_variables[0]))
    newest = manager.save()
    expected = learner.model.trainable_variables[0].numpy()
    # The trainer replaced ckpt-0 between our listing it and reading its files.
    gone = str(tmp_path / "best" / "ckpt-0")
    listings = iter([[gone], [newest], [newest]])
    monkeypatch.setattr(learners, "saved_checkpoints", lambda folder: next(listings))
    restored, _ = learners.restore_learner(str(tmp_path))
    np.testing.assert_array_equal(restored.model.trainable_variables[0].numpy(), expected)

    # Replaced again at every look: the run saves faster than it can be read.
    names = iter(str(tmp_path / "best" / f"ckpt-{n}") for n in range(10, 100))
    monkeypatch.setattr(learners, "saved_checkpoints", lambda folder: [next(names)])
    with pytest.raises(ConfigError, match="replaced faster than they could be read"):
        learners.restore_learner(str(tmp_path))
    # Still listed but unreadable: damaged, named, with what to use instead.
    monkeypatch.setattr(learners, "saved_checkpoints", lambda folder: [gone])
    with pytest.raises(ConfigError, match="ckpt-0 is damaged"):
        learners.restore_learner(str(tmp_path))


def test_two_exports_at_once_take_two_versions(tmp_path, monkeypatch):
    from meta_drn_tf.serving import saved_model as serving

    base = tmp_path / "saved_models"
    (base / "1").mkdir(parents=True)
    (base / "1" / "saved_model.pb").write_bytes(b"the other export's")
    partial = base / ".export.1234.partial"
    partial.mkdir()
    (partial / "saved_model.pb").write_bytes(b"ours")
    # Version 1 looked free when we asked; the other export took it before our rename.
    versions = iter([1, 2])
    monkeypatch.setattr(serving, "next_version", lambda export_base: next(versions))
    assert serving._publish(str(partial), str(base)) == str(base / "2")
    assert (base / "1" / "saved_model.pb").read_bytes() == b"the other export's"
    assert (base / "2" / "saved_model.pb").read_bytes() == b"ours" and not partial.exists()
