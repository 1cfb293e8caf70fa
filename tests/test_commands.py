"""Every command against the command lines users mistype: exit 2 or 5, one `error:` line naming the
flag or file, never a traceback. One process per command runs its whole table (`command_driver.py`)."""

import json
import os
import sys

import cv2
import numpy as np
import pytest
import tensorflow as tf
import warm

from meta_drn_tf.data.synthetic import synthetic_bank, write_fss_layout
from meta_drn_tf.runs.config import RunConfig
from meta_drn_tf.runs.directory import RunDirectory
from meta_drn_tf.runs.learners import build_learner

HERE = os.path.dirname(__file__)
TOOLS = os.path.join(HERE, "..", "tools")
USAGE, DATA = 2, 5
TINY = ["--image_size=16", "--width=0.0625", "--synthetic_classes=12", "--synthetic_images=4", "--queries=1",
        "--meta_batch_size=2", "--tasks_per_epoch=2", "--epochs=1", "--test_at_end=false", "--export_at_end=false"]


@pytest.fixture(scope="module")
def w(tmp_path_factory):
    """The places the table points at: files where folders belong, runs, images and masks."""
    root = tmp_path_factory.mktemp("world")
    (root / "notes.txt").write_text("not an image\n")
    (root / "empty").mkdir()
    (root / "stuff").mkdir()
    (root / "stuff" / "readme.txt").write_text("a folder of other things\n")
    (root / "unknown_classes.txt").write_text("no_such_class\n")
    (root / "blank.txt").write_text("")
    image = np.zeros((16, 16, 3), np.uint8)
    image[4:12, 4:12] = 200
    cv2.imwrite(str(root / "cat.png"), image)
    cv2.imwrite(str(root / "cat_mask.png"), (image[..., 0] > 0).astype(np.uint8) * 255)
    cv2.imwrite(str(root / "blank_mask.png"), np.zeros((16, 16), np.uint8))
    cv2.imwrite(str(root / "small_mask.png"), np.zeros((5, 7), np.uint8))
    (root / "photos").mkdir()
    cv2.imwrite(str(root / "photos" / "dog.png"), image)
    run = str(root / "run")
    config = RunConfig.from_flags(model_dir=run, image_size=16, width=0.0625, synthetic_classes=12, synthetic_images=4)
    RunDirectory(run).claim(config)
    learner = build_learner(config)
    tf.train.CheckpointManager(tf.train.Checkpoint(learner=learner), os.path.join(run, "best"), 1).save()
    write_fss_layout(synthetic_bank(num_classes=6, images_per_class=3, image_size=16, seed=1), str(root / "data"))
    (root / "bare_run").mkdir()
    config.replace(model_dir=str(root / "bare_run")).save(str(root / "bare_run"))  # flags.json, no checkpoint
    return {k: str(root / v) for k, v in {
        "root": ".", "file": "notes.txt", "empty": "empty", "stuff": "stuff", "unknown": "unknown_classes.txt",
        "blank": "blank.txt", "cat": "cat.png", "mask": "cat_mask.png", "blank_mask": "blank_mask.png",
        "small_mask": "small_mask.png", "photos": "photos", "run": "run", "bare_run": "bare_run",
        "data": "data"}.items()}


