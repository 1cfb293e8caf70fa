"""A Table-I-style study: several algorithms trained with the same budget and seeds, tested alike.

    python tools/study.py [--configs=maml,fomaml,metasgd,reptile,mamlpp,anil] [--seeds=1] [--out=runs/study]

Every configuration trains on the embedded synthetic dataset (or --data_dir)
with the same number of meta-steps, the same seeds and the same task stream,
in its own process (so each peak RSS is its own), and is tested on the same
held-out classes. Writes `study.md` (mIoU@0.5/@0.35 with 95% CIs, wall time,
peak memory) and `validation.png` (validation mIoU@0.5 over meta-steps) under
--out. Finished runs are reused when the study is run again (--fresh: retrain).
The default takes about 20 minutes on a 2-core CPU.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import subprocess
import sys
import time

from absl import flags

from meta_drn_tf import cli
from meta_drn_tf.errors import ConfigError

# What each configuration changes in the shared base settings. MAML++ and ANIL are the
# recipes of flags/mamlpp.flags and flags/anil.flags, their epoch counts scaled to the budget.
CONFIGS = {
    "maml": {"algo": "maml"},
    "fomaml": {"algo": "fomaml"},
    "metasgd": {"algo": "metasgd"},
    "reptile": {"algo": "reptile", "inner_steps": 3},
    "mamlpp": {"algo": "maml", "inner_steps": 3, "lslr": True, "per_step_norm": True, "lr_schedule": "cosine",
               "multi_step_loss_epochs": 0.1, "first_order_epochs": 0.25},
    "anil": {"algo": "maml", "adapt_layers": "upsample", "inner_steps": 3},
}
EPOCH_FRACTIONS = ("multi_step_loss_epochs", "first_order_epochs")

flags.DEFINE_list("configs", list(CONFIGS), f"Configurations to compare, from: {', '.join(CONFIGS)}.")
flags.DEFINE_integer("seeds", 1, "Repeat every configuration with seeds 0..N-1 (variance across seeds).")
flags.DEFINE_string("out", "runs/study", "Where the runs, study.md and validation.png go.")
flags.DEFINE_string("data_dir", "", "Dataset (default: the embedded synthetic one).")
flags.DEFINE_integer("image_size", 32, "Image size of every run.")
flags.DEFINE_float("width", 0.25, "Network width of every run.")
flags.DEFINE_integer("epochs", 8, "Epochs of every run (the budget: epochs x tasks_per_epoch / meta_batch_size).")
flags.DEFINE_integer("tasks_per_epoch", 80, "Training tasks per epoch.")
flags.DEFINE_integer("meta_batch_size", 4, "Tasks per meta-step.")
flags.DEFINE_integer("queries", 2, "Queries per training task.")
flags.DEFINE_float("inner_lr", 0.3, "Inner rate α (initial value of learned rates).")
flags.DEFINE_float("meta_lr", 3e-3, "Meta learning rate β.")
flags.DEFINE_integer("val_episodes", 40, "Validation episodes per epoch.")
flags.DEFINE_bool("fresh", False, "Retrain runs that already finished.")
FLAGS = flags.FLAGS
cli.check_paths(out="new_folder", data_dir="folder")


@dataclasses.dataclass
class Outcome:
    """One configuration at one seed."""

    name: str
    seed: int
    test: dict  # the run's test summary: METRICS with _ci95
    wall_s: float
    peak_rss_gib: float
    meta_steps: int


def run_config(name: str, seed: int):
    """The RunConfig of configuration `name` at `seed`."""
    from meta_drn_tf.runs.config import RunConfig

    changes = dict(CONFIGS[name])
    for key in EPOCH_FRACTIONS:
        if key in changes:
            changes[key] = max(1, round(changes[key] * FLAGS.epochs))
    base = dict(
        model_dir=os.path.join(FLAGS.out, name, f"seed{seed}"), data_dir=FLAGS.data_dir, seed=seed,
        image_size=FLAGS.image_size, width=FLAGS.width, epochs=FLAGS.epochs, tasks_per_epoch=FLAGS.tasks_per_epoch,
        meta_batch_size=FLAGS.meta_batch_size, queries=FLAGS.queries, inner_lr=FLAGS.inner_lr, meta_lr=FLAGS.meta_lr,
        val_episodes=FLAGS.val_episodes, lr_schedule="constant", baseline_at_end=False, export_at_end=False,
        save_every_minutes=5, fresh=FLAGS.fresh)
    return RunConfig.from_flags(**{**base, **changes})


def train_one(name: str, seed: int) -> Outcome:
    """Trains (or reuses) one run in a child process; its wall time and peak RSS are its own."""
    config = run_config(name, seed)
    record = os.path.join(FLAGS.out, name, f"seed{seed}.json")
    if os.path.exists(record) and not FLAGS.fresh:
        with open(record) as f:
            saved = json.load(f)
        if saved.pop("config") == config.replace(fresh=False).to_flags():
            print(f"{name} seed {seed}: finished earlier ({record})")
            return Outcome(**saved)
    flagfile = os.path.join(FLAGS.out, name, f"seed{seed}.flags")
    os.makedirs(os.path.dirname(flagfile), exist_ok=True)
    with open(flagfile, "w") as f:
        f.writelines(f"--{k}={v}\n" for k, v in config.to_flags().items() if v is not None)
    print(f"\n=== {name}, seed {seed}: python -m meta_drn_tf.train --flagfile={flagfile}", flush=True)
    start = time.time()
    child = subprocess.Popen([sys.executable, "-m", "meta_drn_tf.train", f"--flagfile={flagfile}"])
    _, status, usage = os.wait4(child.pid, 0)
    code = os.waitstatus_to_exitcode(status)  # os.wait4 reaped the child: Popen never sees its status
    if code:
        cli.fail(f"{name} seed {seed} failed (exit {code}); its run is in {config.model_dir}; "
                 "run the study again to resume it", code)
    wall = time.time() - start
    with open(os.path.join(config.model_dir, "test", "summary.json")) as f:
        test = next(iter(json.load(f).values()))
    steps = config.trainer.epochs * max(1, config.trainer.tasks_per_epoch // config.trainer.meta_batch_size)
    outcome = Outcome(name, seed, test, wall, usage.ru_maxrss / 2**20, steps)  # ru_maxrss is KiB on Linux
    with open(record, "w") as f:
        json.dump({**dataclasses.asdict(outcome), "config": config.replace(fresh=False).to_flags()}, f, indent=1)
    return outcome


def validation_curve(model_dir: str, tag: str = "miou@0.5") -> tuple[list[float], list[float]]:
    """(meta-steps, values) of a validation scalar from the run's TensorBoard events."""
    import tensorflow as tf

    points = {}
    for path in sorted(glob.glob(os.path.join(model_dir, "logs", "validation", "events.out.tfevents.*"))):
        for record in tf.data.TFRecordDataset(path):
            event = tf.compat.v1.Event.FromString(record.numpy())
            for value in event.summary.value:
                if value.tag == tag:
                    points[event.step] = float(tf.make_ndarray(value.tensor))
    steps = sorted(points)
    return [float(s) for s in steps], [points[s] for s in steps]


