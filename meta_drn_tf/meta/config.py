"""`MetaConfig`: the meta-learning settings of a run (the `meta` section of `RunConfig`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

from meta_drn_tf import hardware
from meta_drn_tf.meta.algorithm import algorithm_class, registered
from meta_drn_tf.network.kernels import KERNEL_CHOICES
from meta_drn_tf.settings import Settings, setting

PRECISION_POLICIES = {"float32": "float32", "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}
ADAPT_LAYERS = ("all", "head", "upsample")


def _parallel_tasks(value: str | int) -> int | str:
    """The --parallel_tasks flag's value: "auto" (None) or a count (a bad value is left for validation)."""
    if isinstance(value, int):
        return value
    return None if value == "auto" else int(value) if value.isdigit() else value


@dataclasses.dataclass(frozen=True)
class MetaConfig(Settings):
    """Algorithm settings: which algorithm, its inner loop, the meta-optimizer, precision and kernels.

    Each field is also a flag of `python -m meta_drn_tf.train` (its help text is below).
    `inner_steps=None` means the algorithm's default and reads back as that number.
    """

    algorithm: str = setting("maml", "Meta-learning algorithm.", registered, flag="algo")
    inner_lr: float = setting(1e-3, "Inner-loop learning rate α (Meta-SGD: initial value); 0 adapts nothing.",
                              minimum=0)
    inner_steps: int | None = setting(None, "Inner-loop steps (default: 1; Reptile 5).", minimum=1)
    meta_lr: float = setting(1e-3, "Initial meta learning rate β (AdamW).", minimum="positive")
    weight_decay: float = setting(1e-2, "AdamW weight decay.", minimum=0)
    precision: str = setting("float32", "Compute precision. Losses, fast-weight updates and meta-updates stay "
                                        "float32; float16 uses dynamic loss scaling. auto: bfloat16 on GPUs of "
                                        "compute capability 8.0 or newer, float16 on 7.x, float32 elsewhere (a "
                                        "run saves what it chose).", (*PRECISION_POLICIES, "auto"))
    jit_compile: bool = setting(False, "Compile the meta-train step with XLA (each replica's part of it).")
    lslr: bool = setting(False, "MAML++ LSLR: learn an inner rate per weight tensor and inner step "
                                "(initialised to --inner_lr).")
    multi_step_loss_epochs: int = setting(0, "MAML++ multi-step loss: for the first E epochs the meta-loss weighs "
                                             "the query loss after every inner step, annealed towards the last "
                                             "step's (needs --inner_steps > 1).", minimum=0)
    first_order_epochs: int = setting(0, "MAML++ derivative-order annealing: first-order meta-gradients for the "
                                         "first E epochs, second order after.", minimum=0)
    per_step_norm: bool = setting(False, "MAML++: normalization scales/offsets per inner step, meta-learned (not "
                                         "adapted in the inner loop).")
    adapt_layers: str = setting("all", "Which layers the inner loop adapts (ANIL-style; the rest are only "
                                       "meta-learned): all; head: the dilated head at the input; upsample: the "
                                       "sub-pixel output layer (ANIL).", ADAPT_LAYERS)
    memory_saving: bool = setting(False, "Backpropagate a task's queries one at a time to the adapted weights, "
                                         "then once through the inner loop: the same meta-gradient, with one "
                                         "query's activations in memory instead of --queries' (maml, fomaml, "
                                         "metasgd).")
    kernels: str = setting("auto", "Which forms the convolutions and norms take: stock (TensorFlow's own ops and "
                                   "gradients: cuDNN, XLA), cpu (CPU-tuned forms: Winograd, per-tap kernel "
                                   "gradients, fused norms), auto (cpu on a CPU, stock on an accelerator). The "
                                   "export at the end holds stock graphs unless this is cpu.", KERNEL_CHOICES)
    parallel_tasks: int | None = setting(None, "Tasks of a replica's meta-batch processed at once (the same "
                                               "meta-gradient; more memory): N, or auto (1 on a CPU, the whole "
                                               "meta-batch on an accelerator).", minimum=1,
                                         parse=_parallel_tasks, unparse=lambda n: "auto" if n is None else str(n))

    def _complete(self) -> None:
        if self.precision == "auto":  # what this machine's GPUs compute best (hardware.auto_precision)
            object.__setattr__(self, "precision", hardware.auto_precision())
        if self.inner_steps is None and self.algorithm in registered():
            object.__setattr__(self, "inner_steps", algorithm_class(self.algorithm).default_inner_steps)

    def _rules(self) -> Iterator[tuple[str, str]]:
        if isinstance(self.parallel_tasks, str):
            yield "parallel_tasks", "must be auto or a positive integer"
        if self.algorithm not in registered():
            return
        for name, lacks, why in _OPTION_NEEDS:
            if getattr(self, name) != _default(name) and lacks(algorithm_class(self.algorithm)):
                takers = [n for n in registered() if not any(
                    other(algorithm_class(n)) for option, other, _ in _OPTION_NEEDS if option == name)]
                yield name, f"{self.algorithm} {why}; use --algo=" + " or ".join(takers)
        if self.memory_saving and self.multi_step_loss_epochs:
            yield "memory_saving", "applies to the final query loss, not to the multi-step loss"

    @property
    def dtype_policy(self) -> str:
        """The Keras dtype policy of `precision`."""
        return PRECISION_POLICIES[self.precision]


def _default(name: str):
    return next(f.default for f in dataclasses.fields(MetaConfig) if f.name == name)


def _no_query_loss(algorithm) -> bool:
    return not algorithm.query_meta_gradient


# Options and what an algorithm lacks for each (read off the `Algorithm` class attributes), with why.
_ONLY_INNER = "only learns what its inner loop updates (its meta-gradient is θ - θ', not a query loss's)"
_OPTION_NEEDS = (
    ("lslr", lambda a: a.learns_inner_rates, "already learns a rate for every weight"),
    ("lslr", _no_query_loss, "does not differentiate through the inner rates"),
    ("first_order_epochs", lambda a: not a.second_order, "has no second-order phase to anneal to"),
    ("memory_saving", _no_query_loss, "has no query-loss meta-gradient to split"),
    ("multi_step_loss_epochs", _no_query_loss, _ONLY_INNER),
    ("per_step_norm", _no_query_loss, _ONLY_INNER),
    ("adapt_layers", _no_query_loss, _ONLY_INNER),
)
