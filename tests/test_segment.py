"""`python -m meta_drn_tf.segment` and the `Segmenter` API: one labelled example -> mask files."""

import glob
import os
import shutil
import sys
import tarfile

import cv2
import numpy as np
import pytest
import tensorflow as tf
import warm

from meta_drn_tf import Segmenter, cli
from meta_drn_tf.data.synthetic import synthetic_bank
from meta_drn_tf.runs.config import RunConfig
from meta_drn_tf.runs.directory import RunDirectory
from meta_drn_tf.runs.learners import build_learner, restore_learner
from meta_drn_tf.serving import saved_model as serving
from meta_drn_tf.serving import tflite
from meta_drn_tf.training.evaluation import EpisodeScorer

SIZE = 32


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run directory as training leaves it (flags.json, best/ checkpoint), without the training."""
    model_dir = str(tmp_path_factory.mktemp("run"))
    config = RunConfig.from_flags(model_dir=model_dir, image_size=SIZE, width=0.0625, inner_lr=0.5, seed=2)
    RunDirectory(model_dir).claim(config)
    learner = build_learner(config)
    tf.train.CheckpointManager(tf.train.Checkpoint(learner=learner), os.path.join(model_dir, "best"), 1).save()
    return model_dir


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """One class of generated images written as PNG files: support 0, queries 1-4, one of another size."""
    root = tmp_path_factory.mktemp("photos")
    bank = synthetic_bank(num_classes=3, images_per_class=5, image_size=SIZE, seed=9)
    for i in range(5):
        cv2.imwrite(str(root / f"img{i}.png"), cv2.cvtColor(bank.images[0, i], cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(root / "mask0.png"), bank.masks[0, 0] * 255)
    big = cv2.resize(bank.images[0, 4], (48, 40))
    os.makedirs(root / "other")
    cv2.imwrite(str(root / "other" / "wide.png"), cv2.cvtColor(big, cv2.COLOR_RGB2BGR))
    return root, bank


def _segment(model, root, out, *extra):
    args = [sys.executable, "-m", "meta_drn_tf.segment", f"--model={model}", f"--support={root / 'img0.png'}",
            f"--support_mask={root / 'mask0.png'}", f"--images={root / 'img[1-4].png'}",
            f"--images={root / 'other'}", f"--out={out}", *extra]
    return warm.run(args, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_command_writes_one_binary_mask_per_image_that_agrees_with_evaluate(run_dir, photos, tmp_path):
    root, bank = photos
    out = _segment(run_dir, root, tmp_path / "masks", "--overlay", "--batch_size=3")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "\x1b" not in out.stdout and "\r" not in out.stdout  # a pipe gets plain lines, not a redrawn bar
    names = sorted(os.path.basename(p) for p in glob.glob(str(tmp_path / "masks" / "*.png")))
    assert names == sorted([f"img{i}.png" for i in range(1, 5)] + [f"img{i}_overlay.png" for i in range(1, 5)]
                           + ["wide.png", "wide_overlay.png"])
    masks = np.stack([cv2.imread(str(tmp_path / "masks" / f"img{i}.png"), cv2.IMREAD_UNCHANGED) for i in range(1, 5)])
    assert masks.shape == (4, SIZE, SIZE) and set(np.unique(masks)) <= {0, 255}
    wide = cv2.imread(str(tmp_path / "masks" / "wide.png"), cv2.IMREAD_UNCHANGED)
    assert wide.shape == (40, 48) and set(np.unique(wide)) <= {0, 255}
    assert cv2.imread(str(tmp_path / "masks" / "img1_overlay.png")).shape[0] == SIZE

    # The same episode through the evaluation path: support 0, queries 1-4.
    learner, _ = restore_learner(run_dir)
    task = {"support_images": bank.images[0, [0]] / 255.0, "support_masks": bank.masks[0, [0], ..., None],
            "query_images": bank.images[0, 1:5] / 255.0, "query_masks": bank.masks[0, 1:5, ..., None]}
    logs = EpisodeScorer(learner)({k: v[None] for k, v in task.items()})
    expected = logs["probabilities"].numpy()[0, ..., 0] > 0.5
    assert np.mean((masks > 0) != expected) < 1e-3
    ious = [np.logical_and(m > 0, t).sum() / max(1, np.logical_or(m > 0, t).sum())
            for m, t in zip(masks, bank.masks[0, 1:5])]
    np.testing.assert_allclose(ious, logs["iou@0.5"].numpy()[0], atol=0.02)


@pytest.mark.slow
def test_saved_model_gives_the_masks_of_its_run(run_dir, photos, tmp_path):
    root, _ = photos
    learner, config = restore_learner(run_dir)
    base = tmp_path / "saved_models" / "tiny"
    serving.export(learner, str(base), config.network)
    from_export = _segment(base, root, tmp_path / "from_export", f"--save_tflite={tmp_path / 'tiny.tflite'}")
    assert from_export.returncode == 0, from_export.stderr[-2000:]
    assert _segment(run_dir, root, tmp_path / "from_run").returncode == 0
    for path in glob.glob(str(tmp_path / "from_run" / "*.png")):
        a = cv2.imread(path, cv2.IMREAD_UNCHANGED)
        b = cv2.imread(str(tmp_path / "from_export" / os.path.basename(path)), cv2.IMREAD_UNCHANGED)
        assert np.mean(a != b) < 1e-3, path
    # The TensorFlow Lite file of the same adaptation gives the same masks at the training size.
    images = np.stack([cv2.cvtColor(cv2.imread(str(root / f"img{i}.png")), cv2.COLOR_BGR2RGB) for i in range(1, 5)])
    masks = np.stack([cv2.imread(str(tmp_path / "from_export" / f"img{i}.png"), cv2.IMREAD_UNCHANGED)
                      for i in range(1, 5)])
    assert np.mean((tflite.run(str(tmp_path / "tiny.tflite"), images) > 0.5) != (masks > 0)) < 1e-3


@pytest.mark.slow
def test_an_int16x8_file_is_calibrated_on_the_example_with_a_progress_bar(run_dir, photos, tmp_path):
    root, _ = photos
    out = _segment(run_dir, root, tmp_path / "masks", f"--save_tflite={tmp_path / 'npu.tflite'}",
                   "--tflite_quantize=int16x8")
    assert out.returncode == 0, out.stderr[-2000:]
    count = len(tflite.calibration_images(np.zeros((1, SIZE, SIZE, 3), np.uint8), SIZE))
    assert f"Calibrating the int16x8 file on {count} images" in out.stdout and f"{count}/{count}" in out.stdout
    # The untrained network's probabilities sit near 0.5, where masks flip on any rounding: compare
    # the probabilities with the float file of the same adaptation instead (mean 0.012 measured; the
    # masks of a wider, adapted network are held to IoU >= 0.95 in test_tflite).
    read = lambda name: cv2.cvtColor(cv2.imread(str(root / name)), cv2.COLOR_BGR2RGB)  # noqa: E731
    segmenter = Segmenter.from_run(run_dir).adapt(read("img0.png"), cv2.imread(str(root / "mask0.png"), 0) / 255)
    images = np.stack([read(f"img{i}.png") for i in range(1, 5)])
    expected = tflite.run(segmenter.export_tflite(str(tmp_path / "float.tflite")), images)
    assert np.abs(tflite.run(str(tmp_path / "npu.tflite"), images) - expected).mean() < 0.025


@pytest.mark.slow
def test_bad_images_are_listed_at_once_or_skipped_and_an_interrupted_folder_continues(run_dir, photos, tmp_path):
    root, masks = tmp_path / "photos", tmp_path / "masks"
    shutil.copytree(photos[0], root)
    (root / "img2.png").write_bytes(b"not a png")
    data = (root / "img3.png").read_bytes()
    (root / "img3.png").write_bytes(data[: len(data) // 2])  # truncated, as by an interrupted copy
    out = _segment(run_dir, root, masks, "--overlay")
    assert out.returncode == cli.EXIT_DATA, out.stderr[-3000:]
    lines = out.stderr.strip().splitlines()
    assert lines[0] == "error: --images: 2 image(s) cannot be read (fix or remove them, or pass --skip_bad_files " \
                       "to segment the rest):"
    assert any("img2.png: cannot be decoded" in x for x in lines) and any("img3.png" in x for x in lines)
    assert not masks.exists()  # checked before any work

    out = _segment(run_dir, root, masks, "--overlay", "--skip_bad_files")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Skipping 2 unreadable image(s) (--skip_bad_files)" in out.stdout
    assert f"Wrote 3 mask(s) to {masks} (2 unreadable skipped)" in out.stdout
    assert sorted(os.listdir(masks)) == ["img1.png", "img1_overlay.png", "img4.png", "img4_overlay.png",
                                         "wide.png", "wide_overlay.png"]  # nothing half-written beside them

    # An interruption after img4's overlay, before its mask: --skip_existing redoes img4 only.
    os.remove(masks / "img4.png")
    before = {name: os.stat(masks / name).st_mtime_ns for name in ("img1.png", "wide.png")}
    out = _segment(run_dir, root, masks, "--overlay", "--skip_bad_files", "--skip_existing")
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"Wrote 1 mask(s) to {masks} (2 unreadable skipped; 2 already there)" in out.stdout
    assert {name: os.stat(masks / name).st_mtime_ns for name in before} == before
    assert (masks / "img4.png").is_file()


@pytest.mark.slow
def test_api_adapts_once_and_old_exports_give_the_same_probabilities(tmp_path):
    legacy = os.path.join(os.path.dirname(__file__), "data", "legacy_0.1.0")
    with tarfile.open(os.path.join(legacy, "saved_model.tgz")) as archive:
        archive.extractall(tmp_path / "old", filter="data")
    old = Segmenter.from_saved_model(str(tmp_path / "old"))  # no adapt signature: re-adapts per call
    assert old.description.startswith("SavedModel ") and "kernels" not in old.description  # none recorded
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    mask = np.zeros((16, 16), np.float32)
    mask[4:12, 3:9] = 1
    with pytest.raises(RuntimeError, match="adapt"):
        old.segment(images[1:])
    expected = old.adapt(images[0], mask).segment(images[1:])
    assert expected.shape == (2, 16, 16) and expected.dtype == np.float32

    # The same weights exported today: adapt once, then segment.
    from meta_drn_tf.meta import MetaConfig, MetaLearner
    from meta_drn_tf.network.config import NetworkConfig
    from meta_drn_tf.network.model import build_meta_drn

    learner = MetaLearner(build_meta_drn(NetworkConfig(16, 0.03125)), MetaConfig("metasgd", inner_lr=0.3))
    tf.train.Checkpoint(learner=learner).read(os.path.join(legacy, "checkpoint", "ckpt")).expect_partial()
    new = Segmenter.from_saved_model(serving.export(learner, str(tmp_path / "new"), NetworkConfig(16, 0.03125)))
    assert new.description.endswith("(stock kernels)")
    new.adapt(images[0], mask)
    np.testing.assert_allclose(new.segment(images[1:]), expected, atol=1e-5)
    np.testing.assert_allclose(new.segment(images[2:]), expected[1:], atol=1e-5)  # queries are independent
    with pytest.raises(ValueError, match="uint8"):
        new.segment(images.astype(np.float32))


@pytest.mark.slow
def test_command_on_real_photos(real_fewshot_dir, run_dir, tmp_path):
    folder = os.path.join(real_fewshot_dir, "cat")
    out = warm.run([sys.executable, "-m", "meta_drn_tf.segment", f"--model={run_dir}",
                   f"--support={folder}/1.jpg", f"--support_mask={folder}/1.png",
                   f"--images={folder}/[23].jpg", f"--out={tmp_path}"],
                   capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    for n in (2, 3):
        mask = cv2.imread(str(tmp_path / f"{n}.png"), cv2.IMREAD_UNCHANGED)
        assert mask.shape == cv2.imread(f"{folder}/{n}.jpg").shape[:2]
        assert set(np.unique(mask)) <= {0, 255}


def test_a_run_loads_for_segmenting_without_checkpoint_warnings(run_dir, tmp_path, caplog):
    """The best checkpoint also holds what training resumes from, which a segmenter does not read."""
    import gc

    from meta_drn_tf.training.checkpoints import TrainState

    run = shutil.copytree(run_dir, tmp_path / "run", ignore=shutil.ignore_patterns("best"))
    learner, _ = restore_learner(run_dir)
    tf.train.CheckpointManager(tf.train.Checkpoint(learner=learner, state=TrainState()), str(run / "best"), 1).save()
    with caplog.at_level("WARNING"):
        Segmenter.from_run(str(run))
        gc.collect()  # TensorFlow warns of unread values when a restore's status object is collected
    assert "could not be found" not in caplog.text and "Unresolved object" not in caplog.text


def test_an_fss1000_layout_folder_lists_its_photos_not_their_masks(tmp_path, capsys):
    """FSS-1000 keeps 1.jpg beside its mask 1.png: the PNG is a mask, not a photo to segment (it used
    to be listed, and then the two 'would both write 1.png')."""
    from meta_drn_tf.serving.segment_files import image_paths, output_names

    rng = np.random.default_rng(0)
    for name in ("1.jpg", "2.jpg", "3.png"):  # 3.png: a photo saved as PNG, with no other file of its name
        cv2.imwrite(str(tmp_path / name), rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
    for name in ("1.png", "2.png"):
        cv2.imwrite(str(tmp_path / name), np.zeros((8, 8), np.uint8))
    paths = image_paths([str(tmp_path)])
    assert [os.path.basename(p) for p in paths] == ["1.jpg", "2.jpg", "3.png"]
    assert output_names(paths) == ["1", "2", "3"]
    assert "Left out 2 mask(s) beside their photos" in capsys.readouterr().out
    assert [os.path.basename(p) for p in image_paths([str(tmp_path / "*.png")])] == ["1.png", "2.png", "3.png"]


def test_outputs_never_collide_and_keep_their_subfolder(tmp_path):
    from meta_drn_tf.paths import unique_stems
    from meta_drn_tf.serving.segment_files import output_files, output_names

    assert unique_stems(["p/a/1.jpg", "p/b/1.jpg", "p/c/2.jpg"]) == ["a/1", "b/1", "2"]
    assert unique_stems(["x/a.jpg", "x/a.png"]) == ["a_jpg", "a_png"]
    assert unique_stems(["1.jpg", "1.jpg"]) == ["1_jpg", "1_jpg-2"]  # the same file twice
    # a.jpg's overlay and a_overlay.jpg's mask would both be a_overlay.png.
    paths = [str(tmp_path / "a.jpg"), str(tmp_path / "a_overlay.jpg")]
    assert output_names(paths) == ["a", "a_overlay"]
    files = [f for pair in output_files(output_names(paths, overlay=True), "out", True) for f in pair]
    assert len(set(files)) == 4


def test_images_too_small_or_too_large_are_refused_in_one_line(tmp_path):
    from meta_drn_tf.data.images import read
    from meta_drn_tf.errors import DataError

    for h, w in [(1, 1), (2, 2), (7, 30)]:
        cv2.imwrite(str(tmp_path / "tiny.png"), np.zeros((h, w, 3), np.uint8))
        with pytest.raises(DataError, match=rf"tiny.png: too small to segment \({w}x{h} pixels\)"):
            read(str(tmp_path / "tiny.png"))
    cv2.imwrite(str(tmp_path / "small.png"), np.zeros((8, 9, 3), np.uint8))
    assert read(str(tmp_path / "small.png")).shape == (8, 9, 3)
    cv2.imwrite(str(tmp_path / "huge.png"), np.zeros((10008, 10008), np.uint8))
    with pytest.raises(DataError, match="huge.png: about 10008x10008 pixels, more than the 100 megapixels"):
        read(str(tmp_path / "huge.png"))


def _png_header(width: int, height: int) -> bytes:
    """A PNG's signature and IHDR chunk declaring `width` x `height` (8-bit grey), then a truncated body."""
    import struct
    import zlib

    body = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    chunk = struct.pack(">I", len(body)) + b"IHDR" + body + struct.pack(">I", zlib.crc32(b"IHDR" + body))
    data = zlib.compress(b"\0" * 1000)  # the first rows only: the file ends there
    idat = struct.pack(">I", len(data)) + b"IDAT" + data + struct.pack(">I", zlib.crc32(b"IDAT" + data))
    return b"\x89PNG\r\n\x1a\n" + chunk + idat


