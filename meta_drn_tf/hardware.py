"""The machine: what it computes natively (whether bfloat16 pays off), and a one-line description."""

from __future__ import annotations

import os
import platform

# CPU flags (as /proc/cpuinfo spells them) with native bfloat16 arithmetic.
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


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
            f"TensorFlow {tf.__version__}, Python {platform.python_version()}")
