"""The field's benchmarks: their readers on fakes in the real layouts, seeded episodes, the summed
metrics against hand computation, and `evaluate --protocol=hsnet` end to end on each data set."""

import json
import os
import sys

import cv2
import numpy as np
import pytest
import tensorflow as tf
import warm
from field_fakes import (
    SIZE,
    write_chest_xray,
    write_coco,
    write_deepglobe,
    write_fss,
    write_isic,
    write_pascal,
    write_perseg,
)
from PIL import Image

from meta_drn_tf.data import benchmarks, label_maps
from meta_drn_tf.data.benchmarks import read_benchmark
from meta_drn_tf.data.sampled_episodes import episode_task, exhaustive_episodes, read_sample, sample_episodes
from meta_drn_tf.errors import DataError
from meta_drn_tf.results.metrics import SummedIoU, areas

WRITERS = {"pascal5i": write_pascal, "coco20i": write_coco, "deepglobe": write_deepglobe, "isic": write_isic,
           "chest_xray": write_chest_xray, "perseg": write_perseg}


@pytest.fixture(autouse=True)
def _cache_in_tmp(tmp_path, monkeypatch):
    """Label-map indexes go to a cache folder of the test's own."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def test_summed_iou_and_fb_iou_by_hand():
    """Two classes, three queries; the sums worked out on paper."""
    truth = np.zeros((4, 4), bool)
    truth[:2, :2] = True                        # 4 foreground pixels
    predicted = np.zeros((4, 4), bool)
    predicted[:2, :3] = True                    # 6 predicted: 4 right, 2 wrong
    ignore = np.zeros((4, 4), bool)
    ignore[3, :] = True                         # the last row counts in neither
    a = areas(predicted, truth, ignore)
    # foreground: I = 4, U = 6; background over the 12 counted pixels: I = 12 - 6 = 6, U = 12 - 4 = 8
    np.testing.assert_array_equal(a, [[6, 4], [8, 6]])
    scores = SummedIoU()
    scores.add("cat", a)
    scores.add("cat", areas(np.zeros((4, 4), bool), truth))           # fg I 0, U 4; bg I 12, U 16
    scores.add("dog", areas(None, truth))                             # not finite: all wrong, U = 16 each
    assert scores.per_class() == pytest.approx({"cat": 4 / 10, "dog": 0.0}, abs=1e-12)
    assert scores.miou() == pytest.approx((0.4 + 0.0) / 2, abs=1e-6)
    background = (6 + 12 + 0) / (8 + 16 + 16)
    foreground = (4 + 0 + 0) / (6 + 4 + 16)
    assert scores.fb_iou() == pytest.approx((background + foreground) / 2, abs=1e-6)
    # The paper's per-query mean differs: cat's queries score 4/6 and 0, so its mean is 1/3, not 0.4.


def test_pascal5i_folds_masks_and_the_ignore_label(tmp_path):
    write_pascal(str(tmp_path))
    fold = read_benchmark("pascal5i", str(tmp_path), fold=1)          # the VOC2012 folder's parent
    assert fold.class_names == ["bus", "car", "cat", "chair", "cow"]  # VOC's 6..10
    assert fold.episodes == 1000 and fold.draw == "each"
    assert all(os.path.basename(s.image)[7] == "v" for s in fold.samples["car"])  # VOC2012's val images
    train = read_benchmark("pascal5i", str(tmp_path / "VOC2012"), fold=1, split="train")
    assert len(train.class_names) == 15 and "car" not in train.class_names
    assert all(os.path.basename(s.image)[7] == "t" for c in train.samples for s in train.samples[c])
    # An image holding two classes is a sample of each; its mask is its class's pixels, 255 is ignored.
    sample = next(s for s in fold.samples["car"] if s.image.endswith("2008_06v0.jpg"))
    labels = np.asarray(Image.open(sample.annotation))
    photo, mask, ignore = read_sample(sample)
    assert photo.shape == (SIZE, SIZE, 3)
    np.testing.assert_array_equal(mask, labels == 7)
    np.testing.assert_array_equal(ignore, labels == 255)
    assert ignore.any() and (labels == 6).any()
    assert any(s.image == sample.image for s in read_benchmark("pascal5i", str(tmp_path), fold=1).samples["bus"])


def test_pascal_palette_label_maps_read_as_their_indices(tmp_path):
    grey, palette = tmp_path / "grey", tmp_path / "palette"
    write_pascal(str(grey), seed=4)
    write_pascal(str(palette), palette=True, seed=4)
    name = "2008_03v1"
    coloured = cv2.imread(str(palette / "VOC2012" / "SegmentationClassAug" / f"{name}.png"))
    assert coloured.ndim == 3 and len(np.unique(coloured.reshape(-1, 3), axis=0)) > 2  # OpenCV sees colours
    samples = [read_benchmark("pascal5i", str(root), fold=0).samples["bird"] for root in (grey, palette)]
    for a, b in zip(*samples):
        for x, y in zip(read_sample(a)[1:], read_sample(b)[1:]):
            np.testing.assert_array_equal(x, y)


def test_coco20i_folds_take_every_fourth_class(tmp_path):
    write_coco(str(tmp_path), per_class=1)
    fold = read_benchmark("coco20i", str(tmp_path), fold=2)
    assert fold.class_names == [label_maps.COCO_CLASSES[2 + 4 * k] for k in range(20)]
    assert fold.class_names[:3] == ["car", "train", "fire hydrant"] and fold.draw == "random_class"
    assert all("val2014" in s.image and s.label == label_maps.COCO_CLASSES.index(c) + 1
               for c in fold.class_names for s in fold.samples[c])
    train = read_benchmark("coco20i", str(tmp_path), fold=2, split="train")
    assert len(train.class_names) == 60 and not set(train.class_names) & set(fold.class_names)
    assert all("train2014" in s.image for c in train.class_names for s in train.samples[c])


def test_label_map_classes_are_read_once_and_again_when_the_folder_changes(tmp_path, monkeypatch):
    base = write_pascal(str(tmp_path))
    files = sorted(os.path.join(root, f) for root, _, names in os.walk(base) for f in names)
    first = read_benchmark("pascal5i", str(tmp_path), fold=0)
    train = read_benchmark("pascal5i", str(tmp_path), fold=0, split="train")
    monkeypatch.setattr(label_maps, "class_ids", lambda path: pytest.fail(f"read again: {path}"))
    assert read_benchmark("pascal5i", str(tmp_path), fold=0) == first  # both splits kept, neither read again
    assert read_benchmark("pascal5i", str(tmp_path), fold=0, split="train") == train
    assert sorted(os.path.join(root, f) for root, _, names in os.walk(base) for f in names) == files
    assert os.listdir(tmp_path / "cache" / "meta_drn_tf")[0].startswith("label_maps-")
    os.remove(os.path.join(base, "SegmentationClassAug", "2008_20t1.png"))  # the folder changed
    monkeypatch.undo()
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert read_benchmark("pascal5i", str(tmp_path), fold=0, split="train").samples


def test_cross_domain_sets_and_perseg(tmp_path):
    for name in ("deepglobe", "isic", "chest_xray", "perseg"):
        WRITERS[name](str(tmp_path))
    deepglobe = read_benchmark("deepglobe", str(tmp_path))
    assert deepglobe.class_names == ["1", "2", "3", "4", "5", "6"] and (deepglobe.episodes, deepglobe.seeds) == (600, 5)
    drawn = sample_episodes(deepglobe, seed=0)
    assert len(drawn) == 600 and [e.class_name for e in drawn[:7]] == ["1", "2", "3", "4", "5", "6", "1"]
    isic = read_benchmark("isic", str(tmp_path / "ISIC"))
    assert isic.class_names == ["1", "2", "3"] and isic.samples["2"][0].annotation.endswith("_segmentation.png")
    chest = read_benchmark("chest_xray", str(tmp_path))
    assert chest.class_names == ["lung"] and len(chest.samples["lung"]) == 4
    photo, mask, ignore = read_sample(chest.samples["lung"][0])           # a grey PNG photo
    assert photo.shape == (SIZE, SIZE, 3) and set(np.unique(mask)) == {0, 1} and ignore is None
    perseg = read_benchmark("perseg", str(tmp_path))
    assert perseg.fixed_support and perseg.class_names == ["object_0", "object_1", "object_2"]
    with pytest.raises(DataError, match="no train split"):
        read_benchmark("isic", str(tmp_path), split="train")


@pytest.mark.parametrize("name, damage, expected", [
    ("pascal5i", "VOC2012/JPEGImages/2008_01v1.jpg", "2008_01v1.jpg: the photo of a label map is missing"),
    ("pascal5i", "VOC2012/ImageSets/Segmentation/val.txt", "val.txt: VOC2012's list of validation images"),
    ("pascal5i", "VOC2012/SegmentationClassAug/2008_02v0.png", "2008_02v0.png: a label map is missing"),
    ("coco20i", "COCO2014/annotations/val2014", "annotations/val2014: the folder of label maps is missing"),
    ("deepglobe", "Deepglobe/3/test/groundtruth/1_3.png", "1_3.png: the mask is missing"),
    ("isic", "ISIC/ISIC2018_Task1-2_Training_Input", "ISIC2018_Task1-2_Training_Input is missing"),
    ("chest_xray", "LungSegmentation/CXR_png/CHNCXR_0001_0.png", "CHNCXR_0001_0.png: the photo of a mask"),
    ("perseg", "PerSeg/Annotations/object_1/02.png", "02.png: the mask is missing"),
])
def test_an_incomplete_copy_names_what_is_missing_and_where(tmp_path, name, damage, expected):
    import shutil

    WRITERS[name](str(tmp_path), **({"per_class": 1} if name == "coco20i" else {}))
    path = tmp_path / damage
    shutil.rmtree(path) if path.is_dir() else path.unlink()
    with pytest.raises(DataError, match=expected) as error:
        read_benchmark(name, str(tmp_path), fold=0)
    assert str(tmp_path) in str(error.value) and "docs/field.md" in str(error.value)


def test_seeded_episodes_repeat_exactly_and_never_use_the_query_as_support(tmp_path):
    write_pascal(str(tmp_path), per_class=3)
    fold = read_benchmark("pascal5i", str(tmp_path), fold=0)
    first = sample_episodes(fold, shots=2, seed=0)
    assert first == sample_episodes(fold, shots=2, seed=0) and first != sample_episodes(fold, shots=2, seed=1)
    assert len(first) == 1000
    assert all(e.queries[0].image not in {s.image for s in e.supports} and len(set(e.supports)) == 2 for e in first)
    assert all(e.queries[0] in fold.samples[e.class_name] and set(e.supports) <= set(fold.samples[e.class_name])
               for e in first)
    queries = [(e.class_name, e.queries[0]) for e in first]
    every = {(c, s) for c in fold.samples for s in fold.samples[c]}
    assert set(queries) == every                                   # each sample a query, round after round
    write_fss(str(tmp_path), classes=3, per_class=4)
    fss = benchmarks.read_fss1000(str(tmp_path / "fss"), "all")
    once = sample_episodes(fss, seed=7)
    assert sorted(e.queries[0].image for e in once) == sorted(s.image for c in fss.samples for s in fss.samples[c])
    perseg = read_benchmark("perseg", write_perseg(str(tmp_path)))
    fixed = sample_episodes(perseg, seed=3)
    assert len(fixed) == 3 * 3 and all(e.supports[0].image.endswith("00.jpg") for e in fixed)


def test_episode_tasks_hold_the_networks_input_and_the_masks_own_size(tmp_path):
    write_pascal(str(tmp_path))
    episode = sample_episodes(read_benchmark("pascal5i", str(tmp_path), fold=0), shots=1, seed=0)[0]
    task = episode_task(episode, 8, original_size=True)
    assert task["support_images"].shape == (1, 8, 8, 3) and task["query_masks"].shape == (1, 8, 8, 1)
    assert task["query_ignore"].shape == (1, 8, 8) and task["query_mask_original"].shape == (SIZE, SIZE)
    assert 0 <= task["query_images"].min() and task["query_images"].max() <= 1


def _run_dir(tmp_path):
    from meta_drn_tf.runs.config import RunConfig
    from meta_drn_tf.runs.directory import RunDirectory
    from meta_drn_tf.runs.learners import build_learner

    model_dir = str(tmp_path / "run")
    config = RunConfig.from_flags(model_dir=model_dir, image_size=SIZE, width=0.0625, inner_lr=0.5, seed=2,
                                  inner_steps=1)
    RunDirectory(model_dir).claim(config)
    tf.train.CheckpointManager(tf.train.Checkpoint(learner=build_learner(config)),
                               os.path.join(model_dir, "best"), 1).save()
    return model_dir


def _by_hand(benchmark, episodes: int, seed: int) -> tuple[float, float]:
    """The copied support mask's mIoU and FB-IoU, summed per class with plain numpy from the files."""
    inter, union = {}, {}
    for e in sample_episodes(benchmark, 1, episodes, seed):
        guess, _ = _mask_of(e.supports[0])
        truth, ignore = _mask_of(e.queries[0])
        valid = ~ignore
        for k, (p, t) in enumerate(((~guess, ~truth), (guess, truth))):
            inter.setdefault(e.class_name, np.zeros(2))[k] += (p & t & valid).sum()
            union.setdefault(e.class_name, np.zeros(2))[k] += ((p | t) & valid).sum()
    miou = np.mean([inter[c][1] / max(union[c][1], 1) for c in inter])
    fb = np.mean(sum(inter.values()) / np.maximum(sum(union.values()), 1))
    return float(miou), float(fb)


