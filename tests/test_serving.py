"""TF Serving SavedModels: fresh-process loading, signatures, parity, input checks, REST body."""

import json
import os
import shutil
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from meta_drn_tf.meta import MetaConfig, MetaLearner
from meta_drn_tf.network.config import NetworkConfig
from meta_drn_tf.network.model import build_meta_drn
from meta_drn_tf.serving import saved_model as serving

SIZE, WIDTH = 32, 0.0625


def _learner(algo="maml", precision="float32"):
    keras.utils.set_random_seed(4)
    config = MetaConfig(algo, inner_lr=0.5, precision=precision)
    return MetaLearner(build_meta_drn(NetworkConfig(SIZE, WIDTH), config.dtype_policy), config)


def _request(n_queries=3, size=SIZE, seed=0):
    rng = np.random.default_rng(seed)
    support = rng.integers(0, 256, (1, size, size, 3), dtype=np.uint8)
    mask = np.zeros((1, size, size), np.float32)
    mask[:, size // 4 : size // 2, size // 4 : 3 * size // 4] = 1
    queries = rng.integers(0, 256, (n_queries, size, size, 3), dtype=np.uint8)
    return support, mask, queries


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    learner = _learner()
    base = str(tmp_path_factory.mktemp("export") / "meta_drn")
    return learner, serving.export(learner, base, NetworkConfig(SIZE, WIDTH))


def _call(path_or_model, support, mask, queries, threshold=()):
    model = tf.saved_model.load(path_or_model) if isinstance(path_or_model, str) else path_or_model
    out = model.signatures["serving_default"](
        support_images=tf.constant(support), support_masks=tf.constant(mask),
        query_images=tf.constant(queries), threshold=tf.constant(threshold, tf.float32, shape=[len(threshold)]))
    return {k: v.numpy() for k, v in out.items()}


@pytest.mark.slow
def test_versions_are_integers_and_increase(exported, tmp_path):
    learner, path = exported
    assert os.path.basename(path) == "1"
    base = str(tmp_path / "m")
    shutil.copytree(path, os.path.join(base, "1"))  # the fixture's first version, in a folder of its own
    assert serving.export(learner, base, NetworkConfig(SIZE, WIDTH)).endswith(os.path.join("m", "2"))
    assert sorted(os.listdir(base)) == ["1", "2"]


def test_outputs_equal_library_adapt_and_predict(exported):
    learner, path = exported
    support, mask, queries = _request()
    out = _call(path, support, mask, queries)
    fast = learner.adapt(support / 255.0, mask[..., None])
    expected = learner.predict(fast, (queries / 255.0).astype(np.float32)).numpy()[..., 0]
    np.testing.assert_allclose(out["probabilities"], expected, atol=1e-5)
    np.testing.assert_array_equal(out["masks"], (expected > 0.5).astype(np.uint8))
    # The adaptation really happens in the graph: the initial weights predict otherwise.
    initial = learner.predict(learner.initial_weights(), (queries / 255.0).astype(np.float32)).numpy()[..., 0]
    assert np.abs(initial - expected).max() > 1e-3


@pytest.mark.slow
def test_fresh_process_without_the_library_loads_and_runs(exported, tmp_path):
    _, path = exported
    support, mask, queries = _request()
    np.savez(tmp_path / "in.npz", support=support, mask=mask, queries=queries)
    script = f"""
import sys, numpy as np, tensorflow as tf
m = tf.saved_model.load({path!r})
d = np.load({str(tmp_path / 'in.npz')!r})
out = m.signatures["serving_default"](support_images=tf.constant(d["support"]), support_masks=tf.constant(d["mask"]),
    query_images=tf.constant(d["queries"]), threshold=tf.constant([0.35]))
np.save({str(tmp_path / 'out.npy')!r}, out["probabilities"].numpy())
assert not any(name.startswith("meta_drn_tf") for name in sys.modules), "imported the library"
"""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": ""}
    subprocess.run([sys.executable, "-c", script], check=True, env=env, cwd=str(tmp_path), timeout=120)
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), _call(path, support, mask, queries)["probabilities"],
                               atol=1e-6)


def test_the_signatures_name_their_inputs_and_outputs(exported):
    """What a TF Serving client sees: the signature names and their named inputs and outputs."""
    _, path = exported
    signatures = tf.saved_model.load(path).signatures
    assert set(signatures) >= {"serving_default", "adapt_and_segment_float", "segment_initial"}
    default = signatures["serving_default"]
    assert set(default.structured_input_signature[1]) == {"support_images", "support_masks", "query_images",
                                                          "threshold"}
    assert set(default.structured_outputs) == {"probabilities", "masks"}


