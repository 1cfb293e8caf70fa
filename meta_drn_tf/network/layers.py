"""Keras 3 layers of the Meta-DRN network (paper §IV, Fig. 1).

Every layer is a small registered-serializable class with `get_config`, so a
`.keras` file of the model loads with `safe_mode=True` (no `Lambda`).

The layers take a `kernels` call argument (a `kernels.KernelPolicy`: which
forms the convolutions and norms take; default: TensorFlow's own ops). It is a
Keras call-context argument, like `training`: given to the model
(`model(x, kernels=policy)`, `model.stateless_call(..., kernels=policy)`), it
reaches every layer inside.
"""

from __future__ import annotations

import keras
from keras import layers, ops

from meta_drn_tf.network.conv import same_conv2d
from meta_drn_tf.network.kernels import STOCK
from meta_drn_tf.network.norm import instance_norm

PACKAGE = "meta_drn_tf"
KERNELS_ARG = "kernels"  # the call-context argument that carries the kernel policy
LEAKY_SLOPE = 0.1


@keras.saving.register_keras_serializable(package=PACKAGE)
class InstanceNorm(layers.Layer):
    """Instance normalization: BatchNorm with the statistics of each image on its own.

    The paper follows each convolution with BatchNorm. In meta-learning the
    batch is a handful of support or query images, and ordinary BatchNorm
    makes one query's mask depend on which other images share its batch (and
    its moving averages cannot follow fast weights). Here the mean and
    variance are taken over the spatial axes of each image and channel - the
    statistics BatchNorm would compute for a batch of one image - and the
    layer behaves identically in training, adaptation and serving. Learnable
    per-channel `gamma` and `beta` are meta-learned like any other weight.

    Args:
        epsilon: added to the variance for numerical stability.

    Input shape: `(batch, height, width, channels)`.
    Output shape: same as input.
    """

    def __init__(self, epsilon: float = 1e-3, **kwargs):
        super().__init__(**kwargs)
        self.epsilon = epsilon
        self._register_call_context_args(KERNELS_ARG)

    def build(self, input_shape):
        channels = input_shape[-1]
        self.gamma = self.add_weight(shape=(channels,), initializer="ones", name="gamma")
        self.beta = self.add_weight(shape=(channels,), initializer="zeros", name="beta")

    def call(self, inputs, leaky_slope: float | None = None, kernels=None):
        """Normalizes `inputs`; `leaky_slope` also applies LeakyReLU (one op, one gradient)."""
        # Statistics in float32 even under a bfloat16/float16 policy; inputs and outputs in the
        # compute dtype (instance_norm casts inside, and keeps the narrow ones for the gradient).
        stats_dtype = "float64" if self.compute_dtype == "float64" else "float32"
        return instance_norm(ops.cast(inputs, self.compute_dtype), ops.cast(self.gamma, stats_dtype),
                             ops.cast(self.beta, stats_dtype), self.epsilon, leaky_slope, kernels or STOCK)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "epsilon": self.epsilon}


@keras.saving.register_keras_serializable(package=PACKAGE, name="PerImageBatchNorm")
class PerImageBatchNorm(InstanceNorm):
    """The name `InstanceNorm` had in version 0.1.0, kept so that its .keras files load."""


def _normalization(kind: str, name: str, dtype) -> layers.Layer:
    if kind in ("instance", "image"):  # "image": its name in version 0.1.0
        return InstanceNorm(name=name, dtype=dtype)
    if kind == "none":
        return layers.Identity(name=name, dtype=dtype)
    raise ValueError(f"normalization must be 'instance' or 'none', got {kind!r}")


