import logging
import os

import cv2
import numpy as np
import pytest
import tensorflow as tf

from meta_drn_tf.data import fss1000
from meta_drn_tf.data.augment import augment_task
from meta_drn_tf.data.episodes import evaluation_episodes, evaluation_tasks, meta_batches, training_tasks
from meta_drn_tf.data.fss1000 import DataError, load_bank, split_classes
from meta_drn_tf.data.images import binary_mask
from meta_drn_tf.data.synthetic import synthetic_bank, write_fss_layout


# ----- mask decoding --------------------------------------------------------
def _disc(size=20):
    yy, xx = np.mgrid[:size, :size]
    return ((yy - 10) ** 2 + (xx - 10) ** 2 < 36).astype(np.uint8)


@pytest.mark.parametrize("encode", [
    lambda m: m * 255,                                   # L 0/255
    lambda m: m,                                         # L 0/1
    lambda m: np.repeat(m[..., None], 3, -1),            # RGB 0/1
    lambda m: np.stack([m * 128, m * 0, m * 0], -1),     # palette 0/1 as OpenCV expands it (VOC red)
    lambda m: np.dstack([m * 255] * 3 + [np.full_like(m, 255)]),  # RGBA, opaque
    lambda m: np.dstack([m * 0] * 3 + [m * 255]),        # RGBA carried by alpha only
])
def test_every_mask_encoding_decodes_to_zero_one(encode):
    m = _disc()
    np.testing.assert_array_equal(binary_mask(encode(m)), m)


def test_antialiased_edges_are_split_at_half_intensity():
    grey = np.array([[0, 100, 127, 128, 200, 255]], np.uint8)
    np.testing.assert_array_equal(binary_mask(grey), [[0, 0, 0, 1, 1, 1]])


def test_empty_mask_decodes_to_zeros():
    assert binary_mask(np.zeros((4, 4), np.uint8)).sum() == 0


# ----- folder reader ---------------------------------------------------------
def _write_class(root, name, n, size=(40, 30), empty=()):
    folder = os.path.join(root, name)
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(1, n + 1):
        cv2.imwrite(os.path.join(folder, f"{i}.jpg"), rng.integers(0, 255, size + (3,), dtype=np.uint8))
        mask = np.zeros(size, np.uint8)
        if i not in empty:
            mask[5:20, 5:15] = 255
        cv2.imwrite(os.path.join(folder, f"{i}.png"), mask)


def test_reader_resizes_any_size_and_reports_short_classes(tmp_path, caplog):
    root = str(tmp_path)
    _write_class(root, "a", 4, size=(40, 30))
    _write_class(root, "b", 3, size=(64, 80))
    _write_class(root, "short", 1)
    with caplog.at_level(logging.WARNING):
        bank = load_bank(root, ["a", "b", "short"], 16, min_images=2, progress=False)
    assert bank.class_names == ["a", "b"]
    assert bank.images.shape == (2, 4, 16, 16, 3) and bank.masks.shape == (2, 4, 16, 16)
    assert list(bank.counts) == [4, 3]
    assert set(np.unique(bank.masks)) <= {0, 1} and bank.masks[0, 0].any()
    assert "short" in caplog.text


def test_empty_masks_are_reported_and_never_supports(tmp_path, caplog):
    root = str(tmp_path)
    _write_class(root, "a", 4, empty=(1, 2))
    with caplog.at_level(logging.WARNING):
        bank = load_bank(root, ["a"], 16, progress=False)
    assert "1.png" in caplog.text and "empty" in caplog.text
    assert list(bank.nonempty[0]) == [False, False, True, True]
    for t in training_tasks(bank, 1, 2, seed=0, augment=False).take(20):
        assert t["support_masks"].numpy().sum() > 0
    assert {tuple(e[1]) for e in evaluation_episodes(bank, 1)} == {(2,), (3,)}