def test_a_query_mask_does_not_depend_on_the_other_queries(exported):
    _, path = exported
    model = tf.saved_model.load(path)
    support, mask, queries = _request(8)
    together = _call(model, support, mask, queries)["probabilities"]
    alone = np.concatenate([_call(model, support, mask, queries[i : i + 1])["probabilities"] for i in range(8)])
    np.testing.assert_allclose(together, alone, atol=1e-6)


def test_threshold_input_and_its_default(exported):
    _, path = exported
    model = tf.saved_model.load(path)
    support, mask, queries = _request()
    default, low = _call(model, support, mask, queries), _call(model, support, mask, queries, (0.2,))
    np.testing.assert_array_equal(default["masks"], default["probabilities"] > 0.5)
    np.testing.assert_array_equal(low["masks"], low["probabilities"] > 0.2)


def test_other_sizes_are_resized_in_graph_and_masks_come_back_at_input_size(exported):
    _, path = exported
    model = tf.saved_model.load(path)
    support, mask, _ = _request(size=48)
    queries = np.random.default_rng(1).integers(0, 256, (2, 40, 56, 3), dtype=np.uint8)
    out = _call(model, support, mask, queries)
    assert out["probabilities"].shape == (2, 40, 56) and out["masks"].shape == (2, 40, 56)


@pytest.mark.parametrize("change,message", [
    (lambda s, m, q: (s[:0], m[:0], q), "support set is empty"),
    (lambda s, m, q: (s, m[:, :20], q), "support_masks must be"),
    (lambda s, m, q: (s, m * 255, q), r"lie in \[0, 1\]"),
    (lambda s, m, q: (s, m, q[:0]), "no query images"),
])
def test_malformed_requests_fail_with_a_clear_error(exported, change, message):
    _, path = exported
    model = tf.saved_model.load(path)
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        _call(model, *change(*_request()))


def test_wrong_dtype_or_rank_is_refused_by_the_signature(exported):
    _, path = exported
    model = tf.saved_model.load(path)
    support, mask, queries = _request()
    with pytest.raises((TypeError, ValueError, tf.errors.InvalidArgumentError), match="uint8"):
        _call(model, support.astype(np.float32), mask, queries)
    for wrong in ((support[0], mask, queries), (support, mask, queries[0]), (support, mask[..., None], queries)):
        with pytest.raises((TypeError, ValueError, tf.errors.InvalidArgumentError), match="shape|rank"):
            _call(model, *wrong)


def test_segment_initial_uses_the_meta_learned_initialisation(exported):
    learner, path = exported
    _, _, queries = _request()
    out = tf.saved_model.load(path).signatures["segment_initial"](
        query_images=tf.constant(queries), threshold=tf.constant([], tf.float32))
    expected = learner.predict(learner.initial_weights(), (queries / 255.0).astype(np.float32)).numpy()[..., 0]
    np.testing.assert_allclose(out["probabilities"].numpy(), expected, atol=1e-5)


def test_meta_sgd_export_adapts_with_the_learned_rates(tmp_path):
    learner = _learner("metasgd")
    for a in learner.alphas:
        a.assign(tf.random.uniform(a.shape, 0.0, 1.0, seed=1))
    path = serving.export(learner, str(tmp_path / "m"), NetworkConfig(SIZE, WIDTH))
    support, mask, queries = _request()
    expected = learner.predict(learner.adapt(support / 255.0, mask[..., None]),
                               (queries / 255.0).astype(np.float32)).numpy()[..., 0]
    np.testing.assert_allclose(_call(path, support, mask, queries)["probabilities"], expected, atol=1e-5)


@pytest.mark.slow
def test_bfloat16_export_runs_close_to_float32(exported, tmp_path):
    learner, path = exported
    bf16 = serving.export(learner, str(tmp_path / "bf16"), NetworkConfig(SIZE, WIDTH), precision="bfloat16")
    support, mask, queries = _request()
    a, b = _call(path, support, mask, queries), _call(bf16, support, mask, queries)
    assert np.abs(a["probabilities"] - b["probabilities"]).mean() < 0.05


