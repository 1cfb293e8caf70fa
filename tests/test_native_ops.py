"""Ops that crash TensorFlow natively on some CPUs are never emitted.

TensorFlow 2.21's oneDNN corrupts the heap in `Conv2DBackpropFilter` of a 1x1
convolution with stride > 1 and fewer than 16 input channels on AVX512-BF16
CPUs. The network computes its strided 1x1 projection as subsampling plus a
stride-1 convolution, so no meta-step graph contains such a convolution.
"""

import sys
import textwrap

import pytest
import warm

from meta_drn_tf.bench.graphs import meta_step_graph, operations
from meta_drn_tf.meta import MetaConfig, MetaLearner
from meta_drn_tf.network.config import NetworkConfig
from meta_drn_tf.network.model import build_meta_drn

CONV_OPS = ("Conv2D", "Conv2DBackpropFilter", "Conv2DBackpropInput")


def _kernel_shape(op):
    if op.type == "Conv2DBackpropFilter":
        return op.outputs[0].shape.as_list()  # the filter's gradient has the filter's shape
    return op.inputs[1].shape.as_list()


def _convolutions(graph):
    """(op type, kernel shape, strides) of every convolution in `graph` and the functions it calls."""
    return [(op.type, _kernel_shape(op), op.get_attr("strides")) for op in operations(graph) if op.type in CONV_OPS]


@pytest.mark.slow
@pytest.mark.parametrize("width", [0.125, 1.0])
# Meta-SGD's graph is MAML's plus rates; Reptile's inner loop is first-order MAML's without the query
# step (its convolutions are a subset of FOMAML's at both widths, and tracing it took the longest).
@pytest.mark.parametrize("algo", ["maml", "fomaml"])
def test_meta_step_graph_has_no_strided_1x1_convolution(algo, width):
    learner = MetaLearner(build_meta_drn(NetworkConfig(16, width)), MetaConfig(algo))
    convs = _convolutions(meta_step_graph(learner, meta_batch=1, shots=1, queries=1, size=16))
    assert {t for t, _, _ in convs} == set(CONV_OPS)
    # The walk sees strides: the head's and resblock1's 3x3 stride-2 convs are there.
    assert any(k[:2] == [3, 3] and s[1] == 2 for _, k, s in convs)
    # ...and 1x1 convs (the projection shortcuts), all at stride 1.
    ones = [(t, s) for t, k, s in convs if k and k[:2] == [1, 1]]
    assert ones and all(s == [1, 1, 1, 1] for _, s in ones), ones


@pytest.mark.slow
def test_meta_step_and_evaluation_at_a_narrow_width_do_not_crash_natively(tmp_path):
    # Width 0.125: resblock1's projection has 8 input channels, the case that
    # crashed. A native crash would kill pytest, so it runs in a process of its own.
    script = textwrap.dedent("""
        import keras, numpy as np
        from meta_drn_tf.data.synthetic import synthetic_bank
        from meta_drn_tf.data.episodes import meta_batches, training_tasks
        from meta_drn_tf.training.evaluation import evaluate_bank
        from meta_drn_tf.meta import MetaConfig, MetaLearner
        from meta_drn_tf.network.config import NetworkConfig
        from meta_drn_tf.network.model import build_meta_drn
        keras.utils.set_random_seed(0)
        bank = synthetic_bank(num_classes=3, images_per_class=4, image_size=32, seed=1)
        learner = MetaLearner(build_meta_drn(NetworkConfig(32, 0.125)), MetaConfig("maml", inner_lr=0.05))
        batch = next(iter(meta_batches(training_tasks(bank, 1, 2, seed=0), 2)))
        for _ in range(2):
            assert np.isfinite(float(learner.meta_train_step(batch)["loss"]))
        summary = evaluate_bank(learner, bank, limit=3)[0].summary()
        assert 0 <= summary["soft_iou"] <= 1
        print("ok")
    """)
    path = tmp_path / "narrow.py"
    path.write_text(script)
    out = warm.run([sys.executable, str(path)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), (
        f"a MAML meta-step + evaluation at width 0.125 ended with exit code {out.returncode} "
        f"(negative: killed by a signal, i.e. a native crash):\n{out.stderr[-3000:]}")
