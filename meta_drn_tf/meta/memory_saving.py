"""Memory-saving gradients (`MetaConfig.memory_saving`): a query loss's gradient one query at a time.

    grads, loss = query_gradient(adapter, weights, query_images, query_masks)

The query loss is the mean over queries of equal size, so its gradient is the mean of the
per-query gradients. A `tf.while_loop` computes them in turn, holding one query's activations at a
time: peak memory no longer grows with the number of queries. MAML's memory mode seeds one backward
pass through the inner loop with this gradient (`maml.MAML`); first-order MAML uses it as is.
"""

from __future__ import annotations

from collections.abc import Sequence

import tensorflow as tf

from meta_drn_tf.meta.algorithm import AdapterInterface


def query_gradient(adapter: AdapterInterface, weights: Sequence[tf.Tensor], images: tf.Tensor, masks: tf.Tensor,
                   second_order: bool = False, unscale: bool = True) -> tuple[list[tf.Tensor], tf.Tensor]:
    """d(query loss)/d weights and the loss, one query at a time.

    Args:
        adapter: whose loss and gradients (float16's loss scale) are used.
        weights: all of the model's weights (tensors), as `adapter.loss` takes them.
        images: the query images `(q, H, W, 3)`.
        masks: their masks `(q, H, W, 1)`.
        second_order: the kernel policy of a second-order step.
        unscale: False keeps float16's loss scale in the gradients (for a backward pass seeded with
            them, which would otherwise underflow).
    """
    queries = tf.shape(images)[0]

    def one_query(i, grads, loss):
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(weights)
            query_loss = adapter.loss(weights, images[i : i + 1], masks[i : i + 1], second_order)
        grads = [a + g for a, g in zip(grads, adapter.gradients(tape, query_loss, weights, unscale))]
        return i + 1, grads, loss + query_loss

    _, grads, loss = tf.while_loop(
        lambda i, *_: i < queries, one_query,
        (tf.constant(0), [tf.zeros_like(w) for w in weights], tf.constant(0.0, weights[0].dtype)),
        parallel_iterations=1,
    )
    count = tf.cast(queries, weights[0].dtype)
    return [g / tf.cast(count, g.dtype) for g in grads], loss / count
