"""The training app: tiny end-to-end runs, resume after kill -9, TensorBoard, NaN guard."""

import collections
import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf
import warm

from meta_drn_tf import cli
from meta_drn_tf.errors import ConfigError, NonFiniteLoss
from meta_drn_tf.runs.config import RunConfig
from meta_drn_tf.training.trainer import train

TINY = dict(image_size=16, width=0.0625, synthetic_classes=12, synthetic_images=4, queries=1,
            meta_batch_size=2, tasks_per_epoch=4, epochs=1, val_episodes=2, inner_lr=0.01,
            log_every_steps=1, save_every_minutes=1000)


def _cfg(tmp_path, **overrides):
    """A tiny run's config; first-order MAML, quick to trace, unless a test names the algorithm (what
    these tests check is the same for all four: test_tiny_run_per_algorithm runs each)."""
    return RunConfig.from_flags(**{**TINY, "algo": "fomaml", "model_dir": str(tmp_path), "test_at_end": False,
                                  "export_at_end": False, **overrides})


def _events(directory):
    tags = set()
    for path in glob.glob(os.path.join(directory, "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            tags |= {v.tag for v in event.summary.value}
    return tags


FinishedRun = collections.namedtuple("FinishedRun", "path final epochs")


def _tiny_run(path, **overrides):
    """A one-epoch run in `path`: train()'s result and the epochs an action added from outside saw."""
    epochs = []  # train() passes the action to the Controller
    return train(_cfg(path, **overrides), epoch_actions=[epochs.append]), epochs


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A completed one-epoch first-order MAML run, copied by each test that continues it."""
    path = tmp_path_factory.mktemp("finished")
    final, epochs = _tiny_run(path)
    return FinishedRun(path, final, epochs)


@pytest.mark.slow
@pytest.mark.parametrize("algo", ["maml", "fomaml", "reptile", "metasgd"])
def test_tiny_run_per_algorithm_writes_checkpoints_and_events(tmp_path, algo, request):
    if algo == "fomaml":  # the shared run's
        tmp_path, final, epochs = request.getfixturevalue("finished_run")
    else:
        final, epochs = _tiny_run(tmp_path, algo=algo)
    assert final["epochs"] == 1 and 0 <= final["best_val_soft_iou"] <= 1
    assert [(e.epoch, e.improved, e.summary["soft_iou"]) for e in epochs] == [(1, True, final["best_val_soft_iou"])]
    assert tf.train.latest_checkpoint(str(tmp_path / "checkpoints"))
    assert tf.train.latest_checkpoint(str(tmp_path / "best"))
    scalars = _events(str(tmp_path / "logs" / "train"))
    assert {"loss", "grad_norm", "meta_lr", "step_time_s", "tasks_per_s"} <= scalars
    assert ({"alpha/mean", "alpha/min", "alpha/max"} <= scalars) == (algo == "metasgd")
    assert {"soft_iou", "miou@0.5", "miou@0.35", "loss", "tasks"} <= _events(str(tmp_path / "logs" / "validation"))


@pytest.mark.slow
def test_full_lslr_per_step_norm_run_evaluates_on_test_classes_and_exports(tmp_path):
    final = train(_cfg(tmp_path, test_at_end=True, export_at_end=True, lslr=True, per_step_norm=True,
                       inner_steps=2, lr_schedule="cosine"))
    # LSLR's rates in TensorBoard: one curve per weight tensor and inner step.
    rates = {t for t in _events(str(tmp_path / "logs" / "train")) if t.startswith("inner_lr/")}
    assert {"inner_lr/upsample/conv/kernel/step1", "inner_lr/upsample/conv/kernel/step2"} <= rates
    assert os.path.isfile(tmp_path / "test" / "per_class.csv")
    assert final["test"]["classes"] >= 2 and 0 <= final["test"]["iou@0.5"] <= 1
    assert final["export"] == str(tmp_path / "export" / "1")
    assert os.path.isfile(tmp_path / "export" / "1" / "saved_model.pb")
    assert os.path.isfile(tmp_path / "best_model.keras")


@pytest.mark.slow
def test_tensorboard_lists_the_runs_figures_under_scalars(finished_run):
    """Read with TensorBoard's own data provider (what its Scalars dashboard lists), not TensorFlow's event
    reader: figures written as tensors must carry the scalars plugin's metadata to show there."""
    from tensorboard import context
    from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer

    logs = str(finished_run.path / "logs")
    multiplexer = plugin_event_multiplexer.EventMultiplexer()
    multiplexer.AddRunsFromDirectory(logs)
    multiplexer.Reload()
    provider = data_provider.MultiplexerDataProvider(multiplexer, logs)
    scalars = provider.read_scalars(context.RequestContext(), experiment_id="", plugin_name="scalars",
                                    downsample=1000)
    assert {"loss", "grad_norm", "meta_lr", "step_time_s", "tasks_per_s", "bad_batches"} <= set(scalars["train"])
    assert {"soft_iou", "miou@0.5", "miou@0.35", "loss", "non_finite_queries", "epoch"} <= set(scalars["validation"])
    assert [p.value for p in scalars["validation"]["epoch"]] == [1.0]
    assert 0 <= scalars["validation"]["soft_iou"][0].value <= 1
    # The field's scores of the same episodes, beside the paper's.
    assert {"summed_miou@0.5", "fb_iou@0.5", "summed_miou@0.35", "fb_iou@0.35"} <= set(scalars["validation"])
    assert 0 <= scalars["validation"]["fb_iou@0.5"][0].value <= 1
    assert all(np.isfinite(p.value) for run in scalars.values() for points in run.values() for p in points)


def _copy(run, tmp_path, **saved):
    """A copy of `run` in tmp_path; `saved`: flags its flags.json says it was trained with instead (a run
    that diverges: a resumed run cannot change them)."""
    shutil.copytree(run, tmp_path, dirs_exist_ok=True)
    flags_file = tmp_path / "flags.json"
    cfg = json.loads(flags_file.read_text())
    flags_file.write_text(json.dumps({**cfg, "model_dir": str(tmp_path), **saved}))
    return tmp_path


@pytest.mark.slow
def test_resume_refuses_other_model_shaping_flags(finished_run, tmp_path):
    _copy(finished_run.path, tmp_path)
    with pytest.raises(ConfigError, match="--width=0.0625"):
        train(_cfg(tmp_path, width=0.125, epochs=2))
    # --fresh starts over instead.
    assert train(_cfg(tmp_path, width=0.125, fresh=True))["epochs"] == 1


@pytest.mark.slow
def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(finished_run, tmp_path):
    _copy(finished_run.path, tmp_path, inner_lr=1e30)
    good = tf.train.latest_checkpoint(str(tmp_path / "checkpoints"))
    with pytest.raises(NonFiniteLoss, match=os.path.basename(good)):
        train(_cfg(tmp_path, epochs=2, inner_lr=1e30))
    assert tf.train.latest_checkpoint(str(tmp_path / "checkpoints")) == good
    reader = tf.train.load_checkpoint(good)
    assert all(np.isfinite(reader.get_tensor(k)).all() for k in reader.get_variable_to_dtype_map()
               if reader.get_variable_to_dtype_map()[k].is_floating)


@pytest.mark.slow
def test_skip_nonfinite_counts_bad_batches_and_goes_on(finished_run, tmp_path):
    _copy(finished_run.path, tmp_path, inner_lr=1e30)
    final = train(_cfg(tmp_path, epochs=2, inner_lr=1e30, skip_nonfinite=True))
    assert final["epochs"] == 2
    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(str(tmp_path / "checkpoints")))
    bad = [k for k in reader.get_variable_to_dtype_map() if k.startswith("state/bad_batches")]
    assert int(reader.get_tensor(bad[0])) == 2


def _command(model_dir, **overrides):
    # MAML++'s annealing: the kill lands in the first-order epochs, the resumed run crosses to second order.
    flags = {**TINY, "epochs": 2, "tasks_per_epoch": 6, "save_every_steps": 1, "deterministic": True,
             "test_at_end": False, "export_at_end": False, "model_dir": model_dir, "first_order_epochs": 1,
             "lslr": True, **overrides}
    return [sys.executable, "-m", "meta_drn_tf.train"] + [f"--{k}={v}" for k, v in flags.items()]


def _weights(model_dir):
    path = tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints"))
    reader = tf.train.load_checkpoint(path)
    names = sorted(k for k in reader.get_variable_to_dtype_map() if k.startswith("learner/"))
    return {k: reader.get_tensor(k) for k in names}


def _saved_step(model_dir):
    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints")))
    return int(next(reader.get_tensor(k) for k in reader.get_variable_to_dtype_map()
                    if k.startswith("state/global_step")))


def _wait_for_checkpoint(proc, model_dir, name):
    state = os.path.join(model_dir, "checkpoints", "checkpoint")
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if os.path.exists(state) and f'"{name}"' in open(state).read():
            return
        time.sleep(0.05)
    assert proc.poll() is None, f"the run ended before it wrote {name}"
    raise AssertionError(f"no {name} within 240 s")


@pytest.mark.slow
def test_sigterm_then_kill_9_and_rerun_end_with_the_same_weights(tmp_path):
    straight, interrupted = str(tmp_path / "straight"), str(tmp_path / "interrupted")
    # Op determinism makes the load irrelevant to the results. The interrupted run is given far more epochs,
    # so that it cannot end before a signal; it finishes with the straight run's 2.
    uninterrupted = warm.Popen(_command(straight), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    terminated = warm.Popen(_command(interrupted, epochs=1000), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    _wait_for_checkpoint(terminated, interrupted, "ckpt-1")
    terminated.send_signal(signal.SIGTERM)
    _, err = terminated.communicate(timeout=240)
    assert terminated.returncode == cli.EXIT_PREEMPTED, err[-2000:]
    # It finished the step it was in, saved it, and said so in one line.
    step = _saved_step(interrupted)
    assert 1 <= step < 5, f"stopped at global step {step}: the signal came too late to compare"
    said = re.search(r"error: SIGTERM: stopped at epoch (\d+), step (\d+) of 3, and saved (\S+)\. Run the same "
                     r"command again to resume\.", err)
    assert said, err[-2000:]
    assert 3 * (int(said[1]) - 1) + int(said[2]) == step
    assert said[3] == os.path.join(interrupted, "checkpoints", f"ckpt-{step}")

    # Resumed, then killed mid-run (perhaps while it writes a checkpoint), then resumed to the end.
    killed = warm.Popen(_command(interrupted, epochs=1000), stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL)
    _wait_for_checkpoint(killed, interrupted, f"ckpt-{step + 1}")
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert _saved_step(interrupted) < 6, "the killed run got past the 2 epochs it resumes to"
    resumed = warm.run(_command(interrupted), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "Resuming" in resumed.stdout and "meta-gradient: second order" in resumed.stdout, resumed.stdout[-2000:]
    assert uninterrupted.wait(timeout=300) == 0

    a, b = _weights(straight), _weights(interrupted)
    assert len(a) > 10 and a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@pytest.mark.slow
def test_one_writer_per_run_while_evaluate_reads_it(tmp_path):
    run = str(tmp_path / "run")
    plain = dict(algo="fomaml", lslr=False, first_order_epochs=0, deterministic=False)  # quick to trace
    holder = warm.Popen(_command(run, epochs=1000, **plain), stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_checkpoint(holder, run, "ckpt-1")
        # A second train and a --fresh one, and evaluate: reading a run in training is safe (it restores
        # a checkpoint and writes its own folder). (After the holder dies, the kill -9 test resumes.)
        others = [warm.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                  for args in (_command(run, **plain), _command(run, fresh=True, **plain),
                               [sys.executable, "-m", "meta_drn_tf.evaluate", f"--model_dir={run}",
                                "--checkpoint=latest", "--episodes=2", "--baseline=false"])]
        (_, second), (_, fresh), (_, evaluated) = (p.communicate(timeout=300) for p in others)
        assert holder.poll() is None, "the holder ended before the others were refused"
    finally:
        holder.send_signal(signal.SIGINT)
        _, err = holder.communicate(timeout=240)
    for refused, stderr in zip(others[:2], (second, fresh)):
        assert refused.returncode == cli.EXIT_USAGE, stderr[-2000:]
        line = stderr.strip().splitlines()[-1]
        assert line.startswith(f"error: --model_dir {run} is being trained by PID {holder.pid} on "), line
    assert others[2].returncode == 0, evaluated[-2000:]
    assert os.path.isfile(os.path.join(run, "eval_test", "table.md"))
    # Ctrl-C: the step finished and saved, exit 130; --fresh deleted nothing while the run was held.
    assert holder.returncode == cli.EXIT_INTERRUPTED, err[-2000:]
    assert "error: SIGINT: stopped at epoch" in err and "Run the same command again to resume." in err
    assert _saved_step(run) >= 1 and os.path.isfile(os.path.join(run, "flags.json"))


def test_fresh_keeps_a_folder_that_holds_no_run(tmp_path):
    (tmp_path / "thesis.tex").write_text("years of work")
    with pytest.raises(ConfigError, match="holds files but no training run"):
        train(_cfg(tmp_path, fresh=True))
    assert (tmp_path / "thesis.tex").read_text() == "years of work"


@pytest.mark.slow
def test_evaluate_export_and_visualize_commands_on_a_run(finished_run, tmp_path):
    run = _copy(finished_run.path, tmp_path / "run")
    # Every class of the dataset, 1-shot and 2-shot rows in one invocation (the test split's own report
    # folder: test_one_writer_per_run_while_evaluate_reads_it).
    out = warm.run([sys.executable, "-m", "meta_drn_tf.evaluate", f"--model_dir={run}", "--split=all",
                   "--shots=1,2", "--episodes=3"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "12 classes" in out.stdout  # TINY's synthetic_classes: train, val and test together
    table = (run / "eval_all" / "table.md").read_text()
    assert "mIoU (thresh = 0.5)" in table and "random init" in table and "1 step(s)" in table
    summary = json.loads((run / "eval_all" / "summary.json").read_text())
    assert list(summary) == ["Meta-DRN, fomaml, 1-shot", "same adaptation, random init, 1-shot",
                             "copy the example's mask, 1-shot", "Meta-DRN, fomaml, 2-shot",
                             "same adaptation, random init, 2-shot", "copy the example's mask, 2-shot"]
    assert (run / "eval_all" / "per_class.csv").read_text().startswith("class,queries,loss,soft_iou")

    export_dir = tmp_path / "saved_models" / "tiny"
    out = warm.run([sys.executable, "-m", "meta_drn_tf.export", f"--model_dir={run}",
                   f"--export_dir={export_dir}"],
                   capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert (export_dir / "1" / "saved_model.pb").is_file()

    png = tmp_path / "fig4.png"
    tool = os.path.join(os.path.dirname(__file__), "..", "tools", "draw_fig4.py")
    listed = tmp_path / "classes.txt"
    from meta_drn_tf.data import load_split
    from meta_drn_tf.runs.config import RunConfig

    config = RunConfig.load(str(run))
    names = load_split(config.data, "all", config.network.image_size, seed=config.seed, progress=False).class_names
    listed.write_text("\n".join(names[:3]) + "\n")
    out = warm.run([sys.executable, tool, f"--model_dir={run}", f"--out={png}", f"--classes_file={listed}",
                   "--classes=5", "--queries=2"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    import cv2

    picture = cv2.imread(str(png))
    assert picture.shape[1] == 16 * 3 and picture.shape[0] == 3 * 16 + 2 * 2  # the 3 listed classes


def _scalar_series(directory, tag):
    values = {}
    for path in glob.glob(os.path.join(directory, "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for v in event.summary.value:
                if v.tag == tag:
                    values[event.step] = float(tf.make_ndarray(v.tensor))
    return [values[s] for s in sorted(values)]


def _checkpoint_value(model_dir, name):
    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints")))
    (key,) = [k for k in reader.get_variable_to_dtype_map() if name in k]
    return reader.get_tensor(key)


@pytest.mark.slow
def test_a_float16_overflow_skips_its_step_halves_the_scale_and_training_goes_on(tmp_path, monkeypatch):
    """Dynamic loss scaling's normal event: not a NonFiniteLoss stop, without --skip_nonfinite."""
    from meta_drn_tf.training.task import MetaTrainingTask

    original, steps = MetaTrainingTask.train_step, []

    def step_with_an_overflow(self, batch, epoch):
        steps.append(epoch)
        if len(steps) == 3:  # mid-run, one step's values overflow float16
            batch = {**batch, "query_images": batch["query_images"] * np.inf}
        return original(self, batch, epoch)

    monkeypatch.setattr(MetaTrainingTask, "train_step", step_with_an_overflow)
    final = train(_cfg(tmp_path, precision="float16", epochs=2, tasks_per_epoch=6))
    assert final["epochs"] == 2 and len(steps) == 6
    assert float(_checkpoint_value(str(tmp_path), "loss_scale")) == 2.0**14  # 2**15, halved once
    assert int(_checkpoint_value(str(tmp_path), "optimizer/_iterations")) == 5  # one update of six skipped
    assert int(_checkpoint_value(str(tmp_path), "bad_batches")) == 0
    train_logs = str(tmp_path / "logs" / "train")
    assert _scalar_series(train_logs, "float16/overflows") == [0, 0, 1, 1, 1, 1]
    assert _scalar_series(train_logs, "float16/loss_scale") == [2.0**15] * 3 + [2.0**14] * 3


@pytest.mark.slow
def test_float16_steps_still_non_finite_at_a_loss_scale_of_1_stop_the_run(tmp_path):
    """Halving from 2**15 reaches 1 after 15 overflows; a 16th non-finite step is not an overflow."""
    with pytest.raises(NonFiniteLoss, match="epoch 1, step 16"):
        train(_cfg(tmp_path, precision="float16", inner_lr=1e30, tasks_per_epoch=40))