def rest_predict(model, body: str) -> str:
    """What TF Serving's REST `:predict` does with a columnar ("inputs") request body."""
    request = json.loads(body)
    signature = model.signatures[request.get("signature_name", "serving_default")]
    specs = signature.structured_input_signature[1]
    inputs = {k: tf.constant(v, dtype=specs[k].dtype) for k, v in request["inputs"].items()}
    return json.dumps({"outputs": {k: v.numpy().tolist() for k, v in signature(**inputs).items()}})


def test_readme_rest_request_body_runs_against_the_saved_model(exported):
    _, path = exported
    support, mask, queries = _request(2)
    # Exactly the body shape README shows.
    body = json.dumps({
        "signature_name": "serving_default",
        "inputs": {
            "support_images": support.tolist(),
            "support_masks": mask.tolist(),
            "query_images": queries.tolist(),
            "threshold": [0.5],
        },
    })
    response = json.loads(rest_predict(tf.saved_model.load(path), body))
    masks = np.array(response["outputs"]["masks"], np.uint8)
    probabilities = np.array(response["outputs"]["probabilities"])
    assert masks.shape == (2, SIZE, SIZE) and probabilities.shape == (2, SIZE, SIZE)
    np.testing.assert_array_equal(masks, probabilities > 0.5)


def _signature_op_types(model) -> dict[str, set[str]]:
    from meta_drn_tf.bench.graphs import operations

    return {name: {op.type for op in operations(fn.graph)} for name, fn in model.signatures.items()}


@pytest.mark.slow
def test_exports_are_device_neutral_unless_cpu_kernels_are_asked_for(tmp_path):
    """stock (the default): TensorFlow's own ops in every signature - no Winograd gathers and products,
    no fused-norm transposes - for TF Serving on any device; cpu: the CPU forms. Both record which."""
    keras.utils.set_random_seed(4)
    # 256x256: Winograd's size
    learner = MetaLearner(build_meta_drn(NetworkConfig(SIZE, 0.5)), MetaConfig("maml", inner_lr=0.5))
    exports = {k: tf.saved_model.load(serving.export(learner, str(tmp_path / k), NetworkConfig(SIZE, 0.5), kernels=k))
               for k in ("stock", "cpu")}
    for kernels, model in exports.items():
        assert model.kernels.numpy().decode() == kernels
    stock, cpu = (_signature_op_types(exports[k]) for k in ("stock", "cpu"))
    assert set(stock) == set(serving.SIGNATURES)
    for name, types in stock.items():
        # (a GatherV2 is there: the gradient of the loss's own ops; Winograd's tiles would be more of them)
        assert not types & {"BatchMatMulV2", "FusedBatchNormV3", "FusedBatchNormGradV3"}, (name, types)
    for name in ("serving_default", "segment_initial", "segment_adapted", "adapt"):
        assert {"FusedBatchNormV3", "BatchMatMulV2"} <= cpu[name], name  # fused norms, Winograd's products
    assert "FusedBatchNormGradV3" in cpu["adapt"]
    support, mask, queries = _request()
    a, b = (_call(exports[k], support, mask, queries) for k in ("stock", "cpu"))
    np.testing.assert_allclose(a["probabilities"], b["probabilities"], atol=1e-4)


def test_float16_exports_adapt_with_the_trained_loss_scale_and_refuse_an_overflow():
    learner = _learner(precision="float16")
    learner.loss_scale.assign(256.0)  # what training's dynamic loss scaling settled on
    module = serving.serving_module(learner, NetworkConfig(SIZE, WIDTH))
    assert float(module.adapter.loss_scale) == 256.0
    support, mask, _ = _request()
    assert np.isfinite(module.adapt(tf.constant(support), tf.constant(mask))["fast_weights"].numpy()).all()
    module.adapter.loss_scale.assign(1e9)  # float16's range ends at 65504: every scaled gradient overflows
    with pytest.raises(tf.errors.InvalidArgumentError, match="float16 adaptation overflowed"):
        module.adapt(tf.constant(support), tf.constant(mask))


