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


# NVIDIA compute capabilities: bfloat16 tensor cores from Ampere (8.0), float16 ones from Volta (7.0).
BF16_CAPABILITY, FP16_CAPABILITY = (8, 0), (7, 0)


def gpu_cards() -> list[tuple[str, tuple[int, int] | None]]:
    """(name, compute capability) of each GPU TensorFlow sees (the capability None where it is not said)."""
    import tensorflow as tf

    cards = []
    for gpu in tf.config.list_physical_devices("GPU"):
        details = tf.config.experimental.get_device_details(gpu)
        capability = details.get("compute_capability")
        cards.append((details.get("device_name", gpu.name), tuple(capability) if capability else None))
    return cards


def _capability(capability: tuple[int, int] | None) -> str:
    return "compute capability " + ("unknown" if capability is None else ".".join(map(str, capability)))


def bfloat16_support() -> str:
    """Per GPU, "<name> (compute capability X.Y): native" or ": emulated" (no bfloat16 tensor cores before
    8.0); on a CPU-only machine "native (<cpu flags>)", "emulated" or "unknown" (no /proc/cpuinfo)."""
    cards = gpu_cards()
    if cards:
        return "; ".join(f"{name} ({_capability(c)}): {'native' if c and c >= BF16_CAPABILITY else 'emulated'}"
                         for name, c in cards)  # `bfloat16_is_emulated` decides from the same cards
    found = cpu_flags()
    if found is None:
        return "unknown"
    native = [f for f in BF16_CPU_FLAGS if f in found]
    return f"native ({', '.join(native)})" if native else "emulated"


def bfloat16_is_emulated() -> bool:
    """True where bfloat16 runs without hardware for it (a GPU before compute capability 8.0, a CPU without
    AVX512-BF16 and AMX): much slower than float32 there."""
    cards = gpu_cards()
    if cards:
        return any(c is None or c < BF16_CAPABILITY for _, c in cards)
    return bfloat16_support() == "emulated"


def auto_precision() -> str:
    """The precision `--precision=auto` takes here: bfloat16 where every GPU has bfloat16 tensor cores
    (compute capability 8.0 or newer), float16 (loss-scaled) where they all have float16 ones (7.x),
    float32 otherwise (older GPUs, and CPUs)."""
    capabilities = [c for _, c in gpu_cards()]
    if not capabilities or None in capabilities:
        return "float32"
    if min(capabilities) >= BF16_CAPABILITY:
        return "bfloat16"
    return "float16" if min(capabilities) >= FP16_CAPABILITY else "float32"


def precision_problem(precision: str) -> str | None:
    """Why `precision` does not suit this machine's GPUs (bfloat16 on a card before compute capability 8.0,
    which would emulate it), worded to follow the flag; None where it suits them."""
    if precision != "bfloat16":
        return None
    for name, capability in gpu_cards():
        if capability is not None and capability < BF16_CAPABILITY:
            half = "float16" if capability >= FP16_CAPABILITY else "float32"
            return (f"the {name} ({_capability(capability)}) has no bfloat16 tensor cores (TensorFlow would "
                    f"emulate them, slower than float32): use --precision={half}"
                    f"{' (loss-scaled half precision)' if half == 'float16' else ''} or --precision=auto")
    return None


def use_tf32(enabled: bool) -> None:
    """TF32 for float32 convolutions and matrix products on NVIDIA GPUs (Ampere and newer) where
    `enabled`, else full float32; TensorFlow's own default is TF32."""
    import tensorflow as tf

    tf.config.experimental.enable_tensor_float_32_execution(enabled)


def allow_memory_growth() -> bool:
    """Makes TensorFlow take GPU memory as it needs it instead of nearly all of each GPU at its first op
    (so that commands can share a card); True if it did. `TF_FORCE_GPU_ALLOW_GROWTH` (which TensorFlow
    reads itself), when set, wins: `false` gives TensorFlow's default. Must run before a GPU is used."""
    import tensorflow as tf

    if os.environ.get("TF_FORCE_GPU_ALLOW_GROWTH") is not None:
        return False
    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        tf.config.experimental.set_memory_growth(gpu, True)
    return bool(gpus)


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


def devices_line(tf32: bool | None = None) -> str:
    """The devices TensorFlow runs on, in one line (every command prints it); with GPUs, whether float32
    runs as TF32 (`tf32`; None: the command has no such choice)."""
    cards = gpu_cards()
    if cards:
        names = sorted({f"{name}, {_capability(c)}" for name, c in cards})
        choice = "" if tf32 is None else "; TF32 on" if tf32 else "; full float32"
        return f"devices: {len(cards)} GPU(s) ({'; '.join(names)}) and the CPU{choice}"
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
