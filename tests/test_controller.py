"""The training controller and its actions alone, around a stand-in task (no network, no data)."""

import signal

import numpy as np
import pytest
import tensorflow as tf

from meta_drn_tf.errors import NonFiniteLoss, Stopped
from meta_drn_tf.meta import Phase
from meta_drn_tf.runs.config import TrainerConfig
from meta_drn_tf.training.actions import (
    BestMetric,
    EpochOutput,
    SaveBest,
    StepOutput,
    TrainingScalars,
    ValidationReport,
)
from meta_drn_tf.training.checkpoints import Checkpoints, TrainState
from meta_drn_tf.training.controller import Controller
from meta_drn_tf.training.schedules import Plateau, Schedule
from meta_drn_tf.training.stopping import StopRequest


class StandInLearner(tf.Module):
    """What the controller and the actions read of a learner: one weight, an optimizer's rate, a phase,
    the precision."""

    def __init__(self):
        super().__init__()
        self.weight = tf.Variable(1.0)
        self.optimizer = type("Optimizer", (), {"learning_rate": tf.Variable(0.1)})()
        self.model = type("Model", (), {"trainable_variables": [self.weight]})()
        self.adapted, self.step_rates, self.alphas = [], [], []
        self.config = type("Config", (), {"precision": "float32"})()

    @property
    def meta_variables(self):
        return [self.weight]

    def phase(self, epoch):
        return Phase(second_order=True, multi_step_loss=False)


class StandInTask:
    """Steps that add 1 to the weight; the losses are scripted per global step (NaN where asked)."""

    def __init__(self, steps_per_epoch, soft_ious, nan_at=(), on_step=None):
        self.learner, self.steps_per_epoch = StandInLearner(), steps_per_epoch
        self.soft_ious, self.nan_at, self.on_step = list(soft_ious), set(nan_at), on_step
        self.steps_run = []

    def batches(self, start_step, remaining):
        return iter(range(start_step, start_step + remaining))

    def train_step(self, global_step, epoch):
        self.steps_run.append(global_step)
        if self.on_step:
            self.on_step(global_step)
        finite = global_step not in self.nan_at
        if finite:
            self.learner.weight.assign_add(1.0)
        loss = 0.5 if finite else float("nan")
        return {"loss": tf.constant(loss), "grad_norm": tf.constant(1.0), "finite": tf.constant(float(finite))}

    def validate(self):
        return {"soft_iou": self.soft_ious.pop(0), "loss": 0.1, "iou@0.5": 0.2, "iou@0.35": 0.3,
                "summed_miou@0.5": 0.25, "fb_iou@0.5": 0.6, "summed_miou@0.35": 0.35, "fb_iou@0.35": 0.65}, []


@pytest.fixture(autouse=True)
def _no_pictures(monkeypatch):
    monkeypatch.setattr("meta_drn_tf.results.visualize.episode_grid", lambda kept: np.zeros((4, 4, 3), np.uint8))


def _controller(tmp_path, task, stops, step_actions=(), epoch_actions=(), schedule=None, **cadence):
    state = TrainState()
    checkpoints = Checkpoints(task.learner, state, str(tmp_path / "latest"), str(tmp_path / "best"))
    config = TrainerConfig(**{"epochs": 3, "log_every_steps": 2, "save_every_minutes": 1000, "meta_batch_size": 1,
                              **cadence})
    writer = tf.summary.create_noop_writer()
    return Controller(task, checkpoints, schedule or Schedule(), config, stops,
                      step_actions=[TrainingScalars(writer, task.learner), *step_actions],
                      epoch_actions=[ValidationReport(writer), SaveBest(checkpoints), *epoch_actions])


def _saved(directory):
    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(str(directory)))
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_dtype_map()
            if name.startswith(("state/", "learner/weight"))}


def test_epochs_of_steps_then_validation_the_best_checkpoint_and_a_resume(tmp_path):
    task = StandInTask(steps_per_epoch=3, soft_ious=[0.2, 0.1, 0.3])
    with StopRequest() as stops:
        controller = _controller(tmp_path, task, stops, save_every_steps=2)
        controller.run()
    assert task.steps_run == list(range(9))
    best = _saved(tmp_path / "best")
    assert best["learner/weight/.ATTRIBUTES/VARIABLE_VALUE"] == 10.0  # after the third epoch (0.3 > 0.2)
    assert best["state/best/.ATTRIBUTES/VARIABLE_VALUE"] == pytest.approx(0.3)
    assert int(best["state/wait/.ATTRIBUTES/VARIABLE_VALUE"]) == 0
    assert tf.train.get_checkpoint_state(str(tmp_path / "latest")).all_model_checkpoint_paths[-1].endswith("ckpt-9")
    # A new controller on the same folders resumes where the state says: nothing left to run.
    again = StandInTask(steps_per_epoch=3, soft_ious=[])
    with StopRequest() as stops:
        resumed = _controller(tmp_path, again, stops)
        assert resumed.checkpoints.resume().endswith("ckpt-9")
        resumed.run()
    assert again.steps_run == [] and float(again.learner.weight.numpy()) == 10.0


