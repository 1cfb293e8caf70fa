"""The step's building blocks, TensorFlow's gradients against this project's.

    python tools/benchmark_conv.py [--repeats 7]

For the full-width network's convolution shapes at 224x224 (one image): the
kernel gradient as TensorFlow computes it (`Conv2DBackpropFilter`, on the
space-to-batch layout when dilated) and as `meta_drn_tf.conv` does (one matrix
product per tap), and the input gradient (`Conv2DBackpropInput` against a
forward convolution with the flipped kernel). Then instance normalization +
LeakyReLU at 56x56x512, first- and second-order gradients, op-by-op autodiff
against `meta_drn_tf.norm`'s closed form. Medians in milliseconds; the weights
are variables read through an op, as in a meta-step (no cached weight layout).
"""

from __future__ import annotations

from absl import flags
from timing import median_seconds  # tools/timing.py

from meta_drn_tf import cli
from meta_drn_tf.hardware import describe

flags.DEFINE_integer("repeats", 7, "Timed calls per row (median).")
FLAGS = flags.FLAGS

# (input channels, output channels, size, dilation) of the 3x3 stride-1 convolutions at 224x224.
SHAPES = [(16, 64, 112, 1), (128, 128, 56, 1), (128, 256, 56, 1), (256, 256, 56, 2), (256, 512, 56, 2),
          (512, 512, 56, 4), (512, 512, 56, 2), (512, 512, 56, 1), (512, 16, 56, 1)]


def milliseconds(fn) -> float:
    return 1000 * median_seconds(lambda: fn().numpy(), FLAGS.repeats)


def main(argv):
    del argv
    import tensorflow as tf

    from meta_drn_tf.network.conv import same_conv2d
    from meta_drn_tf.network.norm import instance_norm

    print(describe())

    def gradient_fn(conv, x, kernel, dy, wrt):
        @tf.function
        def fn():
            k = kernel * 1.0
            with tf.GradientTape() as tape:
                tape.watch([x, k])
                y = conv(x, k)
            return tape.gradient(y, k if wrt == "kernel" else x, output_gradients=dy)

        return fn

    def tensorflow_conv(d):
        return lambda x, k: tf.nn.convolution(x, k, padding="SAME", dilations=d)

    print("| conv (in -> out, size, dilation) | kernel gradient: TF / taps (ms) "
          "| input gradient: TF / forward conv (ms) |")
    print("|---|---|---|")
    for c_in, c_out, size, d in SHAPES:
        x = tf.random.normal([1, size, size, c_in])
        dy = tf.random.normal([1, size, size, c_out])
        kernel = tf.Variable(tf.random.normal([3, 3, c_in, c_out]) * 0.05)
        ours = lambda x, k, d=d: same_conv2d(x, k, d)  # noqa: E731
        row = [milliseconds(gradient_fn(conv, x, kernel, dy, wrt)) for wrt in ("kernel", "input")
               for conv in (tensorflow_conv(d), ours)]
        print(f"| {c_in} -> {c_out}, {size}², d {d} | {row[0]:.1f} / {row[1]:.1f} | {row[2]:.1f} / {row[3]:.1f} |",
              flush=True)

    x = tf.random.normal([1, 56, 56, 512])
    v = tf.random.normal([1, 56, 56, 512])
    gamma, beta = tf.Variable(tf.ones([512])), tf.Variable(tf.zeros([512]))

    def composite(x, g, b):
        mean = tf.reduce_mean(x, [1, 2], keepdims=True)
        variance = tf.reduce_mean(tf.square(x - mean), [1, 2], keepdims=True)
        return tf.nn.leaky_relu((x - mean) * tf.math.rsqrt(variance + 1e-3) * g + b, 0.1)

    def closed_form(x, g, b):
        return instance_norm(x, g, b, 1e-3, 0.1)

    def norm_fn(norm, order):
        @tf.function
        def fn():
            inputs = [x, gamma * 1.0, beta * 1.0]
            with tf.GradientTape() as outer:
                outer.watch(inputs)
                with tf.GradientTape() as inner:
                    inner.watch(inputs)
                    loss = tf.reduce_sum(norm(*inputs) * v)
                grads = inner.gradient(loss, inputs)
                objective = tf.reduce_sum(grads[0] * v) + tf.reduce_sum(grads[1])
            return grads[0] if order == 1 else outer.gradient(objective, inputs)[0]

        return fn

    print("\n| instance norm + LeakyReLU, 56²x512 | op-by-op autodiff (ms) | closed form (ms) |")
    print("|---|---|---|")
    for order in (1, 2):
        times = [milliseconds(norm_fn(norm, order)) for norm in (composite, closed_form)]
        print(f"| forward + {'first' if order == 1 else 'second'}-order gradient | {times[0]:.1f} | {times[1]:.1f} |")


if __name__ == "__main__":
    cli.run(main)