@pytest.mark.parametrize("damage,message", [
    (lambda d: open(os.path.join(d, "2.jpg"), "wb").write(b"not a jpeg"), "2.jpg: cannot be decoded"),
    (lambda d: os.remove(os.path.join(d, "3.png")), "3.png: mask is missing"),
    (lambda d: cv2.imwrite(os.path.join(d, "1.png"), np.zeros((7, 9), np.uint8)),
     "1.png: mask is 9x7 but its image is 30x40"),
])
def test_bad_files_raise_errors_that_name_them(tmp_path, damage, message):
    _write_class(str(tmp_path), "a", 3)
    damage(str(tmp_path / "a"))
    with pytest.raises(DataError, match=message):
        load_bank(str(tmp_path), ["a"], 16, progress=False)


def _damage_three(root):
    _write_class(root, "a", 4)
    _write_class(root, "b", 4)
    open(os.path.join(root, "a", "2.jpg"), "wb").write(b"not a jpeg")
    os.remove(os.path.join(root, "a", "3.png"))
    cv2.imwrite(os.path.join(root, "b", "1.png"), np.zeros((7, 9), np.uint8))


def test_every_bad_file_is_reported_at_once(tmp_path):
    _damage_three(str(tmp_path))
    with pytest.raises(DataError) as error:
        load_bank(str(tmp_path), ["a", "b"], 16, progress=False)
    message = str(error.value)
    assert message.splitlines()[0].endswith("3 image/mask pair(s) cannot be used (fix or remove them, "
                                            "or pass --skip_bad_files to use the rest):")
    for name in ("2.jpg: cannot be decoded", "3.png: mask is missing", "1.png: mask is 9x7"):
        assert name in message


def test_reports_are_capped(tmp_path):
    _write_class(str(tmp_path), "a", fss1000.MAX_REPORTED_FILES + 5)
    for i in range(1, fss1000.MAX_REPORTED_FILES + 6):
        os.remove(tmp_path / "a" / f"{i}.png")
    with pytest.raises(DataError) as error:
        load_bank(str(tmp_path), ["a"], 16, progress=False)
    lines = str(error.value).splitlines()
    assert len(lines) == fss1000.MAX_REPORTED_FILES + 2 and lines[-1].strip() == "... and 5 more"


def test_skip_bad_files_keeps_the_rest_and_counts(tmp_path, caplog):
    _damage_three(str(tmp_path))
    with caplog.at_level(logging.WARNING):
        bank = load_bank(str(tmp_path), ["a", "b"], 16, progress=False, skip_bad_files=True)
    assert bank.class_names == ["a", "b"] and list(bank.counts) == [2, 3]
    assert "3 image/mask pair(s) cannot be used (skipped, --skip_bad_files)" in caplog.text


def test_missing_data_dir_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="no such directory"):
        load_bank(str(tmp_path / "nope"), ["a"], 16, progress=False)


def test_real_photos_in_every_mask_encoding(real_fewshot_dir):
    classes = sorted(os.listdir(real_fewshot_dir))
    bank = load_bank(real_fewshot_dir, classes, 64, progress=False)
    assert bank.class_names == classes
    for c in range(bank.num_classes):
        fractions = bank.masks[c, : bank.counts[c]].reshape(bank.counts[c], -1).mean(1)
        # Every photo shows its object: neither empty nor the whole frame.
        assert np.all((fractions > 0.005) & (fractions < 0.95)), (classes[c], fractions)


# ----- splits -------------------------------------------------------------------
def test_official_fss1000_split_is_700_60_240():
    names = fss1000.packaged_split("fss1000_classes")
    splits = {s: split_classes(names, s) for s in ("train", "val", "test")}
    assert [len(splits[s]) for s in ("train", "val", "test")] == [700, 60, 240]
    assert not set(splits["train"]) & set(splits["val"]) and not set(splits["val"]) & set(splits["test"])
    assert "bus" in splits["test"]