@keras.saving.register_keras_serializable(package=PACKAGE)
class ConvNormAct(layers.Layer):
    """3x3 convolution (no bias), normalization, LeakyReLU.

    A strided 1x1 convolution is computed as spatial subsampling followed by a
    stride-1 1x1 convolution: the same function for "same" padding (a 1x1
    window needs no padding, so output pixel (i, j) reads input pixel
    (s*i, s*j)), the same weights, and no strided 1x1 convolution in the graph.
    TensorFlow 2.21's oneDNN corrupts the heap in the filter gradient of a
    strided 1x1 convolution with fewer than 16 input channels on AVX512-BF16
    CPUs; this way that op is never emitted, at any width.

    Args:
        filters: output channels.
        strides: convolution stride.
        dilation_rate: convolution dilation.
        use_activation: apply LeakyReLU after the normalization.
        kernel_size: convolution kernel size.
        normalization: "instance" (InstanceNorm) or "none".

    Input shape: `(batch, H, W, C)`. Output shape: `(batch, H/strides, W/strides, filters)`.
    """

    def __init__(
        self,
        filters: int,
        strides: int = 1,
        dilation_rate: int = 1,
        use_activation: bool = True,
        kernel_size: int = 3,
        normalization: str = "instance",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.filters = filters
        self.strides = strides
        self.dilation_rate = dilation_rate
        self.use_activation = use_activation
        self.kernel_size = kernel_size
        self.normalization = normalization
        # See the class docstring: strided 1x1 convs subsample first.
        self.subsample = strides if kernel_size == 1 and strides > 1 else 1
        self.conv = layers.Conv2D(
            filters,
            kernel_size,
            strides=strides // self.subsample,
            dilation_rate=dilation_rate,
            padding="same",
            use_bias=False,
            kernel_initializer="he_normal",
            dtype=self.dtype_policy,
            name="conv",
        )
        self.norm = _normalization(normalization, "norm", self.dtype_policy)
        self.act = layers.LeakyReLU(LEAKY_SLOPE, dtype=self.dtype_policy, name="act") if use_activation else None
        self._register_call_context_args(KERNELS_ARG)

    def build(self, input_shape):
        self.conv.build(input_shape)
        self.norm.build(self.compute_output_shape(input_shape))

    def call(self, inputs, kernels=None):
        if self.subsample > 1:
            inputs = inputs[:, :: self.subsample, :: self.subsample, :]
        if self.conv.strides == (1, 1):
            # The conv layer's own kernel, through a convolution with a faster input gradient.
            x = same_conv2d(inputs, ops.cast(self.conv.kernel, inputs.dtype), self.dilation_rate, kernels or STOCK)
        else:
            x = self.conv(inputs)
        if isinstance(self.norm, InstanceNorm):
            return self.norm(x, leaky_slope=LEAKY_SLOPE if self.act is not None else None, kernels=kernels)
        x = self.norm(x)
        return self.act(x) if self.act is not None else x

    def compute_output_shape(self, input_shape):
        b, h, w, _ = input_shape
        ceil = lambda d: None if d is None else -(-d // self.subsample)  # noqa: E731
        return self.conv.compute_output_shape((b, ceil(h), ceil(w), input_shape[-1]))

    def get_config(self):
        return {
            **super().get_config(),
            "filters": self.filters,
            "strides": self.strides,
            "dilation_rate": self.dilation_rate,
            "use_activation": self.use_activation,
            "kernel_size": self.kernel_size,
            "normalization": self.normalization,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if "activation" in config:  # its name in version 0.1.0
            config["use_activation"] = config.pop("activation")
        return cls(**config)


@keras.saving.register_keras_serializable(package=PACKAGE)
class ResBlock(layers.Layer):
    """Residual block: two 3x3 convolutions plus a shortcut.

    The first convolution carries the stride and the first dilation, the second
    the second dilation. A 1x1 projection (with normalization) replaces the
    identity shortcut where the stride or the channel count changes.

    Args:
        filters: output channels of both convolutions.
        strides: stride of the first convolution.
        dilations: (first, second) dilation rates.
        normalization: "instance" or "none".

    Input shape: `(batch, H, W, C)`. Output shape: `(batch, H/strides, W/strides, filters)`.
    """

    def __init__(
        self,
        filters: int,
        strides: int = 1,
        dilations: tuple[int, int] = (1, 1),
        normalization: str = "instance",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.filters = filters
        self.strides = strides
        self.dilations = tuple(dilations)
        self.normalization = normalization
        policy = self.dtype_policy
        self.conv1 = ConvNormAct(filters, strides, self.dilations[0],
                                 normalization=normalization, dtype=policy, name="conv1")
        self.conv2 = ConvNormAct(filters, 1, self.dilations[1], use_activation=False,
                                 normalization=normalization, dtype=policy, name="conv2")
        self.shortcut = None
        self.act = layers.LeakyReLU(LEAKY_SLOPE, dtype=policy, name="act")
        self._register_call_context_args(KERNELS_ARG)  # handed on to the convolutions inside

    def build(self, input_shape):
        if self.strides != 1 or input_shape[-1] != self.filters:
            self.shortcut = ConvNormAct(
                self.filters, self.strides, use_activation=False, kernel_size=1,
                normalization=self.normalization, dtype=self.dtype_policy, name="shortcut",
            )
            self.shortcut.build(input_shape)
        self.conv1.build(input_shape)
        self.conv2.build(self.conv1.compute_output_shape(input_shape))

    def call(self, inputs):
        residual = self.shortcut(inputs) if self.shortcut is not None else inputs
        return self.act(self.conv2(self.conv1(inputs)) + residual)

    def compute_output_shape(self, input_shape):
        return self.conv1.compute_output_shape(input_shape)

    def get_config(self):
        return {
            **super().get_config(),
            "filters": self.filters,
            "strides": self.strides,
            "dilations": list(self.dilations),
            "normalization": self.normalization,
        }


def _depth_to_space_by_transpose(x, scale: int):
    """`ops.depth_to_space` (channels last) as a reshape, a transpose and a reshape: ops that TFLite
    runs with int16 activations, which its DEPTH_TO_SPACE does not. `(n, h, w, scale²·c)` of static
    h, w, c -> `(n, h·scale, w·scale, c)`."""
    _, h, w, channels = x.shape
    c = channels // (scale * scale)
    blocks = ops.transpose(ops.reshape(x, (-1, h, w, scale, scale, c)), (0, 1, 3, 2, 4, 5))
    return ops.reshape(blocks, (-1, h * scale, w * scale, c))


@keras.saving.register_keras_serializable(package=PACKAGE)
class SubPixelUpsample(layers.Layer):
    """Sub-pixel convolution: 3x3 conv to `classes * scale**2` channels, then
    depth-to-space by `scale` (Shi et al. 2016).

    Args:
        classes: output channels after upsampling (1: foreground logit).
        scale: upsampling factor r.

    Input shape: `(batch, h, w, C)`. Output shape: `(batch, h*scale, w*scale, classes)`.
    """

    def __init__(self, classes: int = 1, scale: int = 4, **kwargs):
        super().__init__(**kwargs)
        self.classes = classes
        self.scale = scale
        self.conv = layers.Conv2D(
            classes * scale * scale, 3, padding="same", dtype=self.dtype_policy, name="conv",
        )
        self._register_call_context_args(KERNELS_ARG)

    def build(self, input_shape):
        self.conv.build(input_shape)

    def call(self, inputs, kernels=None):
        # The conv layer's own weights, through the convolution in the policy's forms (see ConvNormAct).
        kernel = ops.cast(self.conv.kernel, inputs.dtype)
        x = same_conv2d(inputs, kernel, 1, kernels or STOCK) + ops.cast(self.conv.bias, inputs.dtype)
        if (kernels or STOCK).lite_forms:
            return _depth_to_space_by_transpose(x, self.scale)
        return ops.depth_to_space(x, self.scale, data_format="channels_last")

    def compute_output_shape(self, input_shape):
        b, h, w, _ = input_shape
        mul = lambda d: None if d is None else d * self.scale  # noqa: E731
        return (b, mul(h), mul(w), self.classes)

    def get_config(self):
        return {**super().get_config(), "classes": self.classes, "scale": self.scale}
