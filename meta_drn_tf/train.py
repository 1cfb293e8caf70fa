"""Meta-train Meta-DRN: the main job.

    python -m meta_drn_tf.train --flagfile=flags/maml.flags --data_dir=/data/fss1000 --model_dir=runs/maml
    python -m meta_drn_tf.train --flagfile=flags/quickstart.flags      # CPU, embedded synthetic data
    python -m meta_drn_tf.train --flagfile=flags/maml.flags --data_dir=/data/fss1000 --check_data

The flags are the leaves of `meta_drn_tf.runs.config.RunConfig`; the
training itself is `meta_drn_tf.training.trainer.train` (usable from Python
without absl). Re-running the same command resumes from the latest checkpoint
in --model_dir.
"""

from __future__ import annotations

import os

from meta_drn_tf import cli


def define_flags() -> None:
    """The flags of `python -m meta_drn_tf.train`: one per RunConfig leaf."""
    from absl import flags

    from meta_drn_tf.runs import config

    config.define_flags()
    flags.adopt_module_key_flags(config)  # --helpshort lists them as this app's flags
    flags.DEFINE_bool("check_data", False, "Decode every split the run would read (train, validation, test), "
                      "report what it holds and stop, before days of training: writes nothing.")


def check_data(run) -> None:
    """Prints each split's classes and images, as training would read them; a DataError names bad files,
    a ConfigError flags that the run in --model_dir would refuse (what `train` would say first)."""
    from meta_drn_tf.data import benchmark_splits, load_splits
    from meta_drn_tf.runs.directory import RunDirectory

    if not run.trainer.fresh:
        RunDirectory(run.model_dir).differences(run)

    where = run.data.data_dir or "the embedded synthetic dataset"
    if run.data.dataset != "fss1000":  # every file of the folds indexed, as training will read them
        print(f"{where}, {run.data.dataset} fold {run.data.fold}:")
        for split, benchmark in benchmark_splits(run.data, ("train", "val", "test")).items():
            print(f"  {split:5s} {benchmark.name}: {benchmark.num_classes} classes, {benchmark.num_samples} "
                  "labelled photos")
        print("ready: python -m meta_drn_tf.train with the same flags, without --check_data")
        return
    banks = load_splits(run.data, ("train", "val", "test"), run.network.image_size, seed=run.seed)
    print(f"{where} at {run.network.image_size}x{run.network.image_size}:")
    for split, bank in banks.items():
        usable = bank.nonempty.sum()
        print(f"  {split:5s} {bank.num_classes:5d} classes {int(bank.counts.sum()):6d} images "
              f"({int(bank.counts.sum() - usable)} with empty masks, never a support)")
    print("ready: python -m meta_drn_tf.train with the same flags, without --check_data")


def main(argv):
    del argv
    import tensorflow as tf
    from absl import flags

    from meta_drn_tf.errors import WorkerLost
    from meta_drn_tf.runs.config import from_flag_values
    from meta_drn_tf.training.trainer import train

    run = from_flag_values()
    if flags.FLAGS.check_data:
        return check_data(run)
    try:
        train(run)
    except (tf.errors.UnavailableError, tf.errors.DeadlineExceededError, tf.errors.CancelledError) as e:
        raise WorkerLost(
            f"lost contact with another worker ({type(e).__name__}: {e.message.splitlines()[0]}). Restart every "
            f"worker with the same command to resume from the last checkpoint in "
            f"{os.path.join(run.model_dir, 'checkpoints')}.") from e


if __name__ == "__main__":
    cli.run(main, define_flags)