def test_a_huge_image_or_mask_is_refused_from_its_header_before_decoding(tmp_path, monkeypatch):
    """A 995 KB PNG can declare 32000x32000 pixels (2.8 GB decoded): nothing of it is decoded."""
    from meta_drn_tf.data import images
    from meta_drn_tf.errors import DataError
    from meta_drn_tf.serving.segment_files import read_support

    (tmp_path / "huge.png").write_bytes(_png_header(32000, 32000))
    cv2.imwrite(str(tmp_path / "photo.png"), np.zeros((16, 16, 3), np.uint8))
    monkeypatch.setattr(images.cv2, "imdecode", lambda *a: pytest.fail("decoded"))
    with pytest.raises(DataError, match="huge.png: about 32000x32000 pixels, more than the 100 megapixels"):
        images.read_mask(str(tmp_path / "huge.png"), (32000, 32000))
    with pytest.raises(DataError, match="huge.png: about 32000x32000 pixels"):
        read_support([str(tmp_path / "huge.png")], [str(tmp_path / "huge.png")])
    with pytest.raises(DataError, match="empty.png: cannot be decoded"):
        images.read(str(tmp_path / "empty.png"))


def test_an_empty_photo_in_a_folder_is_named_with_the_damaged_ones(tmp_path):
    from meta_drn_tf.serving.segment_files import image_paths, usable_images

    cv2.imwrite(str(tmp_path / "1.png"), np.zeros((16, 16, 3), np.uint8))
    (tmp_path / "2.jpg").write_bytes(b"")
    (tmp_path / "3.png").write_bytes(cv2.imencode(".png", np.zeros((16, 16, 3), np.uint8))[1].tobytes()[:40])
    paths = image_paths([str(tmp_path)])
    assert [os.path.basename(p) for p in paths] == ["1.png", "2.jpg", "3.png"]
    todo, _, skipped = usable_images(paths, [[str(tmp_path / "out" / os.path.basename(p))] for p in paths],
                                     skip_bad_files=True)
    assert todo == [0] and len(skipped) == 2 and "2.jpg" in skipped[0] and "3.png" in skipped[1]


