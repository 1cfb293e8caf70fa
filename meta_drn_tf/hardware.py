"""What the machine computes natively: decides whether bfloat16 pays off."""

from __future__ import annotations

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
