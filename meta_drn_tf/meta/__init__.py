"""Gradient-based meta-learning: MAML, FOMAML, Meta-SGD, Reptile."""

from meta_drn_tf.meta.algorithms import ALGORITHMS
from meta_drn_tf.meta.learner import MetaConfig, MetaLearner

__all__ = ["ALGORITHMS", "MetaConfig", "MetaLearner"]
