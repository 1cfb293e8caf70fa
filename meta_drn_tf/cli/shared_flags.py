"""Flags several commands share, each defined once: which model, which checkpoint, which kernel forms.

    def define_flags() -> None:
        shared_flags.define_model()
        shared_flags.define_checkpoint()
        shared_flags.define_kernels(default="auto")
        shared_flags.define_tf32()
        flags.adopt_module_key_flags(shared_flags)   # listed by the command's --help

Called from a command's `define_flags`, after `cli.run` has started TensorFlow quietly (the
choices come from the library).
"""

from __future__ import annotations

from absl import flags

from meta_drn_tf import cli

CHECKPOINTS = ("best", "latest")


def define_model() -> None:
    """`--model`: a training run or an exported SavedModel (required; it must exist), and `--trust_model`."""
    flags.DEFINE_string("model", None, "A training run's directory or an exported SavedModel (a version folder, or "
                        "the model_base_path: its newest version).", required=True)
    flags.DEFINE_bool("trust_model", False, "Load a SavedModel even if it holds ops no export of meta_drn_tf holds "
                      "(file, network, process or Python ops): only for a model from someone you trust.")
    cli.check_paths(model="path")


def define_checkpoint() -> None:
    """`--checkpoint`: which checkpoint of a training run is used."""
    flags.DEFINE_enum("checkpoint", "best", CHECKPOINTS, "Which checkpoint of a training run: best (by validation "
                      "soft IoU) or latest (where training stands; the one to use when best/ is damaged).")


def define_kernels(default: str | None) -> None:
    """`--kernels`: the forms a training run's network computes with here (`network.kernels`); `default`
    None: the run's own setting."""
    from meta_drn_tf.network.kernels import KERNEL_CHOICES

    flags.DEFINE_enum("kernels", default, KERNEL_CHOICES, "Kernel forms of a training run's network: auto (cpu on "
                      "a CPU, stock on a GPU), stock (TensorFlow's own ops) or cpu (CPU-tuned)"
                      + ("; default: the run's setting" if default is None else "")
                      + ". A SavedModel keeps the forms it was exported with.")


def define_export_kernels() -> None:
    """`--kernels` of an export: the forms written into the SavedModel's graphs (`saved_model.EXPORT_KERNELS`)."""
    from meta_drn_tf.serving.saved_model import EXPORT_KERNELS

    flags.DEFINE_enum("kernels", "stock", list(EXPORT_KERNELS), "The graphs' kernel forms: stock (TensorFlow's own "
                      "ops: any server; dilated convolutions through space-to-batch), gpu (the same with dilated "
                      "convolutions and their gradients as single cuDNN ops: GPU servers only) or cpu (CPU-tuned: "
                      "faster on CPU servers only). See docs/serving.md.")


def define_tf32() -> None:
    """`--tf32`: float32 convolutions and products in TF32 on NVIDIA GPUs (Ampere and newer) or not."""
    flags.DEFINE_bool("tf32", False, "NVIDIA GPUs (Ampere and newer): compute float32 convolutions and products in "
                      "TF32 (faster, 10-bit mantissas; TensorFlow's default). Default: full float32.")