def test_other_folders_get_a_seeded_disjoint_split(tmp_path):
    names = [f"c{i}" for i in range(50)]
    a = {s: split_classes(names, s, seed=1) for s in ("train", "val", "test")}
    assert a == {s: split_classes(names, s, seed=1) for s in ("train", "val", "test")}
    assert sorted(sum(a.values(), [])) == sorted(names)
    assert a["test"] != split_classes(names, "test", seed=2)
    (tmp_path / "val.txt").write_text("c1\nc2\n")
    (tmp_path / "test.txt").write_text("c3\n")
    files = {"val": str(tmp_path / "val.txt"), "test": str(tmp_path / "test.txt")}
    assert split_classes(names, "test", split_files=files) == ["c3"]
    assert len(split_classes(names, "train", split_files=files)) == 47


# ----- synthetic dataset ---------------------------------------------------------
def test_synthetic_is_deterministic_by_seed():
    a, b, c = synthetic_bank(3, 2, 32, seed=5), synthetic_bank(3, 2, 32, seed=5), synthetic_bank(3, 2, 32, seed=6)
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.masks, b.masks)
    assert not np.array_equal(a.images, c.images)


def test_synthetic_written_to_disk_reads_back(tmp_path):
    bank = synthetic_bank(3, 4, 48, seed=0)
    write_fss_layout(bank, str(tmp_path))
    read = load_bank(str(tmp_path), bank.class_names, 48, progress=False)
    np.testing.assert_array_equal(read.masks, bank.masks)
    assert np.abs(read.images.astype(int) - bank.images).mean() < 8  # JPEG of a noisy image


def _iou(pred, target):
    union = np.logical_or(pred, target).sum()
    return np.logical_and(pred, target).sum() / union if union else 1.0


def test_trivial_predictors_score_far_below_perfect():
    bank = synthetic_bank(12, 6, 64, seed=0)
    all_fg, copy_support = [], []
    for c, support, queries in evaluation_episodes(bank, 1):
        for q in queries:
            all_fg.append(_iou(np.ones_like(bank.masks[c, q]), bank.masks[c, q]))
            copy_support.append(_iou(bank.masks[c, support[0]], bank.masks[c, q]))
    assert np.mean(all_fg) < 0.25
    assert np.mean(copy_support) < 0.3
    # Distractors: some images hold objects of other classes outside the mask.
    assert 0.02 < bank.masks.mean() < 0.3


# ----- episodic pipeline --------------------------------------------------------
def test_training_tasks_shapes_and_meta_batches(tiny_bank):
    batch = next(iter(meta_batches(training_tasks(tiny_bank, 2, 3, seed=0), 4)))
    assert batch["support_images"].shape == (4, 2, 32, 32, 3)
    assert batch["support_masks"].shape == (4, 2, 32, 32, 1)
    assert batch["query_images"].shape == (4, 3, 32, 32, 3)
    images = batch["query_images"].numpy()
    assert images.min() >= 0 and images.max() <= 1
    assert set(np.unique(batch["query_masks"].numpy())) <= {0.0, 1.0}


def test_task_stream_is_a_pure_function_of_seed_and_position(tiny_bank):
    full = [t["query_images"].numpy() for t in training_tasks(tiny_bank, 1, 2, seed=7).take(6)]
    again = [t["query_images"].numpy() for t in training_tasks(tiny_bank, 1, 2, seed=7).take(6)]
    resumed = [t["query_images"].numpy() for t in training_tasks(tiny_bank, 1, 2, seed=7, start_task=4).take(2)]
    other = [t["query_images"].numpy() for t in training_tasks(tiny_bank, 1, 2, seed=8).take(6)]
    assert all(np.array_equal(a, b) for a, b in zip(full, again))
    assert all(np.array_equal(a, b) for a, b in zip(full[4:], resumed))
    assert not all(np.array_equal(a, b) for a, b in zip(full, other))


