"""Reading traced TensorFlow graphs, including the functions they call (loop bodies, branches)."""

from __future__ import annotations

from collections.abc import Iterator

import tensorflow as tf


def operations(graph: tf.Graph, _seen: set | None = None) -> Iterator[tf.Operation]:
    """Every operation of `graph` and of the functions its operations call, each function once."""
    seen = set() if _seen is None else _seen
    for op in graph.get_operations():
        yield op
        for attr in op.node_def.attr.values():
            names = [attr.func.name] if attr.HasField("func") else [f.name for f in attr.list.func]
            for name in names:
                if name and name not in seen:
                    seen.add(name)
                    yield from operations(graph._get_function(name).graph, seen)


def meta_step_graph(learner, meta_batch: int, shots: int, queries: int, size: int, epoch: int = 0) -> tf.Graph:
    """The graph of `learner.meta_train_step` at `epoch` for (B, k|q, size, size, C) float32 batches,
    traced without running."""
    spec = {"support_images": tf.TensorSpec([meta_batch, shots, size, size, 3], tf.float32),
            "support_masks": tf.TensorSpec([meta_batch, shots, size, size, 1], tf.float32),
            "query_images": tf.TensorSpec([meta_batch, queries, size, size, 3], tf.float32),
            "query_masks": tf.TensorSpec([meta_batch, queries, size, size, 1], tf.float32)}
    return learner.concrete_train_step(spec, epoch).graph