def test_masks_already_there_are_kept_unless_asked_and_empty_ones_are_not_done(tmp_path):
    from meta_drn_tf.errors import ConfigError
    from meta_drn_tf.serving.segment_files import image_and_mask_paths, is_written, refuse_overwriting, usable_images

    for name in ("1.jpg", "2.jpg"):  # FSS-1000's layout: each photo beside its hand-drawn mask
        cv2.imwrite(str(tmp_path / name), np.full((16, 16, 3), 80, np.uint8))
        cv2.imwrite(str(tmp_path / name.replace("jpg", "png")), np.full((16, 16), 255, np.uint8))
    photos, beside = image_and_mask_paths([str(tmp_path)])
    same_folder = [[str(tmp_path / f"{n}.png")] for n in (1, 2)]
    for replace, skip in [(False, False), (True, False), (False, True)]:  # the masks beside photos: never
        with pytest.raises(ConfigError, match="would overwrite the input .*1.png"):
            refuse_overwriting(photos + beside, same_folder, str(tmp_path), replace, skip)
    out = tmp_path / "out"
    out.mkdir()
    (out / "1.png").write_bytes(b"")  # left by a killed run, or the user's own file
    outputs = [[str(out / f"{n}.png")] for n in (1, 2)]
    with pytest.raises(ConfigError, match=r"1 file\(s\) to write are there already .*--overwrite"):
        refuse_overwriting(photos + beside, outputs, str(out))
    refuse_overwriting(photos + beside, outputs, str(out), replace=True)
    refuse_overwriting(photos + beside, outputs, str(out), skip_existing=True)
    assert not is_written(str(out / "1.png"))  # an empty file is not a finished mask
    assert usable_images(photos, outputs, skip_existing=True)[0] == [0, 1]
    cv2.imwrite(str(out / "1.png"), np.zeros((16, 16), np.uint8))
    assert usable_images(photos, outputs, skip_existing=True)[0] == [1]


