"""RunConfig (one tree of settings, flat flags), the run directory and the learning-rate schedules."""

import dataclasses
import glob
import json
import math
import os
import shutil

import pytest
import tensorflow as tf
from absl import flags

from meta_drn_tf.errors import ConfigError
from meta_drn_tf.meta import MetaConfig, registered
from meta_drn_tf.runs.config import RunConfig, define_flags, from_flag_values
from meta_drn_tf.runs.directory import RunDirectory
from meta_drn_tf.training.schedules import Cosine, Linear, Plateau, make_schedule
from meta_drn_tf.training.trainer import train

OLD_FLAGS = os.path.join(os.path.dirname(__file__), "data", "flags")


def test_invalid_settings_name_every_flag_at_fault():
    with pytest.raises(ConfigError) as error:
        RunConfig.from_flags(image_size=30, shots=0, algo="sgd")
    message = str(error.value)
    for part in ("--image_size=30: must be a positive multiple of 4", "--shots=0: must be at least 1",
                 "--algo=sgd: must be one of maml, fomaml, metasgd, reptile"):
        assert part in message
    with pytest.raises(dataclasses.FrozenInstanceError):
        RunConfig().trainer.epochs = 3


def test_the_tree_holds_each_setting_once_and_its_meta_section_is_the_learners_config():
    config = RunConfig.from_flags(algo="reptile", shots=2, width=0.5, epochs=4, cpu_devices=2)
    assert config.meta == MetaConfig("reptile")  # the learner gets this section as it is
    assert (config.data.shots, config.network.width, config.trainer.epochs, config.runtime.cpu_devices) == \
        (2, 0.5, 4, 2)
    assert config.meta.inner_steps == 5  # the algorithm's default, resolved once
    flat = config.to_flags()
    assert flat["algo"] == "reptile" and "algorithm" not in flat and flat["parallel_tasks"] == "auto"
    assert RunConfig.from_flags(**flat) == config
    with pytest.raises(ConfigError, match="unknown settings: warp_drive"):
        RunConfig.from_flags(warp_drive=True)


def test_saved_config_round_trips_and_old_runs_load(tmp_path):
    config = RunConfig.from_flags(model_dir=str(tmp_path), algo="metasgd", width=0.5, inner_steps=2,
                                  parallel_tasks="3")
    config.save(str(tmp_path))
    assert RunConfig.load(str(tmp_path)) == config
    assert "--algo=metasgd\n" in (tmp_path / "flags.txt").read_text()
    assert "--parallel_tasks=3\n" in (tmp_path / "flags.txt").read_text()
    # A run written before a setting existed loads with that setting's default.
    saved = json.loads((tmp_path / "flags.json").read_text())
    del saved["skip_bad_files"]
    (tmp_path / "flags.json").write_text(json.dumps(saved))
    assert RunConfig.load(str(tmp_path)).data.skip_bad_files is False
    with pytest.raises(ConfigError, match="unknown settings"):
        RunConfig.from_dict({**saved, "warp_drive": True})
    with pytest.raises(ConfigError, match="flags.json is missing"):
        RunConfig.load(str(tmp_path / "nowhere"))


def test_train_flags_are_the_config_fields():
    values = flags.FlagValues()
    define_flags(values)
    config = _parse(values, ["--algo=reptile", "--inner_steps=3", "--nofresh", "--width=0.5", "--parallel_tasks=2"])
    assert (config.meta.algorithm, config.meta.inner_steps, config.network.width) == ("reptile", 3, 0.5)
    assert config.meta.parallel_tasks == 2
    assert config == RunConfig().replace(algo="reptile", inner_steps=3, width=0.5, parallel_tasks=2)
    assert values["algo"].parser.enum_values == list(registered())  # the algorithm registry is the one list


def _parse(values, argv):
    values(["train", *argv])
    return from_flag_values(values)


@pytest.mark.parametrize("saved", ["first_version.json", "before_the_tree.json"])
def test_flags_json_of_every_earlier_version_loads(tmp_path, saved):
    """flags.json as the first release wrote it (final_meta_lr, no MAML++ settings) and as the last
    flat RunConfig wrote it (parallel_tasks as a string) load into the tree with their values."""
    shutil.copy(os.path.join(OLD_FLAGS, saved), tmp_path / "flags.json")
    config = RunConfig.load(str(tmp_path))
    flat = json.loads((tmp_path / "flags.json").read_text())
    flat["min_meta_lr"] = flat.pop("final_meta_lr", flat.get("min_meta_lr"))
    for name, value in flat.items():
        expected = MetaConfig(flat["algo"]).inner_steps if name == "inner_steps" and value is None else value
        assert config.to_flags()[name] == expected, name
    if saved == "first_version.json":
        assert (config.meta.algorithm, config.meta.lslr, config.trainer.min_meta_lr) == ("metasgd", False, 2e-5)
    else:
        assert (config.meta.parallel_tasks, config.meta.kernels, config.meta.multi_step_loss_epochs) == (2, "stock", 4)


@pytest.mark.parametrize("flagfile", sorted(glob.glob(os.path.join(os.path.dirname(__file__), "..", "flags", "*"))))
def test_shipped_flagfiles_are_valid_runs(flagfile):
    values = flags.FlagValues()
    define_flags(values)
    assert _parse(values, [f"--flagfile={flagfile}"]).model_dir.startswith("runs/")


