"""The machine: what it computes natively (whether bfloat16 pays off), and a one-line description."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

# CPU flags (as /proc/cpuinfo spells them) with native bfloat16 arithmetic.
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


# glibc's mallopt parameter for the arena count (malloc.h).
_M_ARENA_MAX = -8


def limit_malloc_arenas(count: int = 1) -> bool:
    """Makes glibc's malloc serve every thread from at most `count` arenas; True if it did.

    By default glibc gives each new thread its own arena (up to 8 per core), and a
    tensor freed by another thread than the one that allocated it goes back to the
    allocating thread's arena: TensorFlow's executor threads then keep freed memory in
    several arenas at once. One arena lowers the peak RSS of a meta-step at the same
    speed (measured in docs/performance.md). Must run before TensorFlow
    starts its threads (the apps call it from `cli.start_tensorflow`). A user's own
    MALLOC_ARENA_MAX wins; elsewhere than glibc (macOS, musl) this does nothing.
    """
    if "MALLOC_ARENA_MAX" in os.environ or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(_M_ARENA_MAX, count))
    except (OSError, AttributeError):
        return False


def cpu_flags() -> set[str] | None:
    """The CPU's feature flags from /proc/cpuinfo, or None where it cannot be read."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return None


def bfloat16_support() -> str:
    """"gpu", "native (<cpu flags>)", "emulated" or "unknown" (no /proc/cpuinfo)."""
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        return "gpu"
    found = cpu_flags()
    if found is None:
        return "unknown"
    native = [f for f in BF16_CPU_FLAGS if f in found]
    return f"native ({', '.join(native)})" if native else "emulated"


def bfloat16_is_emulated() -> bool:
    """True on a CPU-only machine whose CPU lacks AVX512-BF16 and AMX: bfloat16 is then much slower."""
    return bfloat16_support() == "emulated"


# CPU flags with which TensorFlow's Linux x86 builds turn their oneDNN kernels on by default.
ONEDNN_DEFAULT_CPU_FLAGS = ("avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8", "avx_vnni")


def onednn_kernels() -> str:
    """"on" or "off": whether TensorFlow runs its oneDNN CPU kernels ("unknown" if it cannot tell).

    `TF_ENABLE_ONEDNN_OPTS` decides where it is set; otherwise TensorFlow turns them on only on
    CPUs with deep-learning features (AVX512-VNNI, AVX512-BF16, AMX) and runs its Eigen kernels
    elsewhere. The two differ in speed and in which gradients they support, so figures from
    different hosts say which ran, and the cpu kernel policy orders gradient terms by it.
    """
    setting = os.environ.get("TF_ENABLE_ONEDNN_OPTS")
    if setting is not None:
        return "off" if setting.strip().lower() in ("0", "false", "off") else "on"
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return "off"
    found = cpu_flags()
    if found is None:
        return "unknown"
    return "on" if found & set(ONEDNN_DEFAULT_CPU_FLAGS) else "off"


def compute_device() -> str:
    """Where this process's TensorFlow functions run by default: "gpu", "tpu" or "cpu"."""
    import tensorflow as tf

    if tf.config.list_logical_devices("GPU"):
        return "gpu"
    return "tpu" if tf.config.list_logical_devices("TPU") else "cpu"


def cuda_packages() -> list[str]:
    """The NVIDIA CUDA libraries pip installed (`tensorflow[and-cuda]` brings them), by distribution name."""
    from importlib import metadata

    names = {(d.metadata["Name"] or "").lower() for d in metadata.distributions()}
    return sorted(n for n in names if n.startswith("nvidia-") and "-cu1" in n)


def devices_line() -> str:
    """The devices TensorFlow runs on, in one line (every command prints it)."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    names = []
    for gpu in gpus:
        details = tf.config.experimental.get_device_details(gpu)
        names.append(details.get("device_name", gpu.name))
    if gpus:
        return f"devices: {len(gpus)} GPU(s) ({', '.join(sorted(set(names)))}) and the CPU"
    return f"devices: CPU only ({os.cpu_count()} cores; oneDNN kernels {onednn_kernels()})"


def gpu_problem() -> str | None:
    """Why no GPU is usable although CUDA's libraries are installed, or None (a GPU is there, or none
    was expected: no CUDA libraries)."""
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        return None
    packages = cuda_packages()
    if not packages:
        return None
    if not tf.test.is_built_with_cuda():
        return f"CUDA libraries are installed ({packages[0]}, ...) but this TensorFlow build has no CUDA support"
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return "CUDA_VISIBLE_DEVICES hides every GPU"
    return ("tensorflow[and-cuda] is installed but TensorFlow found no usable GPU (driver missing or too old, "
            "or no GPU on this machine); run with --verbosity=0 to see TensorFlow's CUDA messages")


def describe() -> str:
    """The machine in one line (printed by every benchmark with its figures)."""
    import tensorflow as tf

    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    try:
        memory = f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB RAM"
    except (ValueError, OSError):
        memory = "RAM unknown"
    gpus = tf.config.list_physical_devices("GPU")
    return (f"{cpu}, {os.cpu_count()} cores, {memory}, {len(gpus)} GPU(s), bfloat16 {bfloat16_support()}; "
            f"TensorFlow {tf.__version__} (oneDNN kernels {onednn_kernels()}), Python {platform.python_version()}")
