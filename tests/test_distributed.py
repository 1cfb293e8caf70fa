"""tf.distribute: 2 logical CPU replicas match one device; two localhost workers train; a dead worker fails the run."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf
import warm

from meta_drn_tf import cli
from meta_drn_tf.training import distribute

HERE = os.path.dirname(__file__)
ENV = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}


def _check(*args, timeout=400):
    out = warm.run([sys.executable, os.path.join(HERE, "distributed_check.py"), *args],
                   check=True, capture_output=True, text=True, env=ENV, timeout=timeout)
    results = json.loads(out.stdout.strip().splitlines()[-1])
    for algo, r in results.items():
        assert r["moved"] > 1e-4, algo  # the steps changed the weights...
        assert r["difference"] < 1e-5, (algo, r)  # ...identically on one device and on the replicas
    return results


@pytest.mark.slow
def test_mirrored_two_replicas_with_xla_make_the_same_update_as_one_device():
    """The paper's meta-batch of 5 on 2 replicas (3 + 2 tasks), every algorithm, with --jit_compile:
    XLA compiles each replica's part, not the step that reads every replica's variables (which
    failed: "tf.Variable on a different device")."""
    _check("--jit", "--meta_batch=5", "maml", "fomaml", "metasgd", "reptile")


@pytest.mark.slow
def test_the_papers_meta_batch_of_5_on_8_replicas_makes_one_devices_update():
    """Without XLA: one task on five replicas and none on three (4 replicas, 2+1+1+1, is the
    shares' unit test; two workers split 3 tasks below)."""
    _check("--replicas=8", "--meta_batch=5", "maml")


def test_replica_shares_split_a_meta_batch_as_evenly_as_it_goes():
    assert distribute.replica_shares(5, 1) == [(0, 5)]
    assert distribute.replica_shares(5, 2) == [(0, 3), (3, 2)]
    assert distribute.replica_shares(5, 4) == [(0, 2), (2, 1), (3, 1), (4, 1)]
    assert distribute.replica_shares(5, 8) == [(0, 1), (1, 1), (2, 1), (3, 1), (4, 1), (5, 0), (5, 0), (5, 0)]


def _ids(*args):
    ids, counts = distribute.replica_task_ids(*args)
    return list(ids.as_numpy_iterator()), list(counts.as_numpy_iterator())


def test_replica_task_ids_cover_each_step_once_in_order():
    # 2 pipelines (workers) x 1 replica, meta-batch 4: worker 0 reads tasks 0,1 then 4,5; worker 1 reads 2,3 then 6,7.
    assert _ids(0, 2, 4, 2, 1, 0) == ([0, 1, 4, 5], [2, 2])
    assert _ids(0, 2, 4, 2, 1, 1) == ([2, 3, 6, 7], [2, 2])
    assert _ids(3, 1, 4, 1, 1, 0) == ([12, 13, 14, 15], [4])
    # Meta-batch 5 on one pipeline of 2 replicas from step 1: 5,6,7 | 8,9 padded with 9; then 10,11,12 | 13,14.
    assert _ids(1, 2, 5, 2, 2, 0) == ([5, 6, 7, 8, 9, 9, 10, 11, 12, 13, 14, 14], [3, 2, 3, 2])
    # Two workers of 2 replicas each, meta-batch 5: worker 1 serves replicas 2 and 3 (tasks 3 and 4).
    assert _ids(0, 1, 5, 4, 2, 1) == ([3, 3, 4, 4], [1, 1])


def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


# The collectives' timeout of runs that should not time out: on a loaded 2-core host a worker's first
# steps of an epoch (tracing, then validation on the chief) took over 30 s, and 30 failed such a run.
COLLECTIVE_TIMEOUT_S = 120


def _worker_cmd(model_dir, epochs, timeout_s=COLLECTIVE_TIMEOUT_S):
    # Meta-batch 3 over two workers: shares of 2 and 1 task, the second padded (an uneven split). First-order
    # MAML: every algorithm's replica update is distributed_check.py's; this is the workers' plumbing.
    flags = dict(algo="fomaml", image_size=16, width=0.0625, synthetic_classes=12, synthetic_images=4, queries=1,
                 meta_batch_size=3, tasks_per_epoch=3, epochs=epochs, val_episodes=1, inner_lr=0.01,
                 save_every_steps=1,
                 test_at_end=False, export_at_end=False, strategy="multi_worker", model_dir=model_dir,
                 collective_timeout_s=timeout_s, deterministic=True)
    return [sys.executable, "-m", "meta_drn_tf.train"] + [f"--{k}={v}" for k, v in flags.items()]


def _start_workers(model_dir, epochs, timeout_s=COLLECTIVE_TIMEOUT_S):
    ports = _free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    procs = []
    for i in range(2):
        env = {**ENV, "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})}
        procs.append(warm.Popen(_worker_cmd(model_dir, epochs, timeout_s), env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    return procs


def _weights(model_dir):
    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints")))
    return {k: reader.get_tensor(k) for k in reader.get_variable_to_dtype_map() if k.startswith("learner/")}


@pytest.mark.slow
def test_a_dead_worker_fails_the_run_instead_of_hanging(tmp_path):
    model_dir = str(tmp_path / "dead")
    procs = _start_workers(model_dir, epochs=200, timeout_s=10)
    state = os.path.join(model_dir, "checkpoints", "checkpoint")
    try:
        deadline = time.time() + 240
        while time.time() < deadline and not os.path.exists(state) and procs[0].poll() is None:
            time.sleep(0.2)
        assert os.path.exists(state), "no checkpoint before the kill"
        procs[1].send_signal(signal.SIGKILL)
        start = time.time()
        output = procs[0].communicate(timeout=180)[0]
        assert time.time() - start < 180
    finally:
        for p in procs:
            p.kill()
    assert procs[0].returncode == 4, output[-3000:]  # cli.EXIT_WORKER_LOST
    assert "error: lost contact with another worker" in output and "checkpoint" in output, output[-3000:]


def _saved_state(model_dir):
    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints")))
    return {name: int(reader.get_tensor(k)) for k in reader.get_variable_to_dtype_map()
            for name in ("epoch", "global_step") if k.startswith(f"state/{name}/")}


def _finish(procs, timeout):
    try:
        outputs = [p.communicate(timeout=timeout)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    return [p.returncode for p in procs], outputs


@pytest.mark.slow
def test_two_localhost_workers_preempted_and_resumed_train_like_one_device(tmp_path):
    model_dir = str(tmp_path / "mw")
    procs = _start_workers(model_dir, epochs=1000)  # far more than it gets: the signal always comes first
    state = os.path.join(model_dir, "checkpoints", "checkpoint")
    deadline = time.time() + 240
    while time.time() < deadline and not os.path.exists(state) and procs[0].poll() is None:
        time.sleep(0.2)
    assert os.path.exists(state), "no checkpoint before the signal"
    procs[1].send_signal(signal.SIGTERM)  # the non-chief: PreemptionCheckpointHandler tells the chief
    codes, outputs = _finish(procs, 180)
    assert codes == [cli.EXIT_PREEMPTED] * 2, outputs[0][-3000:] + outputs[1][-3000:]
    assert "error: SIGTERM: stopped at epoch" in outputs[0] and "on 2 replica(s)" in outputs[0]
    epochs = _saved_state(model_dir)["epoch"] + 1

    # Both workers resume from the chief's checkpoint; the result is one device's uninterrupted run.
    codes, outputs = _finish(_start_workers(model_dir, epochs=epochs), 300)
    assert codes == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    assert all("Resuming" in out for out in outputs)
    assert {"checkpoints", "best", "logs", "flags.json"} <= set(os.listdir(model_dir))
    single = str(tmp_path / "single")
    cmd = [c.replace("multi_worker", "one_device") for c in _worker_cmd(single, epochs=epochs)]
    warm.run(cmd, check=True, env=ENV, timeout=300, capture_output=True)
    a, b = _weights(model_dir), _weights(single)
    assert a.keys() == b.keys() and a
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-6, err_msg=k)
