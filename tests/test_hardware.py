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


def _cards(monkeypatch, *capabilities):
    """Mocks TensorFlow's GPUs: one card per compute capability given (T4 7.5, A100 8.0, H100 9.0)."""
    import tensorflow as tf

    names = {(7, 5): "Tesla T4", (8, 0): "NVIDIA A100", (9, 0): "NVIDIA H100", (6, 1): "GTX 1080"}
    gpus = [tf.config.PhysicalDevice(f"/physical_device:GPU:{i}", "GPU") for i in range(len(capabilities))]
    details = {gpu.name: {"device_name": names[c], "compute_capability": c} for gpu, c in zip(gpus, capabilities)}
    monkeypatch.setattr(tf.config, "list_physical_devices", lambda kind=None: gpus if kind in (None, "GPU") else [])
    monkeypatch.setattr(tf.config.experimental, "get_device_details", lambda gpu: details[gpu.name])
    return gpus


@pytest.mark.parametrize("capabilities, precision, support", [
    ([(7, 5)], "float16", "Tesla T4 (compute capability 7.5): emulated"),
    ([(8, 0)], "bfloat16", "NVIDIA A100 (compute capability 8.0): native"),
    ([(9, 0)], "bfloat16", "NVIDIA H100 (compute capability 9.0): native"),
    ([(9, 0), (7, 5)], "float16", "NVIDIA H100 (compute capability 9.0): native; Tesla T4 (compute capability "
                                  "7.5): emulated"),
    ([(6, 1)], "float32", "GTX 1080 (compute capability 6.1): emulated"),
    ([], "float32", None),
])
def test_the_half_precision_is_chosen_per_card(monkeypatch, capabilities, precision, support):
    from meta_drn_tf import hardware
    from meta_drn_tf.meta import MetaConfig

    _cards(monkeypatch, *capabilities)
    assert hardware.auto_precision() == precision
    assert MetaConfig(precision="auto").precision == precision  # what a run saves
    if support:
        assert hardware.bfloat16_support() == support
        assert hardware.bfloat16_is_emulated() == (min(capabilities) < (8, 0))
    problem = hardware.precision_problem("bfloat16")
    if capabilities and min(capabilities) < (8, 0):
        assert "has no bfloat16 tensor cores" in problem and f"--precision={precision}" in problem
    else:
        assert problem is None
    assert hardware.precision_problem("float16") is None and hardware.precision_problem("float32") is None


def test_training_in_bfloat16_on_a_card_without_it_is_refused_before_the_run_is_touched(monkeypatch, tmp_path):
    from meta_drn_tf.errors import ConfigError
    from meta_drn_tf.runs.config import RunConfig
    from meta_drn_tf.training.trainer import train

    _cards(monkeypatch, (7, 5))
    with pytest.raises(ConfigError, match=r"--precision=bfloat16: the Tesla T4 \(compute capability 7.5\) has no "
                                          r"bfloat16 tensor cores .*use --precision=float16"):
        train(RunConfig.from_flags(model_dir=str(tmp_path / "run"), precision="bfloat16", image_size=16,
                                   width=0.0625))
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("tf32, words", [(True, "; TF32 on"), (False, "; full float32"), (None, "")])
def test_the_devices_line_names_each_card_and_the_tf32_choice(monkeypatch, tf32, words):
    from meta_drn_tf import hardware

    _cards(monkeypatch, (9, 0), (9, 0))
    assert hardware.devices_line(tf32) == (f"devices: 2 GPU(s) (NVIDIA H100, compute capability 9.0) and the "
                                           f"CPU{words}")


def test_gpu_memory_grows_as_needed_unless_the_user_says_otherwise(monkeypatch):
    import tensorflow as tf

    from meta_drn_tf import hardware

    gpus = _cards(monkeypatch, (8, 0), (8, 0))
    grown = []
    monkeypatch.setattr(tf.config.experimental, "set_memory_growth", lambda gpu, on: grown.append((gpu.name, on)))
    monkeypatch.delenv("TF_FORCE_GPU_ALLOW_GROWTH", raising=False)
    assert hardware.allow_memory_growth() and grown == [(gpu.name, True) for gpu in gpus]
    grown.clear()
    monkeypatch.setenv("TF_FORCE_GPU_ALLOW_GROWTH", "false")  # TensorFlow's own setting: it reads it
    assert not hardware.allow_memory_growth() and grown == []
