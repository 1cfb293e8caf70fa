"""What a meta-learning algorithm is, the adapter interface it works through, and the registry.

An algorithm turns one task into the gradient it hands the meta-optimizer,
aligned with the adapter's `meta_variables`. It is small and self-contained: it
sees the learner only through `AdapterInterface` (the inner loop, losses and
gradients, which a plain `Adapter` provides) and knows nothing of devices,
optimizers, strategies or training loops. To add one, write a module with an
`Algorithm` subclass decorated `@register("name")` and import it before building
a `MetaConfig(algorithm="name")`: nothing else changes (`tests/toy_algorithm.py`
is such a module). The paper's four are `maml`, `fomaml`, `metasgd` and `reptile`
in the modules of those names. For example, an algorithm whose meta-gradient is θ - θ' after one
SGD step on the query images (first order, like Reptile's):

    @register("query_step")
    class QueryStep(Algorithm):
        query_meta_gradient = False

        def task_gradients(self, learner, task, phase=None, loss_weights=None):
            theta = learner.initial_weights()
            fast, loss = learner.inner_loop(theta, task["query_images"], task["query_masks"], 1, False)
            return [t - f for t, f in zip(theta, fast)], loss

    grads, loss = QueryStep().task_gradients(Adapter(model, config), task)   # a plain Adapter suffices
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import tensorflow as tf

Task = dict[str, tf.Tensor]  # support_images, support_masks, query_images, query_masks


@dataclasses.dataclass(frozen=True)
class Phase:
    """What a meta-step computes at a point of training. A Python value: one trace per phase."""

    second_order: bool
    multi_step_loss: bool


class AdapterInterface(Protocol):
    """What an algorithm may ask of the learner (`meta.adapter.Adapter` provides it).

    Weights are lists of tensors aligned with the model's trainable variables; `fast`
    weights are the adapted subset the inner loop updates.
    """

    config: Any  # MetaConfig: inner_steps, memory_saving, inner_lr

    @property
    def meta_variables(self) -> list[tf.Variable]: ...

    @property
    def extra_variables(self) -> list[tf.Variable]: ...

    def initial_weights(self) -> list[tf.Tensor]: ...

    def inner_loop(self, theta: Sequence[tf.Tensor], images: tf.Tensor, masks: tf.Tensor, inner_steps: int,
                   second_order: bool, inner_lr=None, after_step: Callable | None = None): ...

    def weights_at(self, theta: Sequence[tf.Tensor], fast: Sequence[tf.Tensor], step) -> list[tf.Tensor]: ...

    def loss(self, weights: Sequence[tf.Tensor], images: tf.Tensor, masks: tf.Tensor,
             second_order: bool = False) -> tf.Tensor: ...

    def gradients(self, tape: tf.GradientTape, loss: tf.Tensor, sources, unscale: bool = True) -> list: ...

    def unscaled(self, grads: Sequence[tf.Tensor]) -> list[tf.Tensor]: ...


class Algorithm(abc.ABC):
    """A meta-learning algorithm: one task in, the gradient for the meta-optimizer out."""

    default_inner_steps: int = 1
    # What the algorithm's meta-gradient is made of; `MetaConfig` refuses the options it lacks.
    second_order: bool = False  # it has a second-order phase (MAML++ can anneal to it)
    query_meta_gradient: bool = True  # it differentiates a query loss through the inner loop
    learns_inner_rates: bool = False  # its own variables are the inner rates (LSLR would duplicate them)

    def create_extra_variables(self, adapted: list[tf.Variable], config) -> list[tf.Variable]:
        """Meta-learned variables besides the model's (Meta-SGD's rates for the `adapted` weights)."""
        return []

    def phase(self, config, epoch: int) -> Phase:
        """What the meta-step computes at (0-based) `epoch` under `config` (a MetaConfig): MAML++'s
        derivative-order annealing and multi-step loss switch it."""
        return Phase(second_order=self.second_order and epoch >= config.first_order_epochs,
                     multi_step_loss=config.inner_steps > 1 and epoch < config.multi_step_loss_epochs)

    @abc.abstractmethod
    def task_gradients(self, learner: AdapterInterface, task: Task, phase: Phase | None = None,
                       loss_weights: tf.Tensor | None = None) -> tuple[list[tf.Tensor], tf.Tensor]:
        """Gradients aligned with `learner.meta_variables`, and the task's loss.

        `phase` (default: `self.phase(learner.config, 0)`) says whether the
        meta-gradient is second order and whether the objective is the
        multi-step loss (weighted by `loss_weights`).
        """


# Filled as the algorithm modules are imported (meta/__init__ imports the paper's four), the way
# Keras registers serializable classes: a name in a MetaConfig resolves here.
_REGISTRY: dict[str, type[Algorithm]] = {}


def register(name: str) -> Callable[[type[Algorithm]], type[Algorithm]]:
    """Class decorator: `MetaConfig(algorithm=name)` builds this algorithm."""

    def add(cls: type[Algorithm]) -> type[Algorithm]:
        if _REGISTRY.get(name, cls) is not cls:
            raise ValueError(f"algorithm {name!r} is registered already ({_REGISTRY[name].__name__})")
        _REGISTRY[name] = cls
        return cls

    return add


def algorithm_class(name: str) -> type[Algorithm]:
    """The algorithm registered as `name`."""
    if name not in _REGISTRY:
        raise ValueError(f"algorithm must be one of {sorted(_REGISTRY)}, got {name!r}")
    return _REGISTRY[name]


def registered() -> tuple[str, ...]:
    """The names of the algorithms registered so far."""
    return tuple(_REGISTRY)
