"""The meta learning rate over training: small objects with two hooks the controller calls."""

from __future__ import annotations

import math

import tensorflow as tf

from meta_drn_tf.runs.config import TrainerConfig


class Schedule:
    """The meta learning rate over training: `before_step` and `after_validation` hooks."""

    def before_step(self, learning_rate: tf.Variable, global_step: int) -> None:
        """Called before every meta-step."""

    def after_validation(self, learning_rate: tf.Variable, epochs_without_improvement: int) -> bool:
        """Called after every validation; True when it changed the rate (the wait count restarts)."""
        return False


class Plateau(Schedule):
    """Multiply by `factor` when validation has not improved for more than `patience` epochs."""

    def __init__(self, patience: int, factor: float):
        self.patience, self.factor = patience, factor

    def after_validation(self, learning_rate, epochs_without_improvement):
        if epochs_without_improvement <= self.patience:
            return False
        learning_rate.assign(float(learning_rate.numpy()) * self.factor)
        print(f"  validation soft IoU has not improved for {self.patience} epochs: "
              f"meta_lr -> {float(learning_rate.numpy()):.3g}")
        return True


class Linear(Schedule):
    """From `start` to `end` linearly over `total_steps` meta-steps (Reptile's schedule in the paper)."""

    def __init__(self, start: float, end: float, total_steps: int):
        self.start, self.end, self.total_steps = start, end, max(1, total_steps)

    def before_step(self, learning_rate, global_step):
        learning_rate.assign(self.start + (self.end - self.start) * min(1.0, global_step / self.total_steps))


class Cosine(Linear):
    """From `start` to `end` along a half cosine over `total_steps` meta-steps (MAML++)."""

    def before_step(self, learning_rate, global_step):
        progress = min(1.0, global_step / self.total_steps)
        learning_rate.assign(self.end + 0.5 * (self.start - self.end) * (1 + math.cos(math.pi * progress)))


def make_schedule(config: TrainerConfig, meta_lr: float, total_steps: int) -> Schedule:
    """The schedule `config.lr_schedule` names, starting from `meta_lr`."""
    if config.lr_schedule == "plateau":
        return Plateau(config.lr_patience, config.lr_factor)
    if config.lr_schedule == "linear":
        return Linear(meta_lr, config.min_meta_lr, total_steps)
    if config.lr_schedule == "cosine":
        return Cosine(meta_lr, config.min_meta_lr, total_steps)
    return Schedule()
