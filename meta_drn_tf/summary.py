"""Print the Meta-DRN network's parameter counts per layer group and its receptive field.

    python -m meta_drn_tf.summary [--image_size=224] [--width=1.0]
"""

from __future__ import annotations

from meta_drn_tf import cli


def _report(network) -> str:
    """The breakdown of the network a `NetworkConfig` describes."""
    from meta_drn_tf.network.model import (
        FSS1000_BASELINE_PARAMS,
        GROUPS,
        PAPER_PARAMS,
        build_meta_drn,
        parameter_breakdown,
        receptive_field,
    )

    model = build_meta_drn(network)
    counts = parameter_breakdown(model)
    lines = [f"Meta-DRN at {network.image_size}x{network.image_size}, width {network.width}"]
    for group in GROUPS:
        lines.append(f"  {group:<10} {counts[group]:>12,d}")
    total = counts["total"]
    lines += [
        f"  {'total':<10} {total:>12,d}",
        f"  paper's Meta-DRN         {PAPER_PARAMS / 1e6:.2f}M "
        f"(this build {100 * (total / PAPER_PARAMS - 1):+.1f}%)",
        f"  FSS-1000 baseline        {FSS1000_BASELINE_PARAMS / 1e6:.2f}M "
        f"(this build is {100 * (1 - total / FSS1000_BASELINE_PARAMS):.0f}% smaller)",
        f"  receptive field          {receptive_field(model)} px",
    ]
    return "\n".join(lines)


def define_flags() -> None:
    """The flags of `python -m meta_drn_tf.summary`."""
    from absl import flags

    flags.DEFINE_integer("image_size", 224, "Input height and width (multiple of 4).")
    flags.DEFINE_float("width", 1.0, "Filter-count multiplier; 1.0 is the paper's network.")
    flags.register_validator("image_size", lambda n: n >= 4 and n % 4 == 0,
                             message="must be a positive multiple of 4 (two stride-2 stages, then x4 upsampling)")
    flags.register_validator("width", lambda w: w > 0, message="must be positive")


def main(argv):
    del argv
    from absl import flags

    from meta_drn_tf.network.config import NetworkConfig

    print(_report(NetworkConfig(flags.FLAGS.image_size, flags.FLAGS.width)))


if __name__ == "__main__":
    cli.run(main, define_flags)
