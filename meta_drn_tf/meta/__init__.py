"""Gradient-based meta-learning: the adapter and learner, and one module per algorithm.

`algorithm.py` says what an algorithm is and keeps the registry; `maml.py` (with MAML++'s
options), `fomaml.py`, `metasgd.py` and `reptile.py` are the paper's four; `config.py` is
their settings; `learner.py` adapts a Keras model and meta-trains it.
"""

# The paper's algorithms register themselves when imported (meta.algorithm's registry).
from meta_drn_tf.meta import fomaml, maml, metasgd, reptile  # noqa: F401
from meta_drn_tf.meta.adapter import Adapter
from meta_drn_tf.meta.algorithm import Algorithm, Phase, algorithm_class, register, registered
from meta_drn_tf.meta.config import MetaConfig
from meta_drn_tf.meta.learner import MetaLearner, multi_step_loss_weights

# The paper's four, in its order (Table I); `registered()` adds any registered since.
PAPER_ALGORITHMS = ("maml", "fomaml", "metasgd", "reptile")

__all__ = ["PAPER_ALGORITHMS", "Adapter", "Algorithm", "MetaConfig", "MetaLearner", "Phase", "algorithm_class",
           "multi_step_loss_weights", "register", "registered"]
