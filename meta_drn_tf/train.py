"""Meta-train Meta-DRN: the main job.

    python -m meta_drn_tf.train --flagfile=flags/maml.flags --data_dir=/data/fss1000 --model_dir=runs/maml
    python -m meta_drn_tf.train --flagfile=flags/quickstart.flags      # CPU, embedded synthetic data

One *epoch* is `--tasks_per_epoch` training tasks (default: as many tasks as
the training split has images, i.e. 7000 for FSS-1000), that is
tasks_per_epoch / meta_batch_size meta-steps, followed by validation on the
validation classes.

Re-running the same command resumes from the latest checkpoint in
--model_dir: epoch and step, optimizer and schedule state, and the data
position (tasks are a pure function of --seed and their index), so a run
killed at any moment ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time

from absl import flags, logging

from meta_drn_tf import cli
from meta_drn_tf.errors import ConfigError, NonFiniteLoss, WorkerLost
from meta_drn_tf.hardware import bfloat16_is_emulated
from meta_drn_tf.runs import FLAGS_FILE, build_learner, load_splits, random_init_learner

flags.DEFINE_string("model_dir", "runs/default", "Where checkpoints, TensorBoard logs, reports and exports go.")
flags.DEFINE_string("data_dir", "", "FSS-1000 (or a folder in its layout: ROOT/<class>/<n>.jpg + <n>.png). "
                    "Empty: the embedded synthetic dataset.")
flags.DEFINE_string("val_classes_file", "", "Optional class list (one a line) for validation; overrides the split.")
flags.DEFINE_string("test_classes_file", "", "Optional class list (one a line) for testing; overrides the split.")
flags.DEFINE_bool("skip_bad_files", False, "Train on the usable images when some image/mask files cannot be used "
                  "(they are listed and counted); default: stop and list them.")
flags.DEFINE_integer("synthetic_classes", 100, "Object families in the synthetic dataset (no --data_dir).")
flags.DEFINE_integer("synthetic_images", 10, "Images per synthetic class.")
flags.DEFINE_enum("algo", "maml", ["maml", "fomaml", "metasgd", "reptile"], "Meta-learning algorithm.")
flags.DEFINE_integer("image_size", 224, "Input height and width (multiple of 4).")
flags.DEFINE_float("width", 1.0, "Filter-count multiplier; 1.0 is the paper's network.")
flags.DEFINE_integer("shots", 1, "Support images per task (k).")
flags.DEFINE_integer("queries", 5, "Query images per training task (q).")
flags.DEFINE_integer("meta_batch_size", 5, "Tasks per meta-update (global, over all replicas).")
flags.DEFINE_float("inner_lr", 1e-3, "Inner-loop learning rate α (Meta-SGD: initial value).")
flags.DEFINE_integer("inner_steps", None, "Inner-loop steps (default: 1; Reptile 5).")
flags.DEFINE_float("meta_lr", 1e-3, "Initial meta learning rate β (AdamW).")
flags.DEFINE_float("weight_decay", 1e-2, "AdamW weight decay.")
flags.DEFINE_enum("lr_schedule", "plateau", ["plateau", "linear", "constant"],
                  "plateau: multiply by --lr_factor when validation soft IoU has not improved for "
                  "--lr_patience epochs; linear: decay to --final_meta_lr over all epochs.")
flags.DEFINE_integer("lr_patience", 8, "Epochs without improvement before a plateau decay.")
flags.DEFINE_float("lr_factor", 0.5, "Plateau decay factor.")
flags.DEFINE_float("final_meta_lr", 3e-5, "End of the linear schedule.")
flags.DEFINE_integer("epochs", 200, "Epochs to train.")
flags.DEFINE_integer("tasks_per_epoch", 0, "Training tasks per epoch; 0: the number of training images.")
flags.DEFINE_integer("val_episodes", 0, "Validation episodes per epoch (evenly spread); 0: all.")
flags.DEFINE_integer("eval_inner_steps", None, "Inner steps at validation/test time (default: training's).")
flags.DEFINE_integer("seed", 0, "Seeds the initial weights and the task stream.")
flags.DEFINE_enum("precision", "float32", ["float32", "bfloat16", "float16"], "Compute precision.")
flags.DEFINE_bool("jit_compile", False, "Compile the meta-train step with XLA.")
flags.DEFINE_bool("deterministic", False, "Enable TensorFlow op determinism (bit-exact resumes on GPUs).")
flags.DEFINE_float("save_every_minutes", 10.0, "Also checkpoint mid-epoch this often.")
flags.DEFINE_integer("save_every_steps", 0, "Also checkpoint every N meta-steps (0: off).")
flags.DEFINE_integer("log_every_steps", 10, "TensorBoard scalars every N meta-steps.")
flags.DEFINE_bool("skip_nonfinite", False, "Skip (and count) a meta-batch with a non-finite loss instead of stopping.")
flags.DEFINE_bool("fresh", False, "Delete the run in --model_dir and start afresh (default: resume).")
flags.DEFINE_bool("test_at_end", True, "Evaluate the best checkpoint on the test classes at the end.")
flags.DEFINE_bool("baseline_at_end", True, "At the end, also evaluate the same adaptation from a random initialisation.")
flags.DEFINE_bool("export_at_end", True, "Export a TF Serving SavedModel of the best checkpoint at the end.")
flags.DEFINE_enum("strategy", "auto", ["auto", "one_device", "mirrored", "multi_worker", "tpu"],
                  "tf.distribute strategy (multi_worker reads TF_CONFIG).")
flags.DEFINE_integer("cpu_devices", 1, "Split the CPU into N logical devices (testing replicas without GPUs).")
flags.DEFINE_float("collective_timeout_s", 300.0, "multi_worker: fail when a collective waits longer (dead worker).")

FLAGS = flags.FLAGS

for _name in ("shots", "queries", "meta_batch_size", "epochs", "synthetic_images", "log_every_steps", "cpu_devices"):
    flags.register_validator(_name, lambda v: v >= 1, message="must be at least 1")
for _name in ("tasks_per_epoch", "val_episodes", "save_every_steps"):
    flags.register_validator(_name, lambda v: v >= 0, message="must be 0 or more")
for _name in ("width", "inner_lr", "meta_lr", "lr_factor", "collective_timeout_s"):
    flags.register_validator(_name, lambda v: v > 0, message="must be positive")
flags.register_validator("image_size", lambda v: v >= 4 and v % 4 == 0,
                         message="must be a positive multiple of 4 (two stride-2 stages, then x4 upsampling)")
flags.register_validator("inner_steps", lambda v: v is None or v >= 1, message="must be at least 1")
flags.register_validator("eval_inner_steps", lambda v: v is None or v >= 1, message="must be at least 1")
flags.register_validator("synthetic_classes", lambda v: v >= 3, message="must be at least 3 (train/val/test split)")

# Flags that define the network and its weights: a run cannot resume under others.
MODEL_FLAGS = ("algo", "image_size", "width")
# Flags whose change makes a resumed run differ from an uninterrupted one.
RUN_FLAGS = MODEL_FLAGS + ("data_dir", "shots", "queries", "meta_batch_size", "seed", "tasks_per_epoch",
                           "synthetic_classes", "synthetic_images", "inner_steps", "inner_lr")


def _own_flags():
    return FLAGS.get_flags_for_module(sys.modules[__name__])


def run_flags() -> dict:
    """The flags of this module with their values (what a run is)."""
    return {f.name: f.value for f in _own_flags()}


def default_config(**overrides) -> dict:
    """A run configuration: the flags' defaults with `overrides` (for `train()` from Python)."""
    cfg = {f.name: f.default for f in _own_flags()}
    unknown = set(overrides) - set(cfg)
    if unknown:
        raise ValueError(f"unknown training settings: {sorted(unknown)}")
    return {**cfg, **overrides}