def _train_cases(w):
    run = [f"--model_dir={w['root']}/new_run", *TINY]
    return [
        ([f"--model_dir={w['file']}", *TINY], USAGE, f"--model_dir {w['file']}: is a file, not a folder"),
        ([f"--model_dir={w['file']}/run", *TINY], USAGE, f"{w['file']} is a file"),
        (["--model_dir=", *TINY], USAGE, "--model_dir"),
        ([*run, f"--data_dir={w['root']}/nope"], USAGE, f"--data_dir {w['root']}/nope: no such folder"),
        ([*run, f"--data_dir={w['file']}"], USAGE, f"--data_dir {w['file']}: is a file, not a folder"),
        ([*run, f"--data_dir={w['empty']}"], DATA, w["empty"]),
        ([*run, f"--data_dir={w['stuff']}"], DATA, w["stuff"]),
        ([*run, f"--data_dir={w['stuff']}", "--check_data"], DATA, w["stuff"]),
        ([*run, f"--data_dir={w['data']}", f"--val_classes_file={w['root']}/nope.txt"], USAGE,
         f"--val_classes_file {w['root']}/nope.txt: no such file"),
        ([*run, f"--data_dir={w['data']}", f"--test_classes_file={w['empty']}"], USAGE,
         f"--test_classes_file {w['empty']}: is a folder, not a file"),
        ([*run, f"--data_dir={w['data']}", f"--val_classes_file={w['unknown']}"], DATA, "no_such_class"),
        ([*run, f"--data_dir={w['data']}", f"--test_classes_file={w['blank']}"], DATA, w["blank"]),
        ([*run, f"--val_classes_file={w['unknown']}"], USAGE, "--val_classes_file"),
        ([*run, "--algo=mamll"], USAGE, "--algo"),
        ([*run, "--algo=MAML"], USAGE, "--algo"),
        ([*run, "--precision=fp16"], USAGE, "--precision"),
        ([*run, "--precision=mixed_float16"], USAGE, "--precision"),
        ([*run, "--image_size=30"], USAGE, "--image_size=30"),
        ([*run, "--image_size=0"], USAGE, "--image_size=0"),
        ([*run, "--image_size=224px"], USAGE, "--image_size"),
        ([*run, "--width=0"], USAGE, "--width=0"),
        ([*run, "--shots=0"], USAGE, "--shots=0"),
        ([*run, "--queries=-1"], USAGE, "--queries=-1"),
        ([*run, "--meta_batch_size=0"], USAGE, "--meta_batch_size=0"),
        ([*run, "--inner_lr=-0.01"], USAGE, "--inner_lr=-0.01"),
        ([*run, "--meta_lr=1e-3,1e-4"], USAGE, "--meta_lr"),
        ([*run, "--inner_steps=0"], USAGE, "--inner_steps=0"),
        ([*run, "--epochs=1.5"], USAGE, "--epochs"),
        ([*run, "--epochs=0"], USAGE, "--epochs=0"),
        ([*run, "--lr_factor=2"], USAGE, "--lr_factor=2"),
        ([*run, "--lr_schedule=step"], USAGE, "--lr_schedule"),
        ([*run, "--lr_schedule=cosine", "--min_meta_lr=0.5"], USAGE, "--min_meta_lr=0.5: is above --meta_lr"),
        ([*run, "--weight_decay=-0.01"], USAGE, "--weight_decay=-0.01: must be 0 or more"),
        ([*run, "--inner_lr=nan"], USAGE, "--inner_lr=nan: must be a finite number"),
        ([*run, "--meta_lr=inf"], USAGE, "--meta_lr=inf: must be a finite number"),
        ([*run, "--strategy=mirror"], USAGE, "--strategy"),
        ([*run, "--kernels=gpu"], USAGE, "--kernels"),
        ([*run, "--parallel_tasks=all"], USAGE, "--parallel_tasks=all"),
        ([*run, "--algo=reptile", "--lslr"], USAGE, "--lslr"),
        ([*run, "--algo=fomaml", "--first_order_epochs=2"], USAGE, "--first_order_epochs"),
        ([*run, "--algo=reptile", "--memory_saving"], USAGE, "--memory_saving"),
        ([*run, "--cpu_devices=0"], USAGE, "--cpu_devices=0"),
        ([*run, "--save_every_minutes=0"], USAGE, "--save_every_minutes=0"),
        ([*run, "--synthetic_classes=2"], USAGE, "--synthetic_classes=2"),
        ([*run, "--no_such_flag"], USAGE, "no_such_flag"),
        ([*run, f"--flagfile={w['root']}/missing.flags"], USAGE, "missing.flags"),
        ([*run, "--require_gpu"], USAGE, "--require_gpu"),
        ([f"--model_dir={w['stuff']}", "--fresh", *TINY], USAGE, "holds files but no training run"),
        ([f"--model_dir={w['run']}", *TINY[:1], "--width=0.125"], USAGE, "--width=0.0625"),
    ]


def _evaluate_cases(w):
    run = f"--model_dir={w['run']}"
    return [
        ([], USAGE, "--model_dir"),
        ([f"--model_dir={w['root']}/nope"], USAGE, f"{w['root']}/nope"),
        ([f"--model_dir={w['file']}"], USAGE, w["file"]),
        ([f"--model_dir={w['stuff']}"], USAGE, "flags.json"),
        ([f"--model_dir={w['bare_run']}"], USAGE, "no checkpoint"),
        ([run, "--checkpoint=latest"], USAGE, "no checkpoint"),
        ([run, "--checkpoint=last"], USAGE, "--checkpoint"),
        ([run, "--split=validation"], USAGE, "--split"),
        ([run, "--shots=0"], USAGE, "--shots"),
        ([run, "--shots=1,x"], USAGE, "--shots"),
        ([run, "--shots=100"], DATA, "fewer than the 101 an episode needs"),
        ([run, f"--classes_file={w['root']}/nope.txt"], USAGE, "--classes_file"),
        ([run, f"--classes_file={w['empty']}"], USAGE, "--classes_file"),
        ([run, f"--classes_file={w['unknown']}"], DATA, "no_such_class"),
        ([run, "--episodes=-1"], USAGE, "--episodes"),
        ([run, "--inner_steps=0"], USAGE, "--inner_steps"),
        ([run, "--inner_lr=-1"], USAGE, "--inner_lr"),
        ([run, f"--out_dir={w['file']}"], USAGE, "--out_dir"),
        ([run, f"--data_dir={w['root']}/nope"], USAGE, "--data_dir"),
        ([run, f"--data_dir={w['file']}"], USAGE, "--data_dir"),
        ([run, "--kernels=fast"], USAGE, "--kernels"),
        ([run, "--protocol=field"], USAGE, "--protocol"),
        ([run, "--dataset=voc"], USAGE, "--dataset"),
        ([run, "--dataset=pascal5i"], USAGE, "--dataset=pascal5i needs --data_dir"),
        ([run, "--dataset=pascal5i", f"--data_dir={w['root']}"], DATA, "SegmentationClassAug is missing"),
        ([run, "--fold=4"], USAGE, "--fold"),
        ([run, "--runs=-1"], USAGE, "--runs"),
        ([run, "--protocol=hsnet"], USAGE, "--protocol=hsnet reads image files"),
    ]