def test_images_of_a_task_are_drawn_without_replacement_from_one_class(tiny_bank):
    flat = tiny_bank.images.reshape(-1, *tiny_bank.images.shape[2:])
    for t in training_tasks(tiny_bank, 2, 4, seed=0, augment=False).take(10):
        images = (np.concatenate([t["support_images"], t["query_images"]]) * 255).round().astype(np.uint8)
        positions = [int(np.flatnonzero((flat == im).all(axis=(1, 2, 3)))[0]) for im in images]
        assert len(set(positions)) == 6
        assert len({p // tiny_bank.images.shape[1] for p in positions}) == 1


def test_augmentation_moves_image_and_mask_together_and_keeps_masks_binary():
    mask = np.zeros((4, 32, 32, 1), np.float32)
    mask[:, 8:20, 6:26] = 1
    image = np.repeat(mask, 3, -1)  # the image *is* the mask: any misalignment shows
    aug_image, aug_mask = augment_task(tf.constant(image), tf.constant(mask), tf.constant([1, 2], tf.int64))
    aug_image, aug_mask = aug_image.numpy(), aug_mask.numpy()
    assert set(np.unique(aug_mask)) <= {0.0, 1.0}
    assert not np.array_equal(aug_mask, mask)  # something moved
    # Lighting shifts intensities, so compare the image's shape against the mask.
    bright = aug_image.mean(-1, keepdims=True) > (aug_image.max() + aug_image.min()) / 2
    assert (bright == (aug_mask > 0)).mean() > 0.97


def test_evaluation_episodes_use_each_image_once_as_support(tiny_bank):
    episodes = evaluation_episodes(tiny_bank, 1)
    assert len(episodes) == tiny_bank.num_classes * 6
    for _, support, queries in episodes:
        assert len(queries) == 5 and support[0] not in queries
    tasks = list(evaluation_tasks(tiny_bank, 1, limit=7))
    assert len(tasks) == 7 and tasks[0]["query_images"].shape == (5, 32, 32, 3)


def test_all_split_and_class_lists_of_a_folder(tmp_path):
    from meta_drn_tf.data import load_split, load_splits
    from meta_drn_tf.data.config import DataConfig

    for name in ("a", "b", "c", "d"):
        _write_class(str(tmp_path), name, 3)
    folder = DataConfig(data_dir=str(tmp_path))
    everything = load_split(folder, "all", 16, progress=False)
    assert everything.class_names == ["a", "b", "c", "d"]
    listed = tmp_path / "classes.txt"
    listed.write_text("d\nb\n")
    assert load_split(folder, "test", 16, classes_file=str(listed), progress=False).class_names == ["d", "b"]
    splits = load_splits(folder, ("train", "val", "test"), 16, progress=False)
    assert sorted(sum((b.class_names for b in splits.values()), [])) == ["a", "b", "c", "d"]
    listed.write_text("b\nzebra\n")
    with pytest.raises(DataError, match="classes.txt: 1 of its classes are not in --data_dir .*zebra"):
        load_split(folder, "all", 16, classes_file=str(listed), progress=False)


def test_a_label_map_is_refused_as_a_mask_naming_its_values(tmp_path):
    from meta_drn_tf.data.images import read_mask

    labels = np.zeros((6, 6), np.uint8)
    labels[:2], labels[2:4] = 1, 2  # two objects: label 1 would silently become background
    cv2.imwrite(str(tmp_path / "labels.png"), labels)
    with pytest.raises(DataError, match=r"labels.png: holds the values 0, 1, 2, a label map rather than a mask"):
        read_mask(str(tmp_path / "labels.png"), (6, 6))
    soft = np.linspace(0, 255, 36).reshape(6, 6).astype(np.uint8)  # antialiased edges: many values, bright peak
    cv2.imwrite(str(tmp_path / "soft.png"), soft)
    assert read_mask(str(tmp_path / "soft.png"), (6, 6)).sum() == (soft > 127.5).sum()