def table(outcomes: list[Outcome]) -> str:
    """The Markdown table: per configuration, mean over seeds (± 95% CI over test classes, mean over seeds),
    and the field's summed mIoU and FB-IoU of the same test episodes (± their spread over seeds)."""
    import numpy as np

    lines = ["| configuration | mIoU@0.5 | mIoU@0.35 | soft IoU | summed mIoU@0.5 | FB-IoU@0.5 | wall time | peak RSS "
             "| meta-steps |", "|---|---|---|---|---|---|---|---|---|"]
    for name in dict.fromkeys(o.name for o in outcomes):
        runs = [o for o in outcomes if o.name == name]

        def cell(metric, runs=runs):
            mean, ci = np.mean([r.test[metric] for r in runs]), np.mean([r.test[metric + "_ci95"] for r in runs])
            spread = f", seeds ±{np.std([r.test[metric] for r in runs]):.4f}" if len(runs) > 1 else ""
            return f"{mean:.4f} ± {ci:.4f}{spread}"

        def summed(metric, runs=runs):  # the field's scores of the same episodes: no interval over classes
            values = [r.test.get(metric, float("nan")) for r in runs]
            return f"{np.mean(values):.4f}" + (f" ± {np.std(values):.4f}" if len(runs) > 1 else "")

        lines.append(f"| {name} | {cell('iou@0.5')} | {cell('iou@0.35')} | {cell('soft_iou')} | "
                     f"{summed('summed_miou@0.5')} | {summed('fb_iou@0.5')} | "
                     f"{np.mean([r.wall_s for r in runs]):.0f} s | {max(r.peak_rss_gib for r in runs):.2f} GiB | "
                     f"{runs[0].meta_steps} |")
    from meta_drn_tf.training.evaluation import non_finite_note

    return "\n".join(lines) + non_finite_note({f"{o.name} seed {o.seed}": o.test for o in outcomes})