def _export_cases(w):
    run = f"--model_dir={w['run']}"
    return [
        ([], USAGE, "--model_dir"),
        ([f"--model_dir={w['root']}/nope"], USAGE, f"{w['root']}/nope"),
        ([f"--model_dir={w['file']}"], USAGE, w["file"]),
        ([f"--model_dir={w['bare_run']}"], USAGE, "no checkpoint"),
        ([run, f"--export_dir={w['file']}"], USAGE, "--export_dir"),
        ([run, f"--export_dir={w['file']}/models"], USAGE, "--export_dir"),
        ([run, "--precision=half"], USAGE, "--precision"),
        ([run, "--inner_steps=0"], USAGE, "--inner_steps"),
        ([run, "--kernels=auto"], USAGE, "--kernels"),
        ([run, "--checkpoint=latest"], USAGE, "no checkpoint"),
    ]


def _segment_cases(w):
    ok = [f"--model={w['run']}", f"--support={w['cat']}", f"--support_mask={w['mask']}",
          f"--images={w['photos']}", f"--out={w['root']}/masks"]

    def with_(**changes):
        return [a for a in ok if a.split("=")[0][2:] not in changes] + [f"--{k}={v}" for k, v in changes.items()]

    return [
        (ok[1:], USAGE, "--model"),
        (with_(model=f"{w['root']}/nope"), USAGE, f"{w['root']}/nope"),
        (with_(model=w["file"]), USAGE, w["file"]),
        (with_(model=w["stuff"]), USAGE, w["stuff"]),
        (with_(support=f"{w['root']}/nope.jpg"), USAGE, "--support"),
        (with_(support=w["photos"]), USAGE, "--support"),
        (with_(support=w["file"]), DATA, w["file"]),
        (with_(support_mask=f"{w['root']}/nope.png"), USAGE, "--support_mask"),
        (with_(support_mask=w["blank_mask"]), DATA, "the mask is empty"),
        (with_(support_mask=w["small_mask"]), DATA, "mask is 7x5"),
        ([*ok, f"--support_mask={w['mask']}"], USAGE, "--support_mask"),
        (with_(images=f"{w['root']}/nothing/*.jpg"), USAGE, "--images"),
        (with_(images=w["empty"]), USAGE, "--images"),
        (with_(images=w["file"]), DATA, "--images: 1 image(s) cannot be read"),
        (with_(out=w["file"]), USAGE, "--out"),
        (with_(out=f"{w['file']}/masks"), USAGE, "--out"),
        (with_(out=w["photos"]), USAGE, "--out"),
        (with_(threshold=1.5), USAGE, "--threshold"),
        (with_(threshold="half"), USAGE, "--threshold"),
        (with_(batch_size=0), USAGE, "--batch_size"),
        (with_(kernels="gpu"), USAGE, "--kernels"),
        (with_(checkpoint="latest"), USAGE, "no checkpoint"),
        (with_(save_tflite=f"{w['file']}/cat.tflite"), USAGE, "--save_tflite"),
        (with_(save_tflite=w["photos"]), USAGE, "--save_tflite"),
        (with_(tflite_quantize="int4"), USAGE, "--tflite_quantize"),
    ]


def _model_cases(w):
    return [
        (["--image_size=30"], USAGE, "--image_size"),
        (["--image_size=-4"], USAGE, "--image_size"),
        (["--width=0"], USAGE, "--width"),
    ]


def _app_cases(w):
    return [
        ([], USAGE, "--model"),
        ([f"--model={w['root']}/nope"], USAGE, f"{w['root']}/nope"),
        ([f"--model={w['stuff']}"], USAGE, "neither a training run"),
        ([f"--model={w['run']}", "--port=0"], USAGE, "--port"),
        ([f"--model={w['run']}", "--checkpoint=latest"], USAGE, "no checkpoint"),
    ]


