"""`RunConfig`: everything that defines a training run, one tree of settings, saved as `flags.json`.

    from meta_drn_tf.runs.config import RunConfig
    from meta_drn_tf.training.trainer import train

    train(RunConfig.from_flags(model_dir="runs/x", image_size=64, width=0.25, epochs=2))

The tree's sections are the library's own settings - `network` (NetworkConfig),
`data` (DataConfig), `meta` (MetaConfig) - beside the trainer's cadence and the
runtime (devices, strategy). Its leaves are the flags of `python -m
meta_drn_tf.train` (defined from them: one source for names, defaults, choices
and help); they stay flat (`--inner_lr`, not `--meta.inner_lr`). A run
directory's `flags.json` holds the flat flags and loads back with
`RunConfig.load`; settings older runs did not have take their defaults and
renamed ones their new names, so old runs keep loading.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterator
from typing import Any

from meta_drn_tf import paths
from meta_drn_tf.data.config import DataConfig
from meta_drn_tf.errors import ConfigError, Unwritable
from meta_drn_tf.meta.config import MetaConfig
from meta_drn_tf.network.config import NetworkConfig
from meta_drn_tf.settings import Settings, leaves, section, setting

FLAGS_FILE = "flags.json"
# Settings renamed since an older version: flags.json files (and command lines) that use the old name still
# work. final_meta_lr: renamed in 0.2.0, accepted until 1.0 (tests/test_config.py loads a 0.1.0 flags.json).
RENAMED = {"final_meta_lr": "min_meta_lr"}
# What `training.distribute.make_strategy` builds.
STRATEGIES = ("auto", "one_device", "mirrored", "multi_worker", "tpu")


@dataclasses.dataclass(frozen=True)
class TrainerConfig(Settings):
    """The training loop: how long, its cadence, the learning-rate schedule and what happens at the end."""

    epochs: int = setting(200, "Epochs to train.", minimum=1)
    meta_batch_size: int = setting(5, "Tasks per meta-update (global, over all replicas).", minimum=1)
    tasks_per_epoch: int = setting(0, "Training tasks per epoch; 0: the number of training images.", minimum=0)
    val_episodes: int = setting(0, "Validation episodes per epoch (evenly spread); 0: all.", minimum=0)
    eval_inner_steps: int | None = setting(None, "Inner steps at validation/test time (default: training's).",
                                           minimum=1)
    lr_schedule: str = setting("plateau", "plateau: multiply by --lr_factor when validation soft IoU has not "
                                          "improved for --lr_patience epochs; linear: decay to --min_meta_lr over "
                                          "all epochs; cosine: cosine-anneal to --min_meta_lr (MAML++).",
                               ("plateau", "linear", "cosine", "constant"))
    lr_patience: int = setting(8, "Epochs without improvement before a plateau decay.", minimum=1)
    lr_factor: float = setting(0.5, "Plateau decay factor.", minimum="positive")
    min_meta_lr: float = setting(3e-5, "End of the linear and cosine schedules (alias: --final_meta_lr).",
                                 minimum="positive")
    save_every_minutes: float = setting(10.0, "Also checkpoint mid-epoch this often.", minimum="positive")
    save_every_steps: int = setting(0, "Also checkpoint every N meta-steps (0: off).", minimum=0)
    log_every_steps: int = setting(10, "TensorBoard scalars every N meta-steps.", minimum=1)
    skip_nonfinite: bool = setting(False, "Skip (and count) a meta-batch with a non-finite loss instead of "
                                          "stopping.")
    fresh: bool = setting(False, "Delete the run in --model_dir and start afresh (default: resume).")
    test_at_end: bool = setting(True, "Evaluate the best checkpoint on the test classes at the end.")
    baseline_at_end: bool = setting(True, "At the end, also evaluate the same adaptation from a random "
                                          "initialisation.")
    export_at_end: bool = setting(True, "Export a TF Serving SavedModel of the best checkpoint at the end.")

    def _rules(self) -> Iterator[tuple[str, str]]:
        if self.lr_factor >= 1:
            yield "lr_factor", "must be below 1 (a plateau lowers the rate)"


@dataclasses.dataclass(frozen=True)
class RuntimeConfig(Settings):
    """Where the run computes: devices, the tf.distribute strategy, determinism."""

    strategy: str = setting("auto", "tf.distribute strategy (multi_worker reads TF_CONFIG).", STRATEGIES)
    cpu_devices: int = setting(1, "Split the CPU into N logical devices (testing replicas without GPUs).", minimum=1)
    collective_timeout_s: float = setting(300.0, "multi_worker: fail when a collective waits longer (dead worker).",
                                          minimum="positive")
    require_gpu: bool = setting(False, "Stop with an error when no GPU is usable (instead of a warning when "
                                       "tensorflow[and-cuda] is installed but finds none).")
    deterministic: bool = setting(False, "Enable TensorFlow op determinism (bit-exact resumes on GPUs).")
    tf32: bool = setting(False, "NVIDIA GPUs (Ampere and newer): compute float32 convolutions and products in "
                                "TF32 (faster, 10-bit mantissas; TensorFlow's own default). Default: full float32, "
                                "as on the paper's RTX 2080.")


@dataclasses.dataclass(frozen=True)
class RunConfig(Settings):
    """A training run. Leaf docs are the `--help` of `python -m meta_drn_tf.train`."""

    model_dir: str = setting("runs/default", "Where checkpoints, TensorBoard logs, reports and exports go.")
    seed: int = setting(0, "Seeds the initial weights and the task stream.")
    network: NetworkConfig = section(NetworkConfig)
    data: DataConfig = section(DataConfig)
    meta: MetaConfig = section(MetaConfig)
    trainer: TrainerConfig = section(TrainerConfig)
    runtime: RuntimeConfig = section(RuntimeConfig)

    def _rules(self) -> Iterator[tuple[str, str]]:
        if not self.model_dir:
            yield "model_dir", "must name a folder"
        if self.trainer.lr_schedule in ("linear", "cosine") and self.trainer.min_meta_lr > self.meta.meta_lr:
            yield "trainer.min_meta_lr", f"is above --meta_lr={self.meta.meta_lr}: the schedule would raise the rate"

    def check_paths(self) -> None:
        """Raises ConfigError naming each path setting that cannot be used on this machine.

        Not part of validation: a saved run loads anywhere, wherever its dataset lives now.
        """
        data = self.data
        found = paths.problems({"model_dir": ("new_folder", self.model_dir), "data_dir": ("folder", data.data_dir),
                                "val_classes_file": ("file", data.val_classes_file),
                                "test_classes_file": ("file", data.test_classes_file)})
        if found:
            raise (Unwritable if any(map(paths.unwritable, found)) else ConfigError)("; ".join(found))

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RunConfig:
        """From saved flat settings; unknown ones (from a newer version) are refused, missing ones take defaults."""
        return cls.from_flags(**{RENAMED.get(k, k): v for k, v in values.items()})

    @classmethod
    def load(cls, model_dir: str) -> RunConfig:
        """The configuration saved in a run directory."""
        path = os.path.join(model_dir, FLAGS_FILE)
        if not os.path.isfile(path):
            raise ConfigError(f"--model_dir {model_dir}: no training run there ({FLAGS_FILE} is missing)")
        flagfile = os.path.join(model_dir, "flags.txt")
        damaged = (f"{path} is damaged ({{}}): delete it and run train with --flagfile={flagfile} (and the flags "
                   "you gave) to write it again")
        try:
            with open(path, encoding="utf-8") as f:
                values = json.load(f)
        except (ValueError, OSError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            raise ConfigError(damaged.format(str(e).splitlines()[0] or type(e).__name__)) from None
        if not isinstance(values, dict):
            raise ConfigError(damaged.format(f"a JSON {type(values).__name__}, not an object of flags"))
        try:
            return cls.from_dict(values)
        except ConfigError as e:
            raise ConfigError(damaged.format(e)) from None
        except (TypeError, ValueError, AttributeError) as e:  # a value of the wrong type
            raise ConfigError(damaged.format(f"{type(e).__name__}: {e}")) from None

    def save(self, model_dir: str) -> None:
        """Writes flags.json (atomically) and flags.txt (reusable as --flagfile) into `model_dir`."""
        os.makedirs(model_dir, exist_ok=True)
        paths.write_atomically(os.path.join(model_dir, FLAGS_FILE),
                               json.dumps(self.to_flags(), indent=1, sort_keys=True))
        paths.write_atomically(os.path.join(model_dir, "flags.txt"), "".join(
            f"--{k}={v}\n" for k, v in sorted(self.to_flags().items()) if v is not None))


def define_flags(flag_values=None) -> None:
    """Defines one absl flag per leaf of RunConfig (for `python -m meta_drn_tf.train`)."""
    from absl import flags

    flag_values = flags.FLAGS if flag_values is None else flag_values  # an empty FlagValues is falsy
    for leaf in leaves(RunConfig):
        name, default, kind = leaf.flag, leaf.unparse(leaf.field.default), leaf.field.type
        if leaf.choices:
            flags.DEFINE_enum(name, default, list(leaf.choices), leaf.help, flag_values=flag_values)
        elif leaf.field.metadata["parse"] or kind == "str":
            flags.DEFINE_string(name, default, leaf.help, flag_values=flag_values)
        else:
            define = {"bool": flags.DEFINE_bool, "int": flags.DEFINE_integer, "int | None": flags.DEFINE_integer,
                      "float": flags.DEFINE_float}[kind]
            define(name, default, leaf.help, flag_values=flag_values)
    for old, new in RENAMED.items():
        flags.DEFINE_alias(old, new, flag_values=flag_values)


def from_flag_values(flag_values=None) -> RunConfig:
    """The RunConfig that parsed absl flags describe."""
    from absl import flags

    flag_values = flags.FLAGS if flag_values is None else flag_values
    return RunConfig.from_flags(**{leaf.flag: flag_values[leaf.flag].value for leaf in leaves(RunConfig)})