def test_a_killed_runs_half_written_files_are_removed(tmp_path):
    import subprocess

    from meta_drn_tf.serving.segment_files import remove_stale_partials

    gone = subprocess.run(["true"]).args and subprocess.Popen(["true"])
    gone.wait()
    (tmp_path / f".1.png.{gone.pid}.partial").write_bytes(b"half")
    (tmp_path / f".2.png.{os.getpid()}.partial").write_bytes(b"being written")  # a live writer's
    (tmp_path / f".notes.txt.{gone.pid}.partial").write_bytes(b"not ours")
    remove_stale_partials([[str(tmp_path / "1.png")], [str(tmp_path / "2.png")]])
    assert sorted(os.listdir(tmp_path)) == [f".2.png.{os.getpid()}.partial", f".notes.txt.{gone.pid}.partial"]


@pytest.mark.slow
def test_segmenting_an_fss1000_folder_into_itself_keeps_the_hand_drawn_masks(run_dir, tmp_path):
    for n in (1, 2, 3):
        cv2.imwrite(str(tmp_path / f"{n}.jpg"), np.full((24, 24, 3), 40 * n, np.uint8))
        cv2.imwrite(str(tmp_path / f"{n}.png"), np.eye(24, dtype=np.uint8) * 255)  # drawn by hand
    before = {n: (tmp_path / f"{n}.png").read_bytes() for n in (1, 2, 3)}
    example = shutil.copytree(tmp_path, tmp_path.parent / f"{tmp_path.name}-example")  # not among the inputs
    for extra in ([], ["--overwrite"], ["--skip_existing"]):
        out = warm.run([sys.executable, "-m", "meta_drn_tf.segment", f"--model={run_dir}",
                        f"--support={example / '1.jpg'}", f"--support_mask={example / '1.png'}",
                        f"--images={tmp_path}", f"--out={tmp_path}", *extra], capture_output=True, text=True,
                       timeout=300)
        assert out.returncode == cli.EXIT_USAGE, out.stderr[-2000:]
        assert out.stderr.startswith("error: --out ") and "would overwrite the input" in out.stderr
    assert {n: (tmp_path / f"{n}.png").read_bytes() for n in (1, 2, 3)} == before
