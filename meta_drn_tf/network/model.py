"""The Meta-DRN network: `build_meta_drn()`, its layer groups, parameter counts and receptive field.

`python -m meta_drn_tf.summary` prints them (`meta_drn_tf/model.py`).
"""

from __future__ import annotations

import keras
from keras import layers

from meta_drn_tf.network.config import NetworkConfig
from meta_drn_tf.network.layers import KERNELS_ARG, ConvNormAct, ResBlock, SubPixelUpsample

PAPER_PARAMS = 9.56e6
FSS1000_BASELINE_PARAMS = 32.83e6
# Layer groups in the order of Fig. 1, each with the filter counts of the paper.
GROUPS = ("head", "resblock1", "resblock2", "resblock3", "degrid", "upsample")


def scaled(filters: int, width: float) -> int:
    """Filter count of the paper scaled by `width` (at least 1)."""
    return max(1, int(round(filters * width)))


def build_meta_drn(
    config: NetworkConfig = NetworkConfig(),
    dtype: str | None = None,
    *,
    any_size: bool = False,
    normalization: str = "instance",
    name: str = "meta_drn",
) -> keras.Model:
    """Builds the Meta-DRN network of the paper (§IV).

        model = build_meta_drn(NetworkConfig(image_size=224, width=1.0))   # the paper's, ~9.6M parameters

    Args:
        config: the `network` section of a run: its input size (a multiple of 4: two stride-2
            stages, then a x4 sub-pixel upsampling back to the input size) and width (multiplies
            every filter count; 1.0 is the paper's network, small widths make CPU runs fast).
        dtype: a Keras dtype policy name ("float32", "mixed_bfloat16", "mixed_float16"; a
            `MetaConfig`'s `dtype_policy`); None uses the global policy.
        any_size: inputs of any size (multiples of 4) instead of `config.image_size`.
        normalization: "instance" (BatchNorm with per-image statistics, see `InstanceNorm`) or
            "none" (for receptive-field analysis).
        name: model name.

    Returns:
        A functional `keras.Model` mapping float images `(batch, H, W, 3)` in
        [0, 1] to per-pixel foreground logits `(batch, H, W, 1)` in float32.
        The foreground probability is `sigmoid(logit)`.
    """
    h = w = None if any_size else config.image_size
    policy = keras.dtype_policies.get(dtype) if dtype else keras.config.dtype_policy()
    kw = dict(normalization=normalization, dtype=policy)
    f = lambda n: scaled(n, config.width)  # noqa: E731

    inputs = keras.Input((h, w, 3), name="images")
    # Head: two 3x3 convs, the first with stride 2.
    x = ConvNormAct(f(16), strides=2, name="head_conv1", **kw)(inputs)
    x = ConvNormAct(f(64), name="head_conv2", **kw)(x)
    # Residual blocks: dilations replace further downsampling.
    x = ResBlock(f(128), strides=2, dilations=(1, 1), name="resblock1", **kw)(x)
    x = ResBlock(f(256), dilations=(1, 2), name="resblock2", **kw)(x)
    x = ResBlock(f(512), dilations=(2, 4), name="resblock3", **kw)(x)
    # Degridding: successively smaller dilations remove gridding artifacts.
    x = ConvNormAct(f(512), dilation_rate=2, name="degrid_conv1", **kw)(x)
    x = ConvNormAct(f(512), dilation_rate=1, name="degrid_conv2", **kw)(x)
    x = SubPixelUpsample(classes=1, scale=4, dtype=policy, name="upsample")(x)
    # Logits leave the network in float32 (float64 for float64 models) under any policy.
    out_dtype = "float64" if policy.variable_dtype == "float64" else "float32"
    logits = layers.Activation("linear", dtype=out_dtype, name="logits")(x)
    model = keras.Model(inputs, logits, name=name)
    # The model hands `kernels=` (the kernel policy) down to its layers, as it does `training=`;
    # declared on the model too, so that Keras versions that propagate context arguments only
    # from layers that declare them keep doing so.
    model._register_call_context_args(KERNELS_ARG)
    return model


def group_of(layer_name: str) -> str:
    """The Fig. 1 layer group a top-level layer belongs to."""
    for group in GROUPS:
        if layer_name.startswith(group):
            return group
    return "other"


def parameter_breakdown(model: keras.Model) -> dict[str, int]:
    """Parameter count per layer group (Fig. 1) plus "total"."""
    counts = {g: 0 for g in GROUPS}
    for layer in model.layers:
        n = sum(int(v.numpy().size) for v in layer.weights)
        if n:
            counts[group_of(layer.name)] = counts.get(group_of(layer.name), 0) + n
    counts["total"] = model.count_params()
    return counts


def receptive_field(model: keras.Model) -> int:
    """Receptive field (pixels, one side) of an output pixel, from the conv configs.

    Walks the convolutions on the main path in order; the sub-pixel layer's
    3x3 conv works at the coarse resolution, so it counts like the others.
    """
    rf, jump = 1, 1
    convs = []
    for layer in model.layers:
        if isinstance(layer, ResBlock):
            convs += [layer.conv1.conv, layer.conv2.conv]
        elif isinstance(layer, ConvNormAct):
            convs.append(layer.conv)
        elif isinstance(layer, SubPixelUpsample):
            convs.append(layer.conv)
    for conv in convs:
        k, d, s = conv.kernel_size[0], conv.dilation_rate[0], conv.strides[0]
        rf += (k - 1) * d * jump
        jump *= s
    return rf
