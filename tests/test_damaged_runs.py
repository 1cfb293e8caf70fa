"""Damaged run folders: each kind of damage ends in one ConfigError naming the file and what to do, or
training resumes from the newest intact checkpoint and says so - never starting over a trained run."""

import glob
import logging
import os
import shutil

import pytest

from meta_drn_tf.errors import ConfigError
from meta_drn_tf.network.config import NetworkConfig
from meta_drn_tf.runs.config import RunConfig
from meta_drn_tf.runs.learners import build_learner, restore_learner
from meta_drn_tf.training.checkpoints import Checkpoints, TrainState
from meta_drn_tf.training.trainer import train

# First-order MAML: what is tested is the checkpoints, not the meta-gradient (a cheaper step to trace).
TINY = dict(algo="fomaml", image_size=16, width=0.0625, synthetic_classes=12, synthetic_images=4, queries=1,
            meta_batch_size=2, tasks_per_epoch=2, epochs=3, val_episodes=2, inner_lr=0.01, save_every_minutes=1000,
            test_at_end=False, export_at_end=False)


def _config(run, **overrides):
    return RunConfig.from_flags(**{**TINY, "model_dir": str(run), **overrides})


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Three epochs of one meta-step: checkpoints/ckpt-1..3 and best/best-N."""
    run = tmp_path_factory.mktemp("trained") / "run"
    train(_config(run))
    assert sorted(os.path.basename(p) for p in glob.glob(str(run / "checkpoints" / "*.index"))) == [
        "ckpt-1.index", "ckpt-2.index", "ckpt-3.index"]
    return run


def _copy(trained, tmp_path):
    return shutil.copytree(trained, tmp_path / "run")


def _truncate(path):
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


def _newest_data(run, series="checkpoints", name="ckpt-3"):
    return glob.glob(str(run / series / f"{name}.data-*"))[0]


def _best(run):
    return os.path.basename(glob.glob(str(run / "best" / "best-*.index"))[0])[:-len(".index")]


# Damage to the newest checkpoint: training resumes from ckpt-2 and trains epochs 3 and 4 again.
NEWEST_DAMAGED = {
    "newest index deleted": lambda run: os.remove(run / "checkpoints" / "ckpt-3.index"),
    "newest data truncated": lambda run: _truncate(_newest_data(run)),
}
# Damage to the state file only: the checkpoints themselves are found by their files (ckpt-3).
STATE_FILE_DAMAGED = {
    "binary garbage": lambda run: (run / "checkpoints" / "checkpoint").write_bytes(b"\xff\xfe\x00"),
    "text garbage": lambda run: (run / "checkpoints" / "checkpoint").write_text("garbage {"),
    "deleted": lambda run: os.remove(run / "checkpoints" / "checkpoint"),
}


@pytest.mark.slow
@pytest.mark.parametrize("damage", list(NEWEST_DAMAGED))
def test_train_resumes_from_the_newest_intact_checkpoint(trained, tmp_path, damage, caplog, capfd):
    run = _copy(trained, tmp_path)
    NEWEST_DAMAGED[damage](run)
    best_before = _best(run)
    with caplog.at_level(logging.WARNING):
        assert train(_config(run, epochs=4))["epochs"] == 4
    out = capfd.readouterr().out
    # From ckpt-2 (epoch 2 done) it trains epochs 3 and 4; started over, it would train all four.
    assert [n for n in range(1, 5) if f"Epoch {n}/4" in out] == [3, 4], out
    assert _best(run) == best_before or int(_best(run).split("-")[1]) > 2  # the trained best is kept
    assert os.path.exists(run / "checkpoints" / "ckpt-4.index")
    assert f"resuming from {run / 'checkpoints' / 'ckpt-2'}, the newest intact one" in caplog.text
    assert any(name.startswith("ckpt-3.") for name in os.listdir(run / "checkpoints" / "damaged"))


@pytest.mark.parametrize("damage", list(STATE_FILE_DAMAGED))
def test_a_damaged_state_file_still_resumes_the_newest_checkpoint(trained, tmp_path, damage, caplog):
    """What `train` resumes (`Checkpoints.resume`, with the trainer's folders), without the training."""
    run = _copy(trained, tmp_path)
    STATE_FILE_DAMAGED[damage](run)
    learner, state = build_learner(_config(run)), TrainState()
    with caplog.at_level(logging.WARNING):
        resumed = Checkpoints(learner, state, str(run / "checkpoints"), str(run / "best")).resume()
    assert resumed == str(run / "checkpoints" / "ckpt-3")
    assert int(state.epoch) == 3 and int(state.global_step) == 3
    assert "damaged" not in caplog.text


@pytest.mark.slow
def test_train_refuses_to_start_over_when_every_checkpoint_is_damaged(trained, tmp_path):
    run = _copy(trained, tmp_path)
    for data in glob.glob(str(run / "*" / "*.data-*")):
        _truncate(data)
    with pytest.raises(ConfigError, match="every checkpoint of the run is damaged.*--fresh"):
        train(_config(run, epochs=4))
    assert len(glob.glob(str(run / "checkpoints" / "*.index"))) == 3  # nothing deleted


def test_a_damaged_best_checkpoint_names_itself_and_the_intact_one(trained, tmp_path):
    run = _copy(trained, tmp_path)
    _truncate(_newest_data(run, "best", _best(run)))
    with pytest.raises(ConfigError, match=rf"checkpoint {run / 'best' / _best(run)} is damaged .*"
                                          rf"use --checkpoint=latest \({run / 'checkpoints' / 'ckpt-3'} is intact\)"):
        restore_learner(str(run), "best")
    restore_learner(str(run), "latest")  # the one it names loads
    _truncate(_newest_data(run))
    with pytest.raises(ConfigError, match="ckpt-3 is damaged.*run train again"):
        restore_learner(str(run), "latest")


FLAGS_DAMAGE = {
    "truncated": lambda text: text[:len(text) // 2],
    "empty": lambda text: "",
    "a JSON list": lambda text: "[1, 2]",
    "a wrong type": lambda text: text.replace('"width": 0.0625', '"width": "wide"'),
    "not UTF-8": lambda text: "\udcff",
}


@pytest.mark.parametrize("damage", list(FLAGS_DAMAGE))
def test_a_damaged_flags_json_names_itself_and_how_to_rewrite_it(trained, tmp_path, damage):
    run = _copy(trained, tmp_path)
    flags = run / "flags.json"
    text = FLAGS_DAMAGE[damage](flags.read_text())
    flags.write_bytes(b"\xff" if text == "\udcff" else text.encode())
    with pytest.raises(ConfigError, match=rf"{flags} is damaged .*--flagfile={run / 'flags.txt'}"):
        restore_learner(str(run))
    with pytest.raises(ConfigError, match=rf"{flags} is damaged"):
        train(_config(run, epochs=4))


def test_a_new_run_refuses_a_folder_of_other_files_and_fresh_deletes_only_the_runs(trained, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "cat.jpg").write_bytes(b"a photo")
    with pytest.raises(ConfigError, match=rf"--model_dir {photos} already holds files and no training run "
                                          r"\(.meta_drn_tf_run.json is missing\): cat.jpg;"):
        train(_config(photos))
    assert os.listdir(photos) == ["cat.jpg"]
    # A run's folder where the user also put a file: --fresh deletes the run's files only.
    run = _copy(trained, tmp_path)
    (run / "notes.txt").write_text("mine")
    from meta_drn_tf.runs.directory import RunDirectory

    RunDirectory(str(run)).clear()
    # The marker, the lock file its writer holds and the user's file stay.
    assert sorted(os.listdir(run)) == [".meta_drn_tf_run.json", ".train.lock", "notes.txt"]


SAVED_MODEL_DAMAGE = {
    "variables missing": lambda v: shutil.rmtree(os.path.join(v, "variables")),
    "saved_model.pb truncated": lambda v: _truncate(os.path.join(v, "saved_model.pb")),
    "variables truncated": lambda v: _truncate(glob.glob(os.path.join(v, "variables", "*.data-*"))[0]),
}


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory):
    from meta_drn_tf.serving import saved_model

    learner, config = restore_learner(str(trained))
    return saved_model.export(learner, str(tmp_path_factory.mktemp("export")), NetworkConfig(16, 0.0625))


@pytest.mark.parametrize("damage", list(SAVED_MODEL_DAMAGE))
def test_a_damaged_saved_model_names_itself_and_what_to_do(exported, tmp_path, damage):
    from meta_drn_tf.serving.segmenter import Segmenter

    version = shutil.copytree(exported, tmp_path / "1")
    SAVED_MODEL_DAMAGE[damage](str(version))
    with pytest.raises(ConfigError, match=rf"--model {version}: the SavedModel is damaged .*export it again"):
        Segmenter.load(str(version))


def test_a_flags_json_whose_width_disagrees_with_the_checkpoint_says_so(trained, tmp_path):
    run = _copy(trained, tmp_path)
    flags = run / "flags.json"
    flags.write_text(flags.read_text().replace('"width": 0.0625', '"width": 0.125'))
    with pytest.raises(ConfigError, match=r"does not fit the network .*flags.json describes .*was flags.json edited"):
        restore_learner(str(run))
    # Training on it says the same, and that the checkpoints are intact: --fresh would delete them.
    with pytest.raises(ConfigError, match=r"do not fit the network .*flags.json describes .*The checkpoints are "
                                          r"intact: --fresh would delete them"):
        train(_config(run, width=0.125, epochs=4))
    assert len(glob.glob(str(run / "checkpoints" / "*.index"))) == 3
