"""Meta-SGD (§III, eq. 3): MAML with a learned inner rate for every weight, meta-trained with θ."""

from __future__ import annotations

import tensorflow as tf

from meta_drn_tf.meta.algorithm import register
from meta_drn_tf.meta.maml import MAML


@register("metasgd")
class MetaSGD(MAML):
    """Meta-SGD: per-weight inner rates α, initialised to inner_lr, learned with θ."""

    learns_inner_rates = True

    def create_extra_variables(self, adapted, config):
        return [
            tf.Variable(tf.fill(v.shape, tf.constant(config.inner_lr, v.dtype)),
                        name="alpha_" + v.path.replace("/", "_"), trainable=True)
            for v in adapted
        ]
