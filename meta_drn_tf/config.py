"""`RunConfig`: everything that defines a training run, validated, frozen, saved as `flags.json`.

    from meta_drn_tf.config import RunConfig
    from meta_drn_tf.training import train

    train(RunConfig(model_dir="runs/x", image_size=64, width=0.25, epochs=2))

The fields are the flags of `python -m meta_drn_tf.train` (defined from them:
one source for names, defaults and help). A run directory's `flags.json`
loads back with `RunConfig.load`; settings older runs did not have take their
defaults, so old runs keep loading.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

from meta_drn_tf import paths
from meta_drn_tf.errors import ConfigError
from meta_drn_tf.kernels import KERNEL_CHOICES

FLAGS_FILE = "flags.json"
ALGORITHMS = ("maml", "fomaml", "metasgd", "reptile")
LR_SCHEDULES = ("plateau", "linear", "cosine", "constant")
PRECISIONS = ("float32", "bfloat16", "float16")
STRATEGIES = ("auto", "one_device", "mirrored", "multi_worker", "tpu")
ADAPT_LAYERS = ("all", "head", "upsample")
# Settings renamed since an older version: flags.json files that use the old name still load.
RENAMED = {"final_meta_lr": "min_meta_lr"}


def algorithm_problems(algo: str, lslr: bool = False, multi_step_loss_epochs: int = 0, first_order_epochs: int = 0,
                       per_step_norm: bool = False, adapt_layers: str = "all", memory_saving: bool = False):
    """(setting, why) for each MAML++/ANIL option that does not combine with `algo` (shared with MetaConfig)."""
    if multi_step_loss_epochs < 0:
        yield "multi_step_loss_epochs", "must be 0 or more"
    if first_order_epochs < 0:
        yield "first_order_epochs", "must be 0 or more"
    if lslr and algo in ("metasgd", "reptile"):
        why = ("Meta-SGD already learns a rate for every weight" if algo == "metasgd" else
               "Reptile's update does not differentiate through the inner rates")
        yield "lslr", why + "; use --algo=maml or fomaml"
    if first_order_epochs and algo not in ("maml", "metasgd"):
        yield "first_order_epochs", f"{algo} has no second-order phase to anneal to; use --algo=maml or metasgd"
    if memory_saving and (algo == "reptile" or multi_step_loss_epochs):
        yield "memory_saving", "applies to the final query loss of maml, fomaml and metasgd (not to Reptile or " \
                               "the multi-step loss)"
    if algo == "reptile":
        # Reptile's meta-gradient is θ - θ': what its inner loop does not update would never be learned.
        changed = {"multi_step_loss_epochs": multi_step_loss_epochs > 0, "per_step_norm": per_step_norm,
                   "adapt_layers": adapt_layers != "all"}
        for name in (k for k, v in changed.items() if v):
            yield name, "needs a query-loss meta-gradient; Reptile only learns what its inner loop updates"


def _setting(default: Any, help: str, choices: tuple[str, ...] | None = None):
    return dataclasses.field(default=default, metadata={"help": help, "choices": choices})


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """A training run. Field docs are the `--help` of `python -m meta_drn_tf.train`."""

    model_dir: str = _setting("runs/default", "Where checkpoints, TensorBoard logs, reports and exports go.")
    data_dir: str = _setting("", "FSS-1000 (or a folder in its layout: ROOT/<class>/<n>.jpg + <n>.png). "
                                 "Empty: the embedded synthetic dataset.")
    val_classes_file: str = _setting("", "Optional class list (one a line) for validation; overrides the split.")
    test_classes_file: str = _setting("", "Optional class list (one a line) for testing; overrides the split.")
    skip_bad_files: bool = _setting(False, "Train on the usable images when some image/mask files cannot be used "
                                           "(they are listed and counted); default: stop and list them.")
    synthetic_classes: int = _setting(100, "Object families in the synthetic dataset (no --data_dir).")
    synthetic_images: int = _setting(10, "Images per synthetic class.")
    algo: str = _setting("maml", "Meta-learning algorithm.", ALGORITHMS)
    image_size: int = _setting(224, "Input height and width (multiple of 4).")
    width: float = _setting(1.0, "Filter-count multiplier; 1.0 is the paper's network.")
    shots: int = _setting(1, "Support images per task (k).")
    queries: int = _setting(5, "Query images per training task (q).")
    meta_batch_size: int = _setting(5, "Tasks per meta-update (global, over all replicas).")
    inner_lr: float = _setting(1e-3, "Inner-loop learning rate α (Meta-SGD: initial value).")
    inner_steps: int | None = _setting(None, "Inner-loop steps (default: 1; Reptile 5).")
    meta_lr: float = _setting(1e-3, "Initial meta learning rate β (AdamW).")
    weight_decay: float = _setting(1e-2, "AdamW weight decay.")
    lr_schedule: str = _setting("plateau", "plateau: multiply by --lr_factor when validation soft IoU has not "
                                           "improved for --lr_patience epochs; linear: decay to --min_meta_lr "
                                           "over all epochs; cosine: cosine-anneal to --min_meta_lr (MAML++).",
                                LR_SCHEDULES)
    lr_patience: int = _setting(8, "Epochs without improvement before a plateau decay.")
    lr_factor: float = _setting(0.5, "Plateau decay factor.")
    min_meta_lr: float = _setting(3e-5, "End of the linear and cosine schedules (alias: --final_meta_lr).")
    lslr: bool = _setting(False, "MAML++ LSLR: learn an inner rate per weight tensor and inner step "
                                 "(initialised to --inner_lr).")
    multi_step_loss_epochs: int = _setting(0, "MAML++ multi-step loss: for the first E epochs the meta-loss "
                                              "weighs the query loss after every inner step, annealed towards "
                                              "the last step's (needs --inner_steps > 1).")
    first_order_epochs: int = _setting(0, "MAML++ derivative-order annealing: first-order meta-gradients for "
                                          "the first E epochs, second order after.")
    per_step_norm: bool = _setting(False, "MAML++: normalization scales/offsets per inner step, meta-learned "
                                          "(not adapted in the inner loop).")
    adapt_layers: str = _setting("all", "Which layers the inner loop adapts (ANIL-style; the rest are only "
                                        "meta-learned): all; head: the dilated head at the input; upsample: "
                                        "the sub-pixel output layer (ANIL).", ADAPT_LAYERS)
    memory_saving: bool = _setting(False, "Backpropagate a task's queries one at a time to the adapted weights, "
                                          "then once through the inner loop: the same meta-gradient, with one "
                                          "query's activations in memory instead of --queries' (maml, fomaml, "
                                          "metasgd).")
    epochs: int = _setting(200, "Epochs to train.")
    tasks_per_epoch: int = _setting(0, "Training tasks per epoch; 0: the number of training images.")
    val_episodes: int = _setting(0, "Validation episodes per epoch (evenly spread); 0: all.")
    eval_inner_steps: int | None = _setting(None, "Inner steps at validation/test time (default: training's).")
    seed: int = _setting(0, "Seeds the initial weights and the task stream.")
    precision: str = _setting("float32", "Compute precision.", PRECISIONS)
    jit_compile: bool = _setting(False, "Compile the meta-train step with XLA (each replica's part of it).")
    kernels: str = _setting("auto", "Which forms the convolutions and norms take: stock (TensorFlow's own ops and "
                                    "gradients: cuDNN, XLA), cpu (CPU-tuned forms: Winograd, per-tap kernel "
                                    "gradients, fused norms), auto (cpu on a CPU, stock on an accelerator). The "
                                    "export at the end holds stock graphs unless this is cpu.", KERNEL_CHOICES)
    parallel_tasks: str = _setting("auto", "Tasks of a replica's meta-batch processed at once (the same "
                                           "meta-gradient; more memory): N, or auto (1 on a CPU, the whole "
                                           "meta-batch on an accelerator).")
    require_gpu: bool = _setting(False, "Stop with an error when no GPU is usable (instead of a warning when "
                                        "tensorflow[and-cuda] is installed but finds none).")
    deterministic: bool = _setting(False, "Enable TensorFlow op determinism (bit-exact resumes on GPUs).")
    save_every_minutes: float = _setting(10.0, "Also checkpoint mid-epoch this often.")
    save_every_steps: int = _setting(0, "Also checkpoint every N meta-steps (0: off).")
    log_every_steps: int = _setting(10, "TensorBoard scalars every N meta-steps.")
    skip_nonfinite: bool = _setting(False, "Skip (and count) a meta-batch with a non-finite loss instead of stopping.")
    fresh: bool = _setting(False, "Delete the run in --model_dir and start afresh (default: resume).")
    test_at_end: bool = _setting(True, "Evaluate the best checkpoint on the test classes at the end.")
    baseline_at_end: bool = _setting(True, "At the end, also evaluate the same adaptation from a random "
                                           "initialisation.")
    export_at_end: bool = _setting(True, "Export a TF Serving SavedModel of the best checkpoint at the end.")
    strategy: str = _setting("auto", "tf.distribute strategy (multi_worker reads TF_CONFIG).", STRATEGIES)
    cpu_devices: int = _setting(1, "Split the CPU into N logical devices (testing replicas without GPUs).")
    collective_timeout_s: float = _setting(300.0, "multi_worker: fail when a collective waits longer (dead worker).")

    def __post_init__(self):
        problems = [f"--{name}={getattr(self, name)}: {why}" for name, why in self._problems()]
        if problems:
            raise ConfigError("; ".join(problems))

    def _problems(self):
        for f in dataclasses.fields(self):
            value, choices = getattr(self, f.name), f.metadata["choices"]
            if choices and value not in choices:
                yield f.name, f"must be one of {', '.join(choices)}"
        for name in ("shots", "queries", "meta_batch_size", "epochs", "synthetic_images", "log_every_steps",
                     "cpu_devices", "lr_patience"):
            if getattr(self, name) < 1:
                yield name, "must be at least 1"
        for name in ("tasks_per_epoch", "val_episodes", "save_every_steps"):
            if getattr(self, name) < 0:
                yield name, "must be 0 or more"
        for name in ("width", "inner_lr", "meta_lr", "lr_factor", "min_meta_lr", "collective_timeout_s",
                     "save_every_minutes"):
            if not getattr(self, name) > 0:
                yield name, "must be positive"
        if not self.model_dir:
            yield "model_dir", "must name a folder"
        if self.lr_factor >= 1:
            yield "lr_factor", "must be below 1 (a plateau lowers the rate)"
        for name in ("val_classes_file", "test_classes_file"):
            if getattr(self, name) and not self.data_dir:
                yield name, "lists classes of a --data_dir dataset; the synthetic dataset's split is fixed"
        for name in ("inner_steps", "eval_inner_steps"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                yield name, "must be at least 1"
        if self.parallel_tasks != "auto" and not (self.parallel_tasks.isdigit() and int(self.parallel_tasks) >= 1):
            yield "parallel_tasks", "must be auto or a positive integer"
        if self.image_size < 4 or self.image_size % 4:
            yield "image_size", "must be a positive multiple of 4 (two stride-2 stages, then x4 upsampling)"
        if self.synthetic_classes < 3:
            yield "synthetic_classes", "must be at least 3 (train/val/test split)"
        yield from algorithm_problems(self.algo, self.lslr, self.multi_step_loss_epochs, self.first_order_epochs,
                                      self.per_step_norm, self.adapt_layers, self.memory_saving)

    def check_paths(self) -> None:
        """Raises ConfigError naming each path setting that cannot be used on this machine.

        Not part of validation: a saved run loads anywhere, wherever its dataset lives now.
        """
        found = paths.problems({"model_dir": ("new_folder", self.model_dir), "data_dir": ("folder", self.data_dir),
                                "val_classes_file": ("file", self.val_classes_file),
                                "test_classes_file": ("file", self.test_classes_file)})
        if found:
            raise ConfigError("; ".join(found))

    def replace(self, **changes) -> RunConfig:
        """A copy with `changes` (validated)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RunConfig:
        """From saved settings; unknown keys (from a newer version) are refused, missing ones take defaults."""
        names = {f.name for f in dataclasses.fields(cls)}
        values = {RENAMED.get(k, k): v for k, v in values.items()}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ConfigError(f"unknown training settings: {unknown}")
        return cls(**values)

    @classmethod
    def load(cls, model_dir: str) -> RunConfig:
        """The configuration saved in a run directory."""
        path = os.path.join(model_dir, FLAGS_FILE)
        if not os.path.isfile(path):
            raise ConfigError(f"--model_dir {model_dir}: no training run there ({FLAGS_FILE} is missing)")
        with open(path) as f:
            return cls.from_dict(json.load(f))

    def save(self, model_dir: str) -> None:
        """Writes flags.json (atomically) and flags.txt (reusable as --flagfile) into `model_dir`."""
        os.makedirs(model_dir, exist_ok=True)
        paths.write_atomically(os.path.join(model_dir, FLAGS_FILE),
                                    json.dumps(self.to_dict(), indent=1, sort_keys=True))
        paths.write_atomically(os.path.join(model_dir, "flags.txt"), "".join(
            f"--{k}={v}\n" for k, v in sorted(self.to_dict().items()) if v is not None))


def define_flags(flag_values=None) -> None:
    """Defines one absl flag per RunConfig field (for `python -m meta_drn_tf.train`)."""
    from absl import flags

    flag_values = flags.FLAGS if flag_values is None else flag_values  # an empty FlagValues is falsy
    for f in dataclasses.fields(RunConfig):
        name, default, helptext, choices = f.name, f.default, f.metadata["help"], f.metadata["choices"]
        if choices:
            flags.DEFINE_enum(name, default, list(choices), helptext, flag_values=flag_values)
        elif f.type == "bool":
            flags.DEFINE_bool(name, default, helptext, flag_values=flag_values)
        elif f.type in ("int", "int | None"):
            flags.DEFINE_integer(name, default, helptext, flag_values=flag_values)
        elif f.type == "float":
            flags.DEFINE_float(name, default, helptext, flag_values=flag_values)
        else:
            flags.DEFINE_string(name, default, helptext, flag_values=flag_values)
    for old, new in RENAMED.items():
        flags.DEFINE_alias(old, new, flag_values=flag_values)
