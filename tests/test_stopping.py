"""Signals while training (`stopping.StopRequest`) and the run directory's lock (`runlock.RunLock`)."""

import os
import signal
import socket

import pytest

from meta_drn_tf.errors import ConfigError
from meta_drn_tf.runlock import LOCK_FILE, RunLock
from meta_drn_tf.stopping import StopRequest, StopSignal


def test_a_signal_in_a_deferred_block_is_recorded_elsewhere_it_raises():
    previous = signal.getsignal(signal.SIGTERM)
    with StopRequest() as stops:
        with stops.deferred():
            os.kill(os.getpid(), signal.SIGTERM)
            reached = True  # the handler returned: the step goes on
        assert reached and stops.requested and stops.preempted
        with pytest.raises(StopSignal, match="SIGTERM"):
            os.kill(os.getpid(), signal.SIGTERM)
    assert signal.getsignal(signal.SIGTERM) is previous  # handlers restored on exit


def test_a_second_ctrl_c_stops_at_once():
    with StopRequest() as stops:
        with stops.deferred():
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
