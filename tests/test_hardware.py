"""The process set-up the apps do (glibc's malloc limited to one arena before TensorFlow starts), and
the machine line every benchmark prints."""

import os
import platform
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc arenas are glibc's")

# Starts TensorFlow as an app does, runs ops on its thread pools, then counts malloc's arenas
# ("Arena N:" lines of glibc's malloc_stats, printed on stderr).
SCRIPT = textwrap.dedent("""
    import ctypes, sys
    from meta_drn_tf import cli
    cli.start_tensorflow(False)
    import tensorflow as tf
    x = tf.random.normal([128, 128])
    for _ in range(10):
        x = tf.nn.relu(tf.matmul(x, x) / 128.0)
    conv = tf.function(lambda a: tf.reduce_sum(tf.nn.conv2d(a, tf.ones([3, 3, 8, 8]), 1, "SAME")))
    conv(tf.ones([2, 64, 64, 8])).numpy()
    sys.stderr.flush()
    ctypes.CDLL("libc.so.6").malloc_stats()
""")


def _arenas(**env: str) -> int:
    environment = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"} | env
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                            env=environment, timeout=300, check=True)
    return sum(line.startswith("Arena ") for line in result.stderr.splitlines())


def test_apps_run_tensorflow_on_one_malloc_arena():
    assert _arenas() == 1


def test_a_users_malloc_arena_max_wins():
    assert _arenas(MALLOC_ARENA_MAX="3") == 3


@pytest.mark.parametrize("setting, expected", [("1", "on"), ("0", "off")])
def test_the_machine_line_says_whether_onednn_kernels_run(setting, expected):
    code = "from meta_drn_tf import hardware; print(hardware.onednn_kernels()); print(hardware.describe())"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True,
                            env=os.environ | {"TF_ENABLE_ONEDNN_OPTS": setting})
    state, line = result.stdout.splitlines()[-2:]
    assert state == expected
    assert f"(oneDNN kernels {expected})" in line


@pytest.mark.parametrize("setting, expected", [("0", "off"), ("1", "on"), ("false", "off")])
def test_onednn_setting_wins_over_the_cpu_flags(setting, expected, monkeypatch):
    from meta_drn_tf import hardware

    monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", setting)
    assert hardware.onednn_kernels() == expected


def test_onednn_follows_the_cpu_flags_by_default(monkeypatch):
    from meta_drn_tf import hardware

    monkeypatch.delenv("TF_ENABLE_ONEDNN_OPTS", raising=False)
    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(hardware, "cpu_flags", lambda: {"avx2", "fma"})
    assert hardware.onednn_kernels() == "off"
    monkeypatch.setattr(hardware, "cpu_flags", lambda: {"avx2", "avx512f", "avx512_vnni"})
    assert hardware.onednn_kernels() == "on"