def overlapping(outcomes: list[Outcome], metric: str = "iou@0.5") -> tuple[str, list[str]]:
    """The best configuration by `metric` and those whose 95% intervals overlap its interval."""
    import numpy as np

    stats = {}
    for o in outcomes:
        stats.setdefault(o.name, []).append((o.test[metric], o.test[metric + "_ci95"]))
    means = {n: (np.mean([m for m, _ in v]), np.mean([c for _, c in v])) for n, v in stats.items()}
    best = max(means, key=lambda n: means[n][0])
    low = means[best][0] - means[best][1]
    return best, [n for n, (m, c) in means.items() if n != best and m + c >= low]


def main(argv):
    del argv
    from meta_drn_tf.hardware import describe
    from meta_drn_tf.results import visualize

    unknown = [c for c in FLAGS.configs if c not in CONFIGS]
    if unknown:
        raise ConfigError(f"--configs: unknown {unknown}; choose from {', '.join(CONFIGS)}")
    for name in FLAGS.configs:
        run_config(name, 0)  # every configuration valid before the first one trains
    outcomes = [train_one(name, seed) for name in FLAGS.configs for seed in range(FLAGS.seeds)]

    best, within = overlapping(outcomes)
    example = run_config(FLAGS.configs[0], 0)
    report = (f"{table(outcomes)}\n\n"
              f"Same budget for every row: {outcomes[0].meta_steps} meta-steps of {FLAGS.meta_batch_size} tasks "
              f"({FLAGS.image_size}x{FLAGS.image_size}, width {FLAGS.width}, "
              f"{'synthetic dataset' if not FLAGS.data_dir else FLAGS.data_dir}), seeds 0..{FLAGS.seeds - 1}; "
              f"tested on the held-out test classes, every test episode, {example.shots}-shot. "
              "± is the 95% confidence interval over test classes; wall time includes start-up and evaluation; "
              f"peak RSS is the training process's.\n\nBest mIoU@0.5: {best}. "
              + (f"Within its 95% interval: {', '.join(within)}." if within else "No other row's interval reaches it.")
              + f"\n\nMachine: {describe()}\n")
    os.makedirs(FLAGS.out, exist_ok=True)
    with open(os.path.join(FLAGS.out, "study.md"), "w") as f:
        f.write(report)
    curves = {name: validation_curve(run_config(name, 0).model_dir) for name in FLAGS.configs}
    chart = visualize.line_chart(curves, "validation mIoU@0.5 (seed 0)", "meta-step", "mIoU@0.5")
    visualize.save_png(os.path.join(FLAGS.out, "validation.png"), chart)
    print("\n" + report + f"\nwrote {FLAGS.out}/study.md and {FLAGS.out}/validation.png")


if __name__ == "__main__":
    cli.run(main)
