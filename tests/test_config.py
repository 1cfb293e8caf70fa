"""RunConfig, the run directory and the learning-rate schedules of the training core."""

import dataclasses
import glob
import json
import math
import os

import pytest
import tensorflow as tf
from absl import flags

from meta_drn_tf.config import RunConfig, define_flags
from meta_drn_tf.errors import ConfigError
from meta_drn_tf.training import Cosine, Linear, Plateau, RunDirectory, make_schedule


def test_invalid_settings_name_every_flag_at_fault():
    with pytest.raises(ConfigError) as error:
        RunConfig(image_size=30, shots=0, algo="sgd")
    message = str(error.value)
    for part in ("--image_size=30: must be a positive multiple of 4", "--shots=0: must be at least 1",
                 "--algo=sgd: must be one of maml, fomaml, metasgd, reptile"):
        assert part in message
    with pytest.raises(dataclasses.FrozenInstanceError):
        RunConfig().epochs = 3


def test_saved_config_round_trips_and_old_runs_load(tmp_path):
    config = RunConfig(model_dir=str(tmp_path), algo="metasgd", width=0.5, inner_steps=2)
    config.save(str(tmp_path))
    assert RunConfig.load(str(tmp_path)) == config
    assert "--algo=metasgd\n" in (tmp_path / "flags.txt").read_text()
    # A run written before a setting existed loads with that setting's default.
    saved = json.loads((tmp_path / "flags.json").read_text())
    del saved["skip_bad_files"]
    (tmp_path / "flags.json").write_text(json.dumps(saved))
    assert RunConfig.load(str(tmp_path)).skip_bad_files is False
    with pytest.raises(ConfigError, match="unknown training settings"):
        RunConfig.from_dict({**saved, "warp_drive": True})
    with pytest.raises(ConfigError, match="flags.json is missing"):
        RunConfig.load(str(tmp_path / "nowhere"))


def test_train_flags_are_the_config_fields():
    values = flags.FlagValues()
    define_flags(values)
    config = _parse(values, ["--algo=reptile", "--inner_steps=3", "--nofresh", "--width=0.5"])
    assert (config.algo, config.inner_steps, config.width) == ("reptile", 3, 0.5)
    assert config.replace(algo="reptile", inner_steps=3, width=0.5) == RunConfig().replace(
        algo="reptile", inner_steps=3, width=0.5)


def _parse(values, argv):
    values(["train", *argv])
    return RunConfig(**{f.name: values[f.name].value for f in dataclasses.fields(RunConfig)})


@pytest.mark.parametrize("flagfile", sorted(glob.glob(os.path.join(os.path.dirname(__file__), "..", "flags", "*"))))
def test_shipped_flagfiles_are_valid_runs(flagfile):
    values = flags.FlagValues()
    define_flags(values)
    assert _parse(values, [f"--flagfile={flagfile}"]).model_dir.startswith("runs/")


def test_renamed_final_meta_lr_still_loads_and_parses(tmp_path):
    saved = RunConfig(lr_schedule="cosine", min_meta_lr=1e-5).to_dict()
    saved["final_meta_lr"] = saved.pop("min_meta_lr")
    (tmp_path / "flags.json").write_text(json.dumps(saved))
    assert RunConfig.load(str(tmp_path)).min_meta_lr == 1e-5
    values = flags.FlagValues()
    define_flags(values)
    assert _parse(values, ["--final_meta_lr=2e-5"]).min_meta_lr == 2e-5


def test_run_directory_refuses_another_network(tmp_path):
    run = RunDirectory(str(tmp_path))
    run.claim(RunConfig(model_dir=str(tmp_path), width=0.25))
    run.claim(RunConfig(model_dir=str(tmp_path), width=0.25, epochs=5))  # not model-shaping
    with pytest.raises(ConfigError, match="--width=0.25 but this command has --width=0.5"):
        run.claim(RunConfig(model_dir=str(tmp_path), width=0.5))
    # LSLR has one rate per inner step: the step count shapes its variables.
    lslr = RunDirectory(str(tmp_path / "lslr"))
    lslr.claim(RunConfig(model_dir=lslr.root, lslr=True, inner_steps=2))
    with pytest.raises(ConfigError, match="--inner_steps=2 but this command has --inner_steps=3"):
        lslr.claim(RunConfig(model_dir=lslr.root, lslr=True, inner_steps=3))
    assert run.logs("train") == str(tmp_path / "logs" / "train")


def test_schedules_follow_their_formulas():
    lr = tf.Variable(1.0)
    linear, cosine = Linear(1.0, 0.1, 100), Cosine(1.0, 0.1, 100)
    for step, expected_linear in [(0, 1.0), (50, 0.55), (100, 0.1), (150, 0.1)]:
        linear.before_step(lr, step)
        assert float(lr.numpy()) == pytest.approx(expected_linear)
        cosine.before_step(lr, step)
        progress = min(1.0, step / 100)
        assert float(lr.numpy()) == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi * progress)))
    lr.assign(0.8)
    plateau = Plateau(patience=2, factor=0.5)
    assert not plateau.after_validation(lr, 2) and float(lr.numpy()) == pytest.approx(0.8)
    assert plateau.after_validation(lr, 3) and float(lr.numpy()) == pytest.approx(0.4)
    assert isinstance(make_schedule(RunConfig(lr_schedule="cosine"), 10), Cosine)
