"""Models from elsewhere are programs: checked before anything of them runs (`serving.trust`)."""

import importlib.util
import os
import sys

import numpy as np
import pytest
import tensorflow as tf
import warm

from meta_drn_tf.errors import ConfigError
from meta_drn_tf.serving import tflite, trust
from meta_drn_tf.serving.segmenter import Segmenter

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class _Writer(tf.saved_model.experimental.TrackableResource):
    """A resource whose initialiser writes a file: what a load runs, before any signature."""

    def __init__(self, target: str):
        self._target = target
        super().__init__()

    def _create_resource(self):
        return tf.raw_ops.VarHandleOp(dtype=tf.int32, shape=[])

    def _initialize(self):
        tf.io.write_file(self._target, "written at load")


def _imitation(path: str, target: str, at_load: bool) -> str:
    """A plain-TensorFlow SavedModel with this project's signature names and variables, which writes
    `target` when called (or, `at_load`, when loaded)."""
    module = tf.Module()
    module.kernels = tf.Variable("stock", trainable=False)
    module.image_size = tf.Variable(32, trainable=False)
    module.width = tf.Variable(0.0625, trainable=False)
    if at_load:
        module.writer = _Writer(target)

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8),
                                  tf.TensorSpec([None, None, None], tf.float32)])
    def adapt(support_images, support_masks):
        if not at_load:
            tf.io.write_file(target, "written at call")
        return {"fast_weights": tf.zeros([4])}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.float32), tf.TensorSpec([None, None, None, 3], tf.uint8),
                                  tf.TensorSpec([None], tf.float32)])
    def segment_adapted(fast_weights, query_images, threshold):
        shape = tf.shape(query_images)[:3]
        return {"probabilities": tf.ones(shape), "masks": tf.ones(shape, tf.uint8)}

    module.adapt, module.segment_adapted = adapt, segment_adapted
    tf.saved_model.save(module, path, signatures={"adapt": adapt, "segment_adapted": segment_adapted})
    return path


def _adapt_once(segmenter: Segmenter) -> None:
    segmenter.adapt(np.zeros((1, 16, 16, 3), np.uint8), np.ones((1, 16, 16), np.float32))


@pytest.mark.parametrize("at_load", [False, True], ids=["write-at-call", "write-at-load"])
def test_a_model_that_writes_files_is_refused_before_it_runs(tmp_path, at_load):
    target = tmp_path / "planted.txt"
    model = _imitation(str(tmp_path / "model"), str(target), at_load)
    with pytest.raises(trust.UntrustedModel, match=r"holds op\(s\) .*WriteFile.*--trust_model"):
        Segmenter.load(model)
    assert not target.exists()
    # The same model, trusted, does what it was built to do: the check above is what stopped it.
    segmenter = Segmenter.load(model, trust=True)
    assert target.exists() == at_load
    _adapt_once(segmenter)
    assert target.exists()


def test_ops_only_the_saver_may_hold_are_refused_elsewhere(tmp_path):
    """SaveV2 writes files: allowed in the saver's functions, which a load does not run, not in a signature."""
    module = tf.Module()
    module.v = tf.Variable([1.0, 2.0])

    @tf.function(input_signature=[tf.TensorSpec([], tf.string)])
    def save_to(prefix):
        tf.raw_ops.SaveV2(prefix=prefix, tensor_names=["v"], shape_and_slices=[""], tensors=[module.v.read_value()])
        return {"done": tf.constant(1)}

    module.save_to = save_to
    tf.saved_model.save(module, str(tmp_path / "m"), signatures={"serving_default": save_to})
    found = dict(trust.foreign_ops(str(tmp_path / "m")))
    assert "SaveV2" in found and "save_to" in found["SaveV2"]
    assert trust.ops_by_scope(str(tmp_path / "m"))[trust.SAVER]  # the saver's own SaveV2 is there, allowed


