"""Gradient-based meta-learning: MAML, FOMAML, Meta-SGD, Reptile (one module each), the learner."""

# The paper's algorithms register themselves when imported (meta.algorithm's registry).
from meta_drn_tf.meta import fomaml, maml, metasgd, reptile  # noqa: F401
from meta_drn_tf.meta.algorithm import Algorithm, Phase, algorithm_class, register, registered
from meta_drn_tf.meta.learner import Adapter, MetaConfig, MetaLearner, multi_step_loss_weights

__all__ = ["Adapter", "Algorithm", "MetaConfig", "MetaLearner", "Phase", "algorithm_class", "multi_step_loss_weights",
           "register", "registered"]