def test_renamed_final_meta_lr_still_loads_and_parses(tmp_path):
    saved = RunConfig.from_flags(lr_schedule="cosine", min_meta_lr=1e-5).to_flags()
    saved["final_meta_lr"] = saved.pop("min_meta_lr")
    (tmp_path / "flags.json").write_text(json.dumps(saved))
    assert RunConfig.load(str(tmp_path)).trainer.min_meta_lr == 1e-5
    values = flags.FlagValues()
    define_flags(values)
    assert _parse(values, ["--final_meta_lr=2e-5"]).trainer.min_meta_lr == 2e-5


def test_run_directory_refuses_another_network(tmp_path):
    run = RunDirectory(str(tmp_path))
    run.claim(RunConfig.from_flags(model_dir=str(tmp_path), width=0.25))
    run.claim(RunConfig.from_flags(model_dir=str(tmp_path), width=0.25, epochs=5))  # not model-shaping
    with pytest.raises(ConfigError, match="--width=0.25 but this command has --width=0.5"):
        run.claim(RunConfig.from_flags(model_dir=str(tmp_path), width=0.5))
    # LSLR has one rate per inner step: the step count shapes its variables.
    lslr = RunDirectory(str(tmp_path / "lslr"))
    lslr.claim(RunConfig.from_flags(model_dir=lslr.root, lslr=True, inner_steps=2))
    with pytest.raises(ConfigError, match="--inner_steps=2 but this command has --inner_steps=3"):
        lslr.claim(RunConfig.from_flags(model_dir=lslr.root, lslr=True, inner_steps=3))
    assert run.logs("train") == str(tmp_path / "logs" / "train")


def test_a_folder_is_a_run_by_its_marker_not_by_the_names_of_its_subfolders(tmp_path):
    """Photos in test/ and a log in logs/: the names a run writes, but no run wrote them."""
    (tmp_path / "test").mkdir()
    (tmp_path / "test" / "1.jpg").write_bytes(b"a photo")
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "labelling.log").write_text("mine")
    folder = RunDirectory(str(tmp_path))
    with pytest.raises(ConfigError, match=r"already holds files and no training run .*: logs, test; give a new"):
        folder.claim(RunConfig.from_flags(model_dir=str(tmp_path)))
    with pytest.raises(ConfigError, match="--fresh: .* holds files but no training run"):
        folder.clear()
    with pytest.raises(ConfigError, match="--fresh: .* holds files but no training run"):
        train(RunConfig.from_flags(model_dir=str(tmp_path), fresh=True, image_size=16, width=0.0625))
    assert sorted(os.listdir(tmp_path)) == ["logs", "test"] and os.listdir(tmp_path / "test") == ["1.jpg"]
    # A run's folder: --fresh deletes what its marker lists, keeps the marker and the user's own file.
    run = RunDirectory(str(tmp_path / "run"))
    run.claim(RunConfig.from_flags(model_dir=run.root))
    os.makedirs(run.checkpoints)
    (tmp_path / "run" / "notes.txt").write_text("mine")
    run.clear()
    assert sorted(os.listdir(run.root)) == [".meta_drn_tf_run.json", "notes.txt"]
    run.claim(RunConfig.from_flags(model_dir=run.root))  # the same folder, a fresh run
    assert os.path.isfile(run.config)


def test_a_resumed_run_never_rewrites_the_flags_it_was_trained_with(tmp_path):
    run = RunDirectory(str(tmp_path))
    run.claim(RunConfig.from_flags(model_dir=str(tmp_path), epochs=8, inner_lr=0.3, queries=3, data_dir="/data"))
    trained_with = (tmp_path / "flags.json").read_text(), (tmp_path / "flags.txt").read_text()
    for changed in [{"inner_lr": 0.001}, {"queries": 1}, {"seed": 5}]:
        with pytest.raises(ConfigError, match=rf"--{next(iter(changed))}=.* \(it would train otherwise than "
                                              r"flags.json records\)\. Use the run's flags \(--flagfile="):
            flags_given = {"model_dir": str(tmp_path), "epochs": 8, "inner_lr": 0.3, "queries": 3, "data_dir": "/data"}
            run.claim(RunConfig.from_flags(**{**flags_given, **changed}))
    run.claim(RunConfig.from_flags(model_dir=str(tmp_path), epochs=12, inner_lr=0.3, queries=3, data_dir="/moved"))
    assert ((tmp_path / "flags.json").read_text(), (tmp_path / "flags.txt").read_text()) == trained_with
    records = [json.loads(line) for line in (tmp_path / "resumptions.jsonl").read_text().splitlines()]
    assert [r["changed"] for r in records] == [{"data_dir": ["/data", "/moved"], "epochs": [8, 12]}]
    assert RunConfig.load(str(tmp_path)).trainer.epochs == 8


def test_check_data_refuses_what_training_would_refuse(tmp_path):
    from meta_drn_tf.train import check_data

    RunDirectory(str(tmp_path)).claim(RunConfig.from_flags(model_dir=str(tmp_path), width=0.125))
    with pytest.raises(ConfigError, match="--width=0.125 but this command has --width=0.25"):
        check_data(RunConfig.from_flags(model_dir=str(tmp_path), width=0.25))


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
    assert isinstance(make_schedule(RunConfig.from_flags(lr_schedule="cosine").trainer, 1e-3, 10), Cosine)
