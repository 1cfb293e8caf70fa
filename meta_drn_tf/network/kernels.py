"""The kernel policy: which forms the network's convolutions and norms take, chosen in one place.

    policy = kernels.choose("auto", device="cpu", precision="float32", second_order=True)
    logits, _ = model.stateless_call(weights, [], images, kernels=policy)

Two families:

- `stock`: TensorFlow's own ops and their registered gradients - what cuDNN and XLA do
  best, and what runs on any device. Dilated convolutions are one `Conv2D` op whose
  gradients take the dilation directly (`Conv2DBackpropInput`/`Filter`, one op each) on
  accelerators; TensorFlow's CPU kernels have no dilated gradients, so on CPUs (and in
  device-neutral exports) dilated layers go through `tf.nn.convolution`'s space-to-batch.
- `cpu`: the CPU-tuned forms of `conv` and `norm` - the input gradient as a forward
  convolution, kernel gradients tap by tap, Winograd's F(2x2, 3x3) for wide 3x3 layers,
  a layer's gradient terms in turn (where TensorFlow runs oneDNN's kernels), fused
  batch-norm kernels in first-order steps.

`auto` is `cpu` on a CPU and `stock` on an accelerator. What is there for correctness,
not speed - the norm's closed-form gradient, exact to every order - is in every policy.
The policy is a value handed to the layers as a Keras call-context argument (`kernels=`),
never module state: each traced function gets the forms it was traced with.
"""

from __future__ import annotations

import dataclasses

KERNEL_CHOICES = ("auto", "stock", "cpu")
# Where a step runs: "cpu", an accelerator ("gpu", "tpu"), or "any" (a device-neutral export).
DEVICES = ("cpu", "gpu", "tpu", "any")

# Winograd's F(2x2, 3x3) from this many input x output channels (256 x 256): below, its transforms
# cost more than the products save (measured in docs/performance.md).
WINOGRAD_MIN_CHANNEL_PRODUCT = 2**16
# Kernel gradients tap by tap from this many FLOPs per tap (rows x C_in x C_out x 2): below, one
# TensorFlow op beats nine small products and their copies.
MIN_TAP_FLOPS = 2**24


@dataclasses.dataclass(frozen=True)
class KernelPolicy:
    """Which forms the convolutions and norms take. Immutable and hashable: one trace per policy.

    Attributes:
        name: "stock" or "cpu".
        dilated_gradients_in_one_op: stock: dilated convolutions' gradients are TensorFlow's
            one-op `Conv2DBackpropInput`/`Filter` (accelerators, XLA); False: `tf.nn.convolution`'s
            space-to-batch, which every device's kernels run.
        winograd_min_channel_product: cpu: Winograd's F(2x2, 3x3) for 3x3 layers of at least
            this many channel pairs; None: never.
        min_tap_flops: cpu: kernel gradients tap by tap from this many FLOPs per tap; None: never.
        terms_in_turn: cpu: a layer's input and kernel gradients one after the other (less memory
            with oneDNN's kernels; with Eigen's, side by side is faster).
        fused_norm: cpu: TensorFlow's fused batch-norm kernels, per image, for the norms' values and
            first-order gradients (first-order steps only).
        lite_forms: TFLite files (`LITE`): the norm's variance as a product of the centred input
            with itself and depth-to-space as a reshape and a transpose, the forms that TFLite's
            int16-activation (16x8) kernels have: its SQUARED_DIFFERENCE and DEPTH_TO_SPACE take
            no int16. Forward only: these forms' gradients are autodiff's.
    """

    name: str = "stock"
    dilated_gradients_in_one_op: bool = False
    winograd_min_channel_product: int | None = None
    min_tap_flops: int | None = None
    terms_in_turn: bool = False
    fused_norm: bool = False
    lite_forms: bool = False

    @property
    def cpu_forms(self) -> bool:
        return self.name == "cpu"


STOCK = KernelPolicy()
LITE = KernelPolicy(lite_forms=True)


def resolve(kernels: str, device: str) -> str:
    """"stock" or "cpu" for the `--kernels` choice `kernels` on `device`."""
    if kernels not in KERNEL_CHOICES:
        raise ValueError(f"kernels must be one of {KERNEL_CHOICES}, got {kernels!r}")
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
    if kernels != "auto":
        return kernels
    return "cpu" if device == "cpu" else "stock"


def choose(kernels: str, device: str, precision: str = "float32", second_order: bool = False,
           memory_saving: bool = False, onednn: bool = False, **tuning: int) -> KernelPolicy:
    """The policy for a step that runs on `device` in `precision`.

    Args:
        kernels: "auto", "stock" or "cpu" (the `--kernels` flag).
        device: "cpu", "gpu", "tpu", or "any" for a device-neutral export.
        precision: "float32", "bfloat16" or "float16".
        second_order: whether the step differentiates gradients (MAML, Meta-SGD).
        memory_saving: the memory mode (`MetaConfig.memory_saving`).
        onednn: whether TensorFlow runs oneDNN's CPU kernels (`hardware.onednn_kernels()`).
        **tuning: thresholds (`winograd_min_channel_product`, `min_tap_flops`) that replace the chosen
            ones where the chosen policy uses the form (for tools and tests: forms at small sizes).
    """
    if resolve(kernels, device) == "stock":
        policy = KernelPolicy("stock", dilated_gradients_in_one_op=device in ("gpu", "tpu"))
    else:
        # Winograd's transforms are 4x an activation's size: the memory mode and bfloat16 second-order
        # steps (whose working set they put level with the PyTorch peer's) convolve directly.
        direct = memory_saving or (second_order and precision == "bfloat16")
        policy = KernelPolicy("cpu", winograd_min_channel_product=None if direct else WINOGRAD_MIN_CHANNEL_PRODUCT,
                              min_tap_flops=MIN_TAP_FLOPS, terms_in_turn=onednn, fused_norm=not second_order)
    unknown = set(tuning) - {"winograd_min_channel_product", "min_tap_flops"}
    if unknown:
        raise ValueError(f"only thresholds can be tuned, not {sorted(unknown)}")
    return dataclasses.replace(policy, **{k: v for k, v in tuning.items() if getattr(policy, k) is not None})
