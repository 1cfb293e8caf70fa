"""IoU scores: eq. 9 against a float64 reference, and predictions that are not finite score 0 everywhere."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import tiny_segmenter

from meta_drn_tf.meta import MetaConfig, MetaLearner
from meta_drn_tf.results.metrics import binary_iou, soft_iou
from meta_drn_tf.training.actions import BestMetric
from meta_drn_tf.training.evaluation import evaluate_bank, write_reports


def _reference_soft_iou(p, t):
    p, t = np.asarray(p, np.float64), np.asarray(t, np.float64)
    inter, union = (p * t).sum(axis=(1, 2, 3)), (p + t - p * t).sum(axis=(1, 2, 3))
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 1.0)


def test_soft_and_binary_iou_match_a_float64_reference():
    rng = np.random.default_rng(0)
    p = rng.uniform(size=(4, 8, 8, 1)).astype("float32")
    t = (rng.uniform(size=(4, 8, 8, 1)) > 0.6).astype("float32")
    t[3] = 0  # an empty mask: 1 only where the prediction is empty too
    np.testing.assert_allclose(soft_iou(p, t).numpy(), _reference_soft_iou(p, t), rtol=1e-6)
    np.testing.assert_allclose(binary_iou(p, t, 0.5).numpy(), _reference_soft_iou(p > 0.5, t), rtol=1e-6)
    empty = np.zeros_like(p)
    np.testing.assert_array_equal(soft_iou(empty, np.zeros_like(t)).numpy(), np.ones(4))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_prediction_that_is_not_finite_scores_zero_and_leaves_the_others_alone(bad):
    p = np.full((3, 4, 4, 1), 0.9, np.float32)
    t = np.ones((3, 4, 4, 1), np.float32)
    p[1, 2, 2, 0] = bad
    p[2] = np.nan  # all NaN: "nothing above the threshold" would score an empty mask's 1 against an empty truth
    for scores in (soft_iou(p, t), binary_iou(p, t, 0.5), binary_iou(p, np.zeros_like(t), 0.5)):
        assert scores.numpy()[1] == 0 and scores.numpy()[2] == 0
    assert soft_iou(p, t).numpy()[0] == pytest.approx(0.9)


@pytest.fixture
def overflowed_learner():
    """A learner whose predictions are NaN: one kernel holds a NaN (as after a float16 overflow)."""
    keras.utils.set_random_seed(0)
    learner = MetaLearner(tiny_segmenter(32), MetaConfig("fomaml", inner_lr=0.1))
    kernel = learner.model.trainable_variables[0]
    kernel.assign(tf.fill(kernel.shape, float("nan")))
    return learner


def test_evaluation_scores_non_finite_predictions_zero_and_reports_them(overflowed_learner, tiny_bank, tmp_path,
                                                                       capsys):
    result, _ = evaluate_bank(overflowed_learner, tiny_bank, shots=1, limit=4)
    summary = result.summary()
    assert summary["soft_iou"] == 0 and summary["iou@0.5"] == 0 and summary["iou@0.35"] == 0
    assert summary["non_finite_queries"] == summary["queries"] > 0
    write_reports({"overflowed": result}, str(tmp_path))
    assert f"non-finite predictions (NaN/inf, an overflowed adaptation), each scored 0: overflowed: " \
           f"{summary['queries']} queries" in (tmp_path / "table.md").read_text()


def test_a_validation_of_non_finite_predictions_never_becomes_the_best_checkpoint(overflowed_learner, tiny_bank):
    summary = evaluate_bank(overflowed_learner, tiny_bank, shots=1, limit=4)[0].summary()
    assert not BestMetric().improves(summary, 0.05)  # against a poor but finite run so far


def test_copying_the_example_mask_scores_its_overlap_with_each_query():
    from meta_drn_tf.data.bank import ImageBank
    from meta_drn_tf.training.evaluation import copy_mask_result

    # One class of three 4x4 images: masks of 4, 4 and 2 pixels; image 2's lies inside image 0's.
    masks = np.zeros((1, 3, 4, 4), np.uint8)
    masks[0, 0, :2, :2] = 1
    masks[0, 1, 2:, 2:] = 1
    masks[0, 2, 0, :2] = 1
    bank = ImageBank(["c"], np.zeros((1, 3, 4, 4, 3), np.uint8), masks, np.array([3]))
    result = copy_mask_result(bank, shots=1)
    iou = {(r["episode"], r["query"]): r["iou@0.5"] for r in result.records}
    # Episode 0: support 0, queries 1 (disjoint) and 2 (2 of 4 pixels); episode 2: support 2, queries 0 and 1.
    assert iou == {(0, 0): 0.0, (0, 1): 0.5, (1, 0): 0.0, (1, 1): 0.0, (2, 0): 0.5, (2, 1): 0.0}
    assert all(r["soft_iou"] == r["iou@0.35"] == r["iou@0.5"] for r in result.records)  # a binary guess
    # Two supports: the pixels both mark (none here: 0 and 1 are disjoint) - the query's IoU is 0.
    two = copy_mask_result(bank, shots=2)
    assert two.records[0]["iou@0.5"] == 0.0 and len(two.records) == 3