def _paper_by_hand(benchmark) -> float:
    """The copied support mask's mIoU@0.5 under the paper's protocol (12 episodes, evenly spread): the
    mean over classes of the mean per-query IoU, label 255 left out."""
    ious = {}
    for episode in exhaustive_episodes(benchmark, 1, 12):
        guess, _ = _mask_of(episode.supports[0])
        for query in episode.queries:
            truth, ignore = _mask_of(query)
            union = ((guess | truth) & ~ignore).sum()
            ious.setdefault(episode.class_name, []).append((guess & truth & ~ignore).sum() / union if union else 1.0)
    return float(np.mean([np.mean(v) for v in ious.values()]))


def _mask_of(sample):
    raw = np.asarray(Image.open(sample.annotation))
    if sample.label is None:
        return raw > 127, np.zeros(raw.shape, bool)
    return raw == sample.label, raw == 255


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return _run_dir(tmp_path_factory.mktemp("field"))


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("name", list(WRITERS))
def test_evaluate_runs_both_protocols_on_every_data_set(run_dir, tmp_path, name):
    """Both protocols on each data set; the copied mask's rows match the hand computation to 1e-6, and
    the same seed gives the same figures twice."""
    root = WRITERS[name](str(tmp_path / name))
    out = tmp_path / "eval"
    args = [sys.executable, "-m", "meta_drn_tf.evaluate", f"--model_dir={run_dir}", f"--dataset={name}",
            f"--data_dir={root}", "--fold=1", "--episodes=12", "--runs=2", f"--out_dir={out}", "--protocol=paper,hsnet"]
    done = warm.run(args, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((out / "summary_hsnet.json").read_text())
    benchmark = read_benchmark(name, root, fold=1)
    assert report["benchmark"] == benchmark.name
    copy = next(row for title, row in report["rows"].items() if title.startswith("copy"))
    assert copy["protocol"] == "hsnet" and copy["seeds"] == [0, 1]
    episodes = None if benchmark.fixed_support else 12
    assert copy["episodes"] == len(sample_episodes(benchmark, 1, episodes, 0))
    by_hand = [_by_hand(benchmark, episodes, seed) for seed in (0, 1)]
    assert copy["miou@0.5"] == pytest.approx(np.mean([m for m, _ in by_hand]), abs=1e-6)
    assert copy["fb_iou@0.5"] == pytest.approx(np.mean([f for _, f in by_hand]), abs=1e-6)
    table = (out / "table_hsnet.md").read_text()
    assert "protocol hsnet" in table and "seeds 0-1" in table and "FB-IoU (0.5)" in table
    assert "hsnet" in (out / "per_class_hsnet.csv").read_text().splitlines()[1]
    paper = json.loads((out / "summary.json").read_text())
    copied = next(row for title, row in paper.items() if title.startswith("copy"))
    assert copied["protocol"] == "paper" and copied["iou@0.5"] == pytest.approx(_paper_by_hand(benchmark), abs=1e-6)
    if name == "pascal5i":  # seeded: the same figures again
        again = tmp_path / "again"
        args[-2] = f"--out_dir={again}"
        assert warm.run(args, capture_output=True, text=True, timeout=300).returncode == 0
        assert json.loads((again / "summary_hsnet.json").read_text()) == report


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_evaluate_prints_both_protocols_on_fss1000(run_dir, tmp_path):
    model_dir = run_dir
    root = write_fss(str(tmp_path), classes=4, per_class=3)
    classes = tmp_path / "classes.txt"
    classes.write_text("class_1\nclass_3\n")
    out = tmp_path / "out"
    done = warm.run([sys.executable, "-m", "meta_drn_tf.evaluate", f"--model_dir={model_dir}", f"--data_dir={root}",
                     f"--classes_file={classes}", "--protocol=paper,hsnet", "--original_size", f"--out_dir={out}"],
                    capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Table I" in done.stdout and "protocol hsnet" in done.stdout
    paper = json.loads((out / "summary.json").read_text())
    first = next(iter(paper.values()))
    assert first["protocol"] == "paper" and first["episodes"] == 6 and first["classes"] == 2
    assert 0 <= first["fb_iou@0.5"] <= 1 and 0 <= first["summed_miou@0.5"] <= 1
    field = json.loads((out / "summary_hsnet.json").read_text())
    row = next(iter(field["rows"].values()))
    assert row["episodes"] == 6 and row["classes"] == 2 and row["scored_at"] == "each mask's own size"
    assert "paper" in (out / "per_class.csv").read_text().splitlines()[1]


def test_the_fields_fss1000_split_is_520_240_240_with_the_papers_test_classes():
    from meta_drn_tf.data.fss1000 import packaged_split, split_classes
    from meta_drn_tf.runs.config import RunConfig

    names = packaged_split("fss1000_classes")
    validation = RunConfig.from_flags(fss_split="field").data.validation_list
    field = {s: split_classes(names, s, validation=validation) for s in ("train", "val", "test")}
    paper = {s: split_classes(names, s) for s in ("train", "val", "test")}
    assert {s: len(c) for s, c in field.items()} == {"train": 520, "val": 240, "test": 240}
    assert field["test"] == paper["test"] and set(paper["val"]) < set(field["val"])
    assert set(field["train"]) < set(paper["train"]) and not set(field["val"]) & set(field["test"])


def test_file_training_tasks_are_a_function_of_the_seed_and_task(tmp_path):
    from meta_drn_tf.data.episodes import file_training_tasks

    write_pascal(str(tmp_path), per_class=3)
    train = read_benchmark("pascal5i", str(tmp_path), fold=0, split="train")
    first = list(file_training_tasks(train, SIZE, shots=1, queries=2, seed=3, num_tasks=4).as_numpy_iterator())
    again = list(file_training_tasks(train, SIZE, shots=1, queries=2, seed=3, start_task=2, num_tasks=2)
                 .as_numpy_iterator())
    for a, b in zip(first[2:], again):
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])         # a resumed pipeline reads the same tasks
    plain = next(file_training_tasks(train, SIZE, 1, 2, seed=3, augment=False, num_tasks=1).as_numpy_iterator())
    assert plain["support_images"].shape == (1, SIZE, SIZE, 3) and plain["query_masks"].shape == (2, SIZE, SIZE, 1)
    assert set(np.unique(plain["support_masks"])) <= {0.0, 1.0} and plain["support_masks"].any()
    other = next(file_training_tasks(train, SIZE, 1, 2, seed=4, augment=False, num_tasks=1).as_numpy_iterator())
    assert not np.array_equal(plain["query_images"], other["query_images"])


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_training_on_a_pascal5i_fold_validates_and_tests_on_its_held_out_classes(tmp_path):
    root = write_pascal(str(tmp_path / "data"), per_class=3)
    model_dir = tmp_path / "run"
    flags = ["--dataset=pascal5i", "--fold=2", f"--data_dir={root}", f"--model_dir={model_dir}", "--image_size=16",
             "--width=0.0625", "--queries=1", "--epochs=1", "--tasks_per_epoch=4", "--meta_batch_size=2",
             "--val_episodes=6", "--export_at_end=false", "--baseline_at_end=false"]
    check = warm.run([sys.executable, "-m", "meta_drn_tf.train", *flags, "--check_data"], capture_output=True,
                     text=True, timeout=300)
    assert check.returncode == 0, check.stderr[-3000:]
    assert "train PASCAL-5i fold 2 train: 15 classes" in check.stdout
    assert "val   PASCAL-5i fold 2 test: 5 classes" in check.stdout
    assert not model_dir.exists()                                    # --check_data writes nothing
    done = warm.run([sys.executable, "-m", "meta_drn_tf.train", *flags], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "train: 15 classes, validation: 5 classes" in done.stdout
    report = json.loads((model_dir / "test" / "summary_hsnet.json").read_text())
    assert report["benchmark"] == "PASCAL-5i fold 2 test" and next(iter(report["rows"].values()))["episodes"] == 1000
    evaluated = warm.run([sys.executable, "-m", "meta_drn_tf.evaluate", f"--model_dir={model_dir}", "--episodes=5",
                          "--nobaseline"], capture_output=True, text=True, timeout=300)   # the run's data set
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert "PASCAL-5i fold 2 test" in evaluated.stdout and "protocol hsnet" in evaluated.stdout
    os.remove(os.path.join(root, "JPEGImages", "2008_01t1.jpg"))
    broken = warm.run([sys.executable, "-m", "meta_drn_tf.train", *flags, "--check_data", "--fresh"],
                      capture_output=True, text=True, timeout=300)
    assert broken.returncode == 5 and "2008_01t1.jpg: the photo of a label map is missing" in broken.stderr


def test_the_papers_episodes_of_a_benchmark_split_their_queries_and_keep_their_number(tmp_path):
    write_fss(str(tmp_path), classes=2, per_class=5)
    fss = benchmarks.read_fss1000(str(tmp_path / "fss"), "all")
    episodes = exhaustive_episodes(fss, shots=2, queries_per_episode=2)
    assert len({e.number for e in episodes}) == 10 and len(episodes) == 20   # 3 queries each: groups of 2 and 1
    for number in range(10):
        parts = [e for e in episodes if e.number == number]
        assert sum(len(p.queries) for p in parts) == 3 and len({p.supports for p in parts}) == 1
        assert not set(parts[0].supports) & {q for p in parts for q in p.queries}
    assert len({e.number for e in exhaustive_episodes(fss, 2, limit=4)}) == 4
    task = episode_task(episodes[0], 8)
    assert task["query_images"].shape == (2, 8, 8, 3) and task["episode"] == 0


def test_the_fields_scores_at_each_masks_own_size():
    """--original_size: the prediction is upsampled to the query mask's own size and scored there,
    its 255 pixels left out; at the network's size the resized mask is scored instead."""
    from meta_drn_tf.training.benchmark_evaluation import _score_query

    mask = np.zeros((8, 10), np.uint8)
    mask[2:6, 3:8] = 1                                               # 20 pixels
    ignore = np.zeros((8, 10), bool)
    ignore[0, :] = True                                              # 10 pixels left out
    probabilities = np.zeros((4, 4), np.float32)
    probabilities[:, :2] = 0.9                                       # the left half, wherever it is scored
    task = {"class_name": "c", "query_masks": np.zeros((1, 4, 4, 1), np.float32),
            "query_ignore": np.zeros((1, 4, 4), bool), "query_mask_original": mask, "query_ignore_original": ignore}
    scores = {t: SummedIoU() for t in (0.5, 0.35)}
    assert _score_query(scores, task, probabilities)
    predicted = np.zeros((8, 10), bool)
    predicted[:, :5] = True                                          # bilinear keeps the halves apart
    np.testing.assert_array_equal(scores[0.5].counts["c"], areas(predicted, mask, ignore))
    assert scores[0.5].counts["c"][1, 1] == (predicted | mask.astype(bool))[1:].sum()
    del task["query_mask_original"], task["query_ignore_original"]
    scores = {t: SummedIoU() for t in (0.5, 0.35)}
    _score_query(scores, task, probabilities)
    assert scores[0.5].counts["c"].tolist() == [[8, 0], [16, 8]]   # empty truth at 4x4: 8 wrong, 8 right