def test_the_savers_own_nodes_are_checked_too(tmp_path):
    """A node the saver names (only TF Serving's loader runs it) may hold the saver's file ops, no others."""
    from tensorflow.core.protobuf import saved_model_pb2

    module = tf.Module()
    module.v = tf.Variable(1.0)
    tf.saved_model.save(module, str(tmp_path / "m"))
    proto = saved_model_pb2.SavedModel()
    proto.ParseFromString((tmp_path / "m" / "saved_model.pb").read_bytes())
    graph = proto.meta_graphs[0]
    graph.graph_def.node.add(name="planted", op="WriteFile")
    graph.saver_def.restore_op_name = "planted"
    (tmp_path / "m" / "saved_model.pb").write_bytes(proto.SerializeToString())
    assert ("WriteFile", "the top-level graph") in trust.foreign_ops(str(tmp_path / "m"))


def test_a_damaged_saved_model_file_is_one_error(tmp_path):
    os.makedirs(tmp_path / "m")
    (tmp_path / "m" / "saved_model.pb").write_bytes(b"\x0a\xff\xff\xff\xff garbage")
    with pytest.raises(ConfigError, match="saved_model.pb cannot be read"):
        Segmenter.load(str(tmp_path / "m"))


def _export_ops_tool():
    spec = importlib.util.spec_from_file_location("export_ops", os.path.join(ROOT, "tools", "export_ops.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_the_shipped_op_list_is_exactly_what_every_export_kind_holds(tmp_path):
    """Derived from real exports of every kernel form and precision: no export is refused, and the list
    allows nothing the exports do not hold (regenerate with `python tools/export_ops.py`)."""
    derived = _export_ops_tool().export_ops(str(tmp_path))
    assert {scope: sorted(ops) for scope, ops in trust.allowed_ops().items()} == derived
    exports = sorted({str(p.parent) for p in tmp_path.glob("**/saved_model.pb")})
    assert len(exports) == 9 + 1  # each kind, and 0.1.0's
    for path in exports:
        assert trust.foreign_ops(path) == []


@pytest.mark.slow
def test_segment_refuses_an_untrusted_model_in_one_line(tmp_path):
    target = tmp_path / "planted.txt"
    model = _imitation(str(tmp_path / "model"), str(target), at_load=True)
    image = tmp_path / "a.png"
    import cv2

    cv2.imwrite(str(image), np.full((16, 16, 3), 90, np.uint8))
    cv2.imwrite(str(tmp_path / "m.png"), np.full((16, 16), 255, np.uint8))
    result = warm.run([sys.executable, "-m", "meta_drn_tf.segment", f"--model={model}", f"--support={image}",
                       f"--support_mask={tmp_path / 'm.png'}", f"--images={image}", f"--out={tmp_path / 'out'}"],
                      capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().startswith("error: --model") and "WriteFile" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not target.exists()


def _tflite_with_a_flex_op() -> bytes:
    @tf.function(input_signature=[tf.TensorSpec([2, 2], tf.float32)])
    def f(x):
        return tf.linalg.det(x)  # no TFLite builtin: a "Flex" op (TensorFlow's kernel, run by TFLite)

    converter = tf.lite.TFLiteConverter.from_concrete_functions([f.get_concrete_function()], f)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS, tf.lite.OpsSet.SELECT_TF_OPS]
    return converter.convert()


def test_a_tflite_file_with_custom_ops_is_refused(tmp_path):
    flatbuffer = _tflite_with_a_flex_op()
    assert trust.tflite_custom_ops(flatbuffer) == ["FlexMatrixDeterminant"]
    path = tmp_path / "foreign.tflite"
    path.write_bytes(flatbuffer)
    with pytest.raises(trust.UntrustedModel, match=r"foreign.tflite: .*FlexMatrixDeterminant"):
        tflite.make_interpreter(model_path=str(path))
    with pytest.raises(trust.UntrustedModel):
        tflite.run(flatbuffer, np.zeros((1, 2, 2), np.float32))