def test_a_non_finite_step_stops_the_run_naming_its_step_and_nothing_is_saved_after_it(tmp_path):
    task = StandInTask(steps_per_epoch=4, soft_ious=[0.2, 0.3], nan_at={5})
    good = r"epoch 2, step 2; .*Last good checkpoint: \S*ckpt-5\."
    with StopRequest() as stops, pytest.raises(NonFiniteLoss, match=good):
        _controller(tmp_path, task, stops, log_every_steps=3, save_every_steps=1).run()
    # A checkpoint after every step, each after its logs were checked: the last is the step before the NaN.
    assert task.steps_run == [0, 1, 2, 3, 4, 5]
    assert _saved(tmp_path / "latest")["state/global_step/.ATTRIBUTES/VARIABLE_VALUE"] == 5


def test_skip_nonfinite_counts_the_step_and_goes_on(tmp_path):
    task = StandInTask(steps_per_epoch=2, soft_ious=[0.2, 0.3, 0.4], nan_at={1, 2})
    with StopRequest() as stops:
        _controller(tmp_path, task, stops, skip_nonfinite=True).run()
    saved = _saved(tmp_path / "latest")
    assert saved["state/bad_batches/.ATTRIBUTES/VARIABLE_VALUE"] == 2
    assert saved["learner/weight/.ATTRIBUTES/VARIABLE_VALUE"] == 5.0  # 1 + the 4 finite steps


def test_a_signal_during_a_step_ends_the_epoch_there_with_a_checkpoint_of_that_step(tmp_path):
    def sigterm_at(step):
        if step == 4:
            signal.raise_signal(signal.SIGTERM)

    task = StandInTask(steps_per_epoch=3, soft_ious=[0.2, 0.3], on_step=sigterm_at)
    with StopRequest() as stops, pytest.raises(Stopped, match=r"SIGTERM: stopped at epoch 2, step 2 of 3") as stop:
        _controller(tmp_path, task, stops).run()
    assert stop.value.preempted
    assert task.steps_run == [0, 1, 2, 3, 4]  # the step in progress finished, no other began
    assert _saved(tmp_path / "latest")["state/global_step/.ATTRIBUTES/VARIABLE_VALUE"] == 5


def test_checkpoints_refuse_non_finite_weights(tmp_path):
    learner, state = StandInLearner(), TrainState()
    checkpoints = Checkpoints(learner, state, str(tmp_path / "latest"), str(tmp_path / "best"))
    first = checkpoints.save("latest", "test")
    learner.weight.assign(float("inf"))
    with pytest.raises(NonFiniteLoss, match=f"not saving \\(best\\). Last good checkpoint: {first}"):
        checkpoints.save("best", "best")
    assert tf.train.latest_checkpoint(str(tmp_path / "best")) is None


def test_a_best_epoch_needs_a_real_improvement():
    best = BestMetric()
    assert best.improves({"soft_iou": 0.5}, -1.0)
    assert not best.improves({"soft_iou": 0.5 + 1e-7}, 0.5)  # within rounding: not an improvement
    assert not best.improves({"soft_iou": float("nan")}, 0.5)
    assert BestMetric("iou@0.5").improves({"soft_iou": 0.1, "iou@0.5": 0.6}, 0.5)


def test_an_action_is_added_by_appending_it_to_a_list(tmp_path):
    """A new hook touches neither the Controller nor the Trainer: a callable on the step's or the
    epoch's output, in the list the controller is given."""
    steps, epochs = [], []
    task = StandInTask(steps_per_epoch=3, soft_ious=[0.2, 0.1, 0.3])
    with StopRequest() as stops:
        _controller(tmp_path, task, stops, step_actions=[steps.append], epoch_actions=[epochs.append]).run()
    assert all(isinstance(s, StepOutput) for s in steps) and all(isinstance(e, EpochOutput) for e in epochs)
    # Logged every 2 steps and at each epoch's end: global steps 2, 3 | 4, 6 | 8, 9.
    assert [s.global_step for s in steps] == [2, 3, 4, 6, 8, 9]
    assert all(s.loss == 0.5 and s.meta_lr == pytest.approx(0.1) and s.tasks_per_s > 0 for s in steps)
    assert [(e.epoch, e.global_step, e.summary["soft_iou"], e.improved) for e in epochs] == [
        (1, 3, 0.2, True), (2, 6, 0.1, False), (3, 9, 0.3, True)]


def test_a_plateau_lowers_the_rate_after_the_epochs_line(tmp_path, capsys):
    task = StandInTask(steps_per_epoch=1, soft_ious=[0.3, 0.2, 0.1])
    with StopRequest() as stops:
        _controller(tmp_path, task, stops, schedule=Plateau(patience=1, factor=0.5)).run()
    out = capsys.readouterr().out
    # Epoch 3 is the second without improvement: the rate halves, said after that epoch's validation line.
    assert out.count("validation:") == 3 and "has not improved for 1 epochs: meta_lr -> 0.05" in out
    assert out.index("has not improved") > out.rindex("validation:")
    saved = _saved(tmp_path / "latest")
    assert saved["state/wait/.ATTRIBUTES/VARIABLE_VALUE"] == 0  # the count restarts with the new rate
    assert float(task.learner.optimizer.learning_rate.numpy()) == pytest.approx(0.05)