def check_model_dir(model_dir: str, current: dict) -> None:
    """Saves the run's flags; refuses to resume under other model-shaping flags."""
    path = os.path.join(model_dir, FLAGS_FILE)
    if os.path.exists(path):
        with open(path) as f:
            saved = json.load(f)
        changed = [k for k in MODEL_FLAGS if saved.get(k) != current[k]]
        if changed:
            raise ConfigError(
                f"--model_dir {model_dir} holds a run with "
                + ", ".join(f"--{k}={saved.get(k)}" for k in changed)
                + " but this command has " + ", ".join(f"--{k}={current[k]}" for k in changed)
                + ". Use another --model_dir, the run's flags, or --fresh to delete it and start afresh."
            )
        for k in RUN_FLAGS:
            if saved.get(k) != current[k] and k not in MODEL_FLAGS:
                logging.warning("--%s changed from %r to %r: the resumed run will differ from the original",
                                k, saved.get(k), current[k])
    os.makedirs(model_dir, exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(current, f, indent=1, sort_keys=True)
    os.replace(path + ".tmp", path)
    with open(os.path.join(model_dir, "flags.txt"), "w") as f:  # reusable as --flagfile
        f.writelines(f"--{k}={'' if v is None else v}\n" for k, v in sorted(current.items()) if v is not None)


def make_state():
    import tensorflow as tf

    state = tf.Module(name="train_state")
    state.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
    state.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step_in_epoch")
    state.global_step = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")
    state.best = tf.Variable(-1.0, dtype=tf.float64, trainable=False, name="best_val_soft_iou")
    state.wait = tf.Variable(0, dtype=tf.int64, trainable=False, name="plateau_wait")
    state.bad_batches = tf.Variable(0, dtype=tf.int64, trainable=False, name="bad_batches")
    return state


def linear_lr(cfg: dict, global_step: int, total_steps: int) -> float:
    start, end = cfg["meta_lr"], cfg["final_meta_lr"]
    return start + (end - start) * min(1.0, global_step / max(1, total_steps))


def all_finite(variables) -> bool:
    import numpy as np

    return all(np.isfinite(v.numpy()).all() for v in variables)


def validation_images(kept: list[dict], threshold: float = 0.5):
    from meta_drn_tf import visualize

    rows = [visualize.task_row(t["support_images"][0], t["support_masks"][0], t["query_images"][:3],
                               t["probabilities"][:3], t["iou"][:3], t["query_masks"][:3],
                               title=t["class_name"], threshold=threshold) for t in kept]
    return visualize.grid(rows)


def train(cfg: dict) -> dict:
    """Runs (or resumes) the training described by `cfg` (the flags); returns the final summary."""
    import keras
    import tensorflow as tf

    from meta_drn_tf import distribute, serving
    from meta_drn_tf.data.episodes import BankTensors, training_tasks
    from meta_drn_tf.evaluation import evaluate_bank, evaluate_settings, write_reports

    model_dir = cfg["model_dir"]
    if cfg["deterministic"]:
        tf.config.experimental.enable_op_determinism()
    distribute.split_cpu(cfg["cpu_devices"])
    strategy = distribute.make_strategy(cfg["strategy"], cfg["collective_timeout_s"])
    chief = distribute.is_chief(strategy)
    per_replica = distribute.check_meta_batch(cfg["meta_batch_size"], strategy)
    if chief and cfg["fresh"] and os.path.isdir(model_dir):
        shutil.rmtree(model_dir)
    if chief:
        check_model_dir(model_dir, cfg)

    if cfg["precision"] == "bfloat16" and bfloat16_is_emulated():
        logging.warning("--precision=bfloat16 on a CPU without AVX512-BF16/AMX: TensorFlow emulates it, "
                        "about 15x slower than float32 here (see README, Benchmarks). Use float32.")
    # Every split the run will read, decoded now: a bad file stops the run before training, not after.
    banks = load_splits(cfg, ("train", "val", "test") if cfg["test_at_end"] and chief else ("train", "val"))
    train_bank, val_bank = banks["train"], banks["val"]
    tasks_per_epoch = cfg["tasks_per_epoch"] or int(train_bank.counts.sum())
    steps_per_epoch = max(1, tasks_per_epoch // cfg["meta_batch_size"])
    total_steps = steps_per_epoch * cfg["epochs"]
    print(f"train: {train_bank.num_classes} classes, validation: {val_bank.num_classes} classes; "
          f"{steps_per_epoch} meta-steps of {cfg['meta_batch_size']} tasks per epoch "
          f"on {strategy.num_replicas_in_sync} replica(s)")

    learner = build_learner(cfg, strategy)
    state = make_state()
    checkpoint = tf.train.Checkpoint(learner=learner, state=state)
    # Non-chief workers write their (required) share of a save to a scratch dir.
    ckpt_dir = os.path.join(model_dir, "checkpoints") if chief else tempfile.mkdtemp(prefix="worker_ckpt_")
    latest = tf.train.CheckpointManager(checkpoint, ckpt_dir, max_to_keep=2)
    best = tf.train.CheckpointManager(checkpoint, os.path.join(model_dir, "best") if chief else ckpt_dir + "_best",
                                      max_to_keep=1, checkpoint_name="best")
    # Every worker resumes from the chief's checkpoint (shared storage across machines).
    resume_from = tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints"))
    if resume_from:
        checkpoint.restore(resume_from).assert_existing_objects_matched()
        print(f"Resuming {resume_from}: epoch {int(state.epoch) + 1}, "
              f"step {int(state.step)} of {steps_per_epoch}")

    def save(manager, why: str) -> str | None:
        if not all_finite(learner.meta_variables):
            raise NonFiniteLoss(f"weights are not finite; not saving ({why}). "
                                f"Last good checkpoint: {latest.latest_checkpoint}")
        return manager.save(checkpoint_number=int(state.global_step))

    def summary_writer(name):
        if not chief:
            return tf.summary.create_noop_writer()
        return tf.summary.create_file_writer(os.path.join(model_dir, "logs", name))

    writer, val_writer = summary_writer("train"), summary_writer("validation")
    bank_tensors = BankTensors(train_bank)
    last_save = time.time()

    while int(state.epoch) < cfg["epochs"]:
        epoch, first_step = int(state.epoch), int(state.step)
        remaining = steps_per_epoch - first_step
        start_step = int(state.global_step)

        def dataset_fn(context: tf.distribute.InputContext):
            per_pipeline = per_replica * (context.num_replicas_in_sync // context.num_input_pipelines)
            ids = distribute.replica_task_ids(start_step, remaining, cfg["meta_batch_size"],
                                              per_pipeline, context.input_pipeline_id)
            tasks = training_tasks(bank_tensors, cfg["shots"], cfg["queries"], seed=cfg["seed"], task_ids=ids)
            return tasks.batch(per_replica, drop_remainder=True).prefetch(tf.data.AUTOTUNE)

        batches = strategy.distribute_datasets_from_function(dataset_fn)
        print(f"Epoch {epoch + 1}/{cfg['epochs']}")
        bar = keras.utils.Progbar(steps_per_epoch, stateful_metrics=["tasks/s", "meta_lr"], unit_name="step")
        if first_step:
            bar.update(first_step)
        tick = time.time()
        for batch in batches:
            if cfg["lr_schedule"] == "linear":
                learner.optimizer.learning_rate.assign(linear_lr(cfg, int(state.global_step), total_steps))
            logs = learner.meta_train_step(batch)
            loss, finite = float(logs["loss"]), bool(logs["finite"])
            now = time.time()
            step_time, tick = now - tick, now
            if not finite:
                state.bad_batches.assign_add(1)
                if not cfg["skip_nonfinite"]:
                    raise NonFiniteLoss(
                        f"non-finite loss at epoch {epoch + 1}, step {int(state.step) + 1}; the update was not "
                        f"applied and nothing was saved. Last good checkpoint: {latest.latest_checkpoint}. "
                        "Lower --meta_lr/--inner_lr, or pass --skip_nonfinite to skip such batches.")
                logging.warning("skipped a meta-batch with a non-finite loss (%d so far)", int(state.bad_batches))
            state.step.assign_add(1)
            state.global_step.assign_add(1)
            step = int(state.global_step)
            lr = float(learner.optimizer.learning_rate.numpy())
            bar.update(int(state.step), [("loss", loss), ("tasks/s", cfg["meta_batch_size"] / step_time),
                                         ("meta_lr", lr)])
            if step % cfg["log_every_steps"] == 0 or int(state.step) == steps_per_epoch:
                with writer.as_default(step=step):
                    tf.summary.scalar("loss", loss)
                    tf.summary.scalar("grad_norm", float(logs["grad_norm"]))
                    tf.summary.scalar("meta_lr", lr)
                    tf.summary.scalar("step_time_s", step_time)
                    tf.summary.scalar("tasks_per_s", cfg["meta_batch_size"] / step_time)
                    tf.summary.scalar("bad_batches", int(state.bad_batches))
                    if learner.alphas:
                        alpha = tf.concat([tf.reshape(a, [-1]) for a in learner.alphas], 0)
                        tf.summary.scalar("alpha/mean", float(tf.reduce_mean(alpha)))
                        tf.summary.scalar("alpha/abs_mean", float(tf.reduce_mean(tf.abs(alpha))))
                        tf.summary.scalar("alpha/min", float(tf.reduce_min(alpha)))
                        tf.summary.scalar("alpha/max", float(tf.reduce_max(alpha)))
                        tf.summary.histogram("alpha/values", alpha)
            due_steps = cfg["save_every_steps"] and step % cfg["save_every_steps"] == 0
            if (due_steps or time.time() - last_save > 60 * cfg["save_every_minutes"]) and int(state.step) < steps_per_epoch:
                save(latest, "mid-epoch")
                last_save = time.time()

        # Validation: the evaluation protocol on the validation classes.
        result, kept = evaluate_bank(learner, val_bank, cfg["shots"], cfg["val_episodes"] or None,
                                     steps=cfg["eval_inner_steps"], keep_predictions=4)
        summary = result.summary()
        soft = summary["soft_iou"]
        print(f"  validation: loss {summary['loss']:.4f}  soft IoU {soft:.4f}  "
              f"mIoU@0.5 {summary['iou@0.5']:.4f}  mIoU@0.35 {summary['iou@0.35']:.4f}")
        with val_writer.as_default(step=int(state.global_step)):
            tf.summary.scalar("loss", summary["loss"])
            tf.summary.scalar("soft_iou", soft)
            tf.summary.scalar("miou@0.5", summary["iou@0.5"])
            tf.summary.scalar("miou@0.35", summary["iou@0.35"])
            tf.summary.scalar("epoch", epoch + 1)
            tf.summary.image("tasks", validation_images(kept)[None], max_outputs=1,
                             description="support (green mask) | queries: prediction (red, IoU) and truth (blue)")
        writer.flush(), val_writer.flush()

        improved = soft > float(state.best) + 1e-6
        if improved:
            state.best.assign(soft)
            state.wait.assign(0)
        else:
            state.wait.assign_add(1)
            if cfg["lr_schedule"] == "plateau" and int(state.wait) > cfg["lr_patience"]:
                new_lr = float(learner.optimizer.learning_rate.numpy()) * cfg["lr_factor"]
                learner.optimizer.learning_rate.assign(new_lr)
                state.wait.assign(0)
                print(f"  validation soft IoU has not improved for {cfg['lr_patience']} epochs: meta_lr -> {new_lr:.3g}")
        state.epoch.assign_add(1)
        state.step.assign(0)
        if improved:
            save(best, "best")
        save(latest, "end of epoch")
        last_save = time.time()

    if not chief:
        shutil.rmtree(ckpt_dir, ignore_errors=True)
        shutil.rmtree(ckpt_dir + "_best", ignore_errors=True)
        return {}
    final = {"best_val_soft_iou": float(state.best), "epochs": int(state.epoch), "checkpoint": best.latest_checkpoint}
    checkpoint.restore(best.latest_checkpoint or latest.latest_checkpoint)
    keras.saving.save_model(learner.model, os.path.join(model_dir, "best_model.keras"))
    if cfg["test_at_end"]:
        test_bank = banks["test"]
        baseline = random_init_learner(cfg) if cfg["baseline_at_end"] else None
        results = evaluate_settings(learner, baseline, test_bank, [cfg["shots"]], progress=True,
                                    steps=cfg["eval_inner_steps"])
        rows = list(write_reports(results, os.path.join(model_dir, "test")).values())
        final["test"] = rows[0]
        if baseline is not None:
            final["test_random_init"] = rows[1]
        print(f"test: mIoU@0.5 {final['test']['iou@0.5']:.4f}  mIoU@0.35 {final['test']['iou@0.35']:.4f} "
              f"(reports in {os.path.join(model_dir, 'test')})")
    if cfg["export_at_end"]:
        final["export"] = serving.export(learner, os.path.join(model_dir, "export"), cfg["image_size"],
                                         cfg["width"], inner_steps=cfg["eval_inner_steps"])
        print(f"SavedModel: {final['export']}")
    return final


def main(argv):
    del argv
    import tensorflow as tf

    try:
        train(run_flags())
    except (tf.errors.UnavailableError, tf.errors.DeadlineExceededError, tf.errors.CancelledError) as e:
        raise WorkerLost(
            f"lost contact with another worker ({type(e).__name__}: {e.message.splitlines()[0]}). Restart every "
            f"worker with the same command to resume from the last checkpoint in "
            f"{os.path.join(FLAGS.model_dir, 'checkpoints')}.") from e


if __name__ == "__main__":
    cli.run(main)
