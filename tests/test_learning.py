"""Each algorithm raises query IoU on a small synthetic task family within a few dozen meta-steps."""

import keras
import numpy as np
import pytest

from meta_drn_tf.data.episodes import meta_batches, training_tasks
from meta_drn_tf.data.synthetic import synthetic_bank
from meta_drn_tf.meta import MetaConfig, MetaLearner
from meta_drn_tf.network.config import NetworkConfig
from meta_drn_tf.network.model import build_meta_drn
from meta_drn_tf.training.evaluation import EpisodeScorer, evaluate_bank

STEPS = 40


@pytest.fixture(scope="module")
def family():
    return synthetic_bank(num_classes=6, images_per_class=6, image_size=32, seed=11)


@pytest.mark.slow
@pytest.mark.parametrize("algo,inner_lr,meta_lr", [
    ("maml", 0.05, 3e-3), ("fomaml", 0.05, 3e-3), ("metasgd", 0.05, 3e-3), ("reptile", 0.05, 3e-2),
])
def test_meta_training_raises_query_iou(family, algo, inner_lr, meta_lr):
    keras.utils.set_random_seed(0)
    config = MetaConfig(algo, inner_lr=inner_lr, inner_steps=2 if algo == "reptile" else 1, meta_lr=meta_lr)
    learner = MetaLearner(build_meta_drn(NetworkConfig(32, 0.125)), config)
    scorer = EpisodeScorer(learner)  # traced once for both evaluations
    before = evaluate_bank(scorer, family, limit=12)[0].summary()["soft_iou"]
    batches = iter(meta_batches(training_tasks(family, 1, 2, seed=0), 2))
    for _ in range(STEPS):
        learner.meta_train_step(next(batches))
    after = evaluate_bank(scorer, family, limit=12)[0].summary()["soft_iou"]
    assert after > before + 0.05, (before, after)
    assert np.isfinite(after)


def test_evaluating_episodes_several_per_call_scores_each_like_one_per_call(family):
    keras.utils.set_random_seed(0)
    learner = MetaLearner(build_meta_drn(NetworkConfig(32, 0.0625)), MetaConfig("maml", inner_lr=0.05))
    one, kept_one = evaluate_bank(learner, family, limit=7, episodes_per_call=1, keep_predictions=3)
    many, kept_many = evaluate_bank(learner, family, limit=7, episodes_per_call=4, keep_predictions=3)
    assert [(r["class"], r["episode"], r["query"]) for r in one.records] == \
        [(r["class"], r["episode"], r["query"]) for r in many.records]
    for a, b in zip(one.records, many.records):
        for metric in ("loss", "soft_iou", "iou@0.5", "iou@0.35"):
            assert abs(a[metric] - b[metric]) <= 1e-5, (metric, a, b)
    assert len(kept_many) == 3
    for a, b in zip(kept_one, kept_many):
        np.testing.assert_allclose(a["probabilities"], b["probabilities"], atol=1e-5)