@pytest.mark.slow
def test_a_gpu_export_keeps_dilated_convolutions_whole_where_the_stock_one_rewrites_them(exported, tmp_path):
    """gpu: no space-to-batch around the dilated layers in any signature, the dilations in the convolutions
    and their gradients themselves (what cuDNN runs); the masks are the stock export's (the fixture's)."""
    learner, stock_path = exported
    exports = {"stock": tf.saved_model.load(stock_path),
               "gpu": tf.saved_model.load(serving.export(learner, str(tmp_path / "gpu"), NetworkConfig(SIZE, WIDTH),
                                                         kernels="gpu"))}
    assert exports["gpu"].kernels.numpy().decode() == "gpu"
    from meta_drn_tf.bench.graphs import operations

    def dilated(fn, op_type):
        return [op for op in operations(fn.graph) if op.type == op_type and max(op.get_attr("dilations")) > 1]

    rewrite = {"SpaceToBatchND", "BatchToSpaceND"}
    for name in serving.SIGNATURES:
        stock, gpu = (_signature_op_types(exports[k])[name] for k in ("stock", "gpu"))
        assert rewrite <= stock and not rewrite & gpu, name
        assert dilated(exports["gpu"].signatures[name], "Conv2D"), name
    adapt = exports["gpu"].signatures["adapt"]
    assert dilated(adapt, "Conv2DBackpropInput") and dilated(adapt, "Conv2DBackpropFilter")
    # TensorFlow's CPU kernels run the forward ops: the segmentation of given fast weights agrees.
    support, mask, queries = _request()
    fast = exports["stock"].adapt(support_images=support, support_masks=mask)["fast_weights"]
    a, b = (exports[k].segment_adapted(fast_weights=fast, query_images=queries, threshold=tf.constant([0.5]))
            for k in ("stock", "gpu"))
    np.testing.assert_allclose(a["probabilities"], b["probabilities"], atol=1e-5)


def test_loading_an_export_for_segmenting_prints_no_custom_gradient_warnings(exported, caplog):
    """Exports leave out the custom gradients' own gradients on purpose; TensorFlow warned once per
    signature ("unsaved custom gradients ... will likely fail") every time `segment --model` loaded one."""
    import logging

    from meta_drn_tf import Segmenter

    _, base = exported
    with caplog.at_level(logging.INFO):
        segmenter = Segmenter.load(base)
    assert "SavedModel" in segmenter.description
    assert not [r for r in caplog.records if "custom gradients" in r.getMessage()], caplog.text


def test_non_finite_pixels_thresholds_out_of_range_and_empty_queries_are_refused(exported):
    _, path = exported
    model = tf.saved_model.load(path)
    support, mask, queries = _request()
    floats = model.signatures["adapt_and_segment_float"]
    args = dict(support_images=tf.constant(support / 255.0, tf.float32), support_masks=tf.constant(mask),
                query_images=tf.constant(queries / 255.0, tf.float32), threshold=tf.constant([0.5]))
    assert floats(**args)["masks"].shape[0] == len(queries)
    for name in ("support_images", "query_images"):
        bad = args[name].numpy()
        bad[0, 0, 0, 0] = np.nan
        with pytest.raises(tf.errors.InvalidArgumentError, match=f"{name} must be finite"):
            floats(**{**args, name: tf.constant(bad)})
    for threshold in (0.0, 1.0, 1.5, -0.2, np.nan):
        with pytest.raises(tf.errors.InvalidArgumentError, match="threshold values must lie strictly between 0 and 1"):
            floats(**{**args, "threshold": tf.constant([threshold], tf.float32)})
    with pytest.raises(tf.errors.InvalidArgumentError, match="no query images"):
        model.signatures["segment_initial"](query_images=tf.constant(queries[:0]), threshold=tf.constant([0.5]))
    for name in ("support_images", "query_images"):  # 0-255 floats, or far beyond
        for scale in (255.0, 1e30):
            with pytest.raises(tf.errors.InvalidArgumentError, match=rf"{name} must lie in \[0, 1\]"):
                floats(**{**args, name: args[name] * scale + 0.01})
    with pytest.raises(tf.errors.InvalidArgumentError, match="send one threshold"):
        floats(**{**args, "threshold": tf.constant([0.2, 0.9])})
    with pytest.raises(tf.errors.InvalidArgumentError, match="a support mask is empty"):
        floats(**{**args, "support_masks": tf.zeros_like(args["support_masks"])})
    fast = model.signatures["adapt"](support_images=tf.constant(support), support_masks=tf.constant(mask))
    for bad in (np.nan, np.inf):
        weights = fast["fast_weights"].numpy()
        weights[3] = bad
        with pytest.raises(tf.errors.InvalidArgumentError, match="fast_weights must be finite"):
            model.signatures["segment_adapted"](fast_weights=tf.constant(weights), query_images=tf.constant(queries),
                                                threshold=tf.constant([0.5]))
