"""Gradient-based meta-learning: MAML, FOMAML, Meta-SGD, Reptile."""

from meta_drn_tf.meta.algorithms import ALGORITHMS, Algorithm
from meta_drn_tf.meta.learner import Adapter, MetaConfig, MetaLearner, Phase, multi_step_loss_weights

__all__ = ["ALGORITHMS", "Adapter", "Algorithm", "MetaConfig", "MetaLearner", "Phase", "multi_step_loss_weights"]