def _make_synthetic_cases(w):
    return [
        ([], USAGE, "--out"),
        ([f"--out={w['file']}"], USAGE, "--out"),
        ([f"--out={w['root']}/syn", "--classes=0"], USAGE, "--classes"),
        ([f"--out={w['root']}/syn", "--images=1"], USAGE, "--images"),
        ([f"--out={w['root']}/syn", "--size=2"], USAGE, "--size"),
    ]


def _visualize_cases(w):
    run = f"--model_dir={w['run']}"
    return [
        ([f"--model_dir={w['stuff']}"], USAGE, "flags.json"),
        ([run, f"--out={w['photos']}"], USAGE, "--out"),
        ([run, f"--out={w['file']}/fig.png"], USAGE, "--out"),
        ([run, f"--classes_file={w['root']}/nope.txt"], USAGE, "--classes_file"),
        ([run, "--classes=0"], USAGE, "--classes"),
        ([run, "--queries=0"], USAGE, "--queries"),
        ([run, "--threshold=2"], USAGE, "--threshold"),
    ]


def _study_cases(w):
    return [
        ([f"--out={w['file']}"], USAGE, f"--out={w['file']}: is a file, not a folder"),
        ([f"--data_dir={w['root']}/nope"], USAGE, "--data_dir"),
    ]


COMMANDS = {
    "meta_drn_tf.train": _train_cases, "meta_drn_tf.evaluate": _evaluate_cases,
    "meta_drn_tf.export": _export_cases, "meta_drn_tf.segment": _segment_cases, "meta_drn_tf.summary": _model_cases,
    "meta_drn_tf.app": _app_cases,
    os.path.join(TOOLS, "make_synthetic.py"): _make_synthetic_cases,
    os.path.join(TOOLS, "draw_fig4.py"): _visualize_cases, os.path.join(TOOLS, "study.py"): _study_cases,
}


@pytest.mark.slow
@pytest.mark.parametrize("app", list(COMMANDS), ids=lambda a: os.path.basename(a))
def test_mistyped_command_lines_end_in_one_error_line(app, w):
    cases = COMMANDS[app](w)
    out = warm.run([sys.executable, os.path.join(HERE, "command_driver.py"), app], cwd=w["root"],
                   input=json.dumps([args for args, _, _ in cases]), capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    results = json.loads(out.stdout.strip().splitlines()[-1])
    wrong = []
    for (args, code, says), result in zip(cases, results, strict=True):
        errors = [line for line in result["stderr"].splitlines() if line.startswith("error: ")]
        if result["code"] != code or len(errors) != 1 or says not in errors[0] or "Traceback" in result["stderr"]:
            wrong.append(f"{' '.join(args)}\n  expected exit {code} and one error line with {says!r}, got "
                         f"exit {result['code']}:\n  " + result["stderr"][-1500:].replace("\n", "\n  "))
    assert not wrong, f"{len(wrong)} of {len(cases)} command lines:\n" + "\n".join(wrong)


def test_evaluating_another_data_folder_keeps_the_first_ones_reports(tmp_path):
    """evaluate --data_dir=A then --data_dir=B: two report folders (B used to overwrite A's eval_all)."""
    from meta_drn_tf.evaluate import default_out_dir

    run = str(tmp_path / "run")
    a, b, again = (default_out_dir(run, "all", str(tmp_path / d)) for d in ("labelled/cats", "labelled/dogs",
                                                                           "labelled/cats/"))
    assert a != b and a == again
    assert os.path.basename(a).startswith("eval_all_cats-") and os.path.dirname(a) == run
    same_name = default_out_dir(run, "all", str(tmp_path / "elsewhere" / "cats"))
    assert same_name != a  # two folders both named cats
    assert default_out_dir(run, "test", None) == os.path.join(run, "eval_test")  # the run's own data, as before
    assert default_out_dir(run, "all", "") == os.path.join(run, "eval_all_synthetic")


def test_check_data_reports_every_split_and_writes_nothing(tmp_path, capsys):
    from meta_drn_tf.errors import DataError
    from meta_drn_tf.train import check_data

    data = tmp_path / "data"
    write_fss_layout(synthetic_bank(num_classes=12, images_per_class=3, image_size=16, seed=1), str(data))
    run = RunConfig.from_flags(model_dir=str(tmp_path / "run"), data_dir=str(data), image_size=16, width=0.0625)
    check_data(run)
    lines = capsys.readouterr().out.splitlines()
    counts = {line.split()[0]: line.split()[1:4:2] for line in lines if line.startswith("  ")}
    assert sum(int(classes) for classes, _ in counts.values()) == 12, lines
    assert sum(int(images) for _, images in counts.values()) == 36, lines
    assert set(counts) == {"train", "val", "test"}
    assert not (tmp_path / "run").exists()
    broken = sorted(data.glob("*/*.jpg"))[-1]
    broken.write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match=str(broken)):
        check_data(run)
