"""The measuring tools still read what TensorFlow writes (their figures go into docs/performance.md)."""

import json
import os
import re
import sys

import pytest
import warm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_profile_memory_replays_the_allocations_of_a_step(tmp_path):
    result = warm.run(
        [sys.executable, os.path.join(ROOT, "tools", "profile_memory.py"), "--algo=maml", "--size=32",
         "--width=0.125", f"--memory_logdir={tmp_path}"],
        capture_output=True, text=True, timeout=600, check=True)
    before, peak, made = map(float, re.search(
        r"tensor memory: ([\d.]+) MiB before the step .*, peak ([\d.]+) MiB; alive at the peak and made "
        r"during the step: ([\d.]+) MiB", result.stdout).groups())
    assert peak > before and made > 0
    by_type = dict(re.findall(r"^\| (\w+) \| ([\d.]+) \| \d+ \|$", result.stdout, re.MULTILINE))
    assert "Conv2D" in by_type  # conv outputs kept for the norms' gradients
    assert list(tmp_path.glob("plugins/profile/*/*.xplane.pb"))  # the trace TensorBoard opens


FAKE_PEER = """import sys
size, precision, mode = sys.argv[1:4]
print("baseline_rss_gib", 0.5)
print("first_order" if mode == "first" else "second_order", "min step s 1.5 median 2.0 peak_rss_gib 1.5")
"""


@pytest.mark.slow
def test_benchmark_alternates_with_the_peer_and_prints_the_ratios(tmp_path):
    peer_script = tmp_path / "peer.py"
    peer_script.write_text(FAKE_PEER)  # a stand-in for the PyTorch peer: 2.0 s, peak 1.5 GiB, working set 1.0
    result = warm.run(
        [sys.executable, os.path.join(ROOT, "tools", "benchmark.py"), f"--peer={sys.executable}",
         f"--peer_script={peer_script}", "--size=32", "--width=0.125", "--algos=fomaml", "--precisions=float32",
         "--repeats=1", "--rounds=2"],
        capture_output=True, text=True, timeout=600, check=True)
    rows = re.findall(r"^\| fomaml float32 \| ([\d.]+), ([\d.]+), ([-\d.]+) \| 2\.00, 1\.50, 1\.00 "
                      r"\| ([\d.]+) \| ([\d.]+) \| ([-\d.]+) \|$", result.stdout, re.MULTILINE)
    assert len(rows) == 2, result.stdout
    # Every figure is printed to two decimals, each ratio from the unrounded ones: compare within that rounding.
    ratios = []
    for seconds, peak, working_set, time_ratio, peak_ratio, set_ratio in rows:
        assert abs(float(time_ratio) - float(seconds) / 2.0) <= 0.01
        assert abs(float(peak_ratio) - float(peak) / 1.5) <= 0.01
        assert abs(float(set_ratio) - float(working_set) / 1.0) <= 0.01
        ratios.append(float(time_ratio))
    summary = re.search(r"^\| fomaml float32, 2 rounds \| \| \| median ([\d.]+) \(([\d.]+)-([\d.]+)\) \| \| \|$",
                        result.stdout, re.MULTILINE)
    assert summary, result.stdout
    assert abs(float(summary[2]) - min(ratios)) <= 0.01 and abs(float(summary[3]) - max(ratios)) <= 0.01
    assert abs(float(summary[1]) - sum(ratios) / 2) <= 0.01


@pytest.mark.slow
def test_gpu_check_smoke_runs_end_to_end_and_writes_its_report(tmp_path):
    """`tools/gpu_check.py --smoke` on this CPU: the GPU tests within half of the budget (stopped here: it
    is spent), the first benchmark row, then rows until the budget, each with its projected FSS-1000 epoch
    beside the paper's; the rest are named."""
    report = tmp_path / "gpu_check.md"
    result = warm.run(
        [sys.executable, os.path.join(ROOT, "tools", "gpu_check.py"), "--smoke", f"--report={report}",
         "--budget_s=5", "--repeats=1"],
        capture_output=True, text=True, timeout=600, check=True, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    text = report.read_text()
    assert re.search(r"GPU tests \(`pytest -m gpu`\): stopped unfinished after \d s, at half of --budget_s=5",
                     text), text
    rows = re.findall(r"^\| (\w+) float32 parallel=(\w+) \| ([\d.]+) \| ([\d.]+) \| [\d.]+ \| (\d+):(\d\d) "
                      r"\| (\d+:\d\d) \| ([\d.]+) \|$", text, re.MULTILINE)
    assert rows and rows[0][:2] == ("maml", "1"), text
    for algorithm, _, seconds, tasks_per_s, m, s, paper, ratio in rows:
        projected = float(seconds) * 7000 / 2  # the smoke run's meta-batch of 2
        rounding = 0.0005 * 7000 / 2 + 0.5  # seconds are printed to 3 decimals, the epoch to the second
        assert abs(60 * int(m) + int(s) - projected) <= rounding + 0.5
        minutes, sec = paper.split(":")
        paper_s = 60 * int(minutes) + int(sec)
        assert abs(float(ratio) - projected / paper_s) <= 0.005 + rounding / paper_s
        assert paper == {"maml": "28:40", "fomaml": "18:09", "metasgd": "29:32", "reptile": "51:09"}[algorithm]
        assert abs(float(tasks_per_s) - 2 / float(seconds)) <= 0.05 * float(tasks_per_s) + 0.1
    assert "Not reached within --budget_s=5: " in text and "XLA" in text.split("Not reached")[1]
    assert result.stdout.count("| maml float32 parallel=1 |") == 1


# gpu_check with one mocked GPU (an H100): what it sets and runs, in order, recorded instead of done.
MOCKED_GPU_CHECK = """
import json, sys
sys.path.insert(0, sys.argv.pop(1))
import gpu_check
import tensorflow as tf
from absl import app
events = []
gpu = tf.config.PhysicalDevice("/physical_device:GPU:0", "GPU")
tf.config.list_physical_devices = lambda kind=None: [gpu] if kind in (None, "GPU") else []
tf.config.experimental.get_device_details = lambda device: {"device_name": "NVIDIA H100", "compute_capability": (9, 0)}
tf.config.experimental.set_memory_growth = lambda device, on: events.append(["memory growth", on])
tf.config.experimental.enable_tensor_float_32_execution = lambda on: events.append(["tf32", on])
gpu_check.run_gpu_tests = lambda deadline: events.append(["gpu tests"]) or "1 passed"
gpu_check.time_row = lambda row, sizes: events.append(["row", row.name]) or {"seconds": 1.0, "first_s": 1.0}
try:
    app.run(gpu_check.main)
except SystemExit:
    pass
print(json.dumps(events))
"""


@pytest.mark.slow
def test_gpu_check_runs_the_gpu_tests_before_it_touches_the_gpu_and_lets_memory_grow(tmp_path):
    result = warm.run([sys.executable, "-c", MOCKED_GPU_CHECK, os.path.join(ROOT, "tools"), "--smoke",
                       f"--report={tmp_path / 'r.md'}", "--budget_s=0", "--repeats=1"],
                      capture_output=True, text=True, timeout=300, check=True)
    events = json.loads(result.stdout.strip().splitlines()[-1])
    assert events[:3] == [["memory growth", True], ["tf32", False], ["gpu tests"]]
    assert [e[0] for e in events[3:]] == ["row"]  # the first row only: no budget left
    report = (tmp_path / "r.md").read_text()
    assert "GPU tests (`pytest -m gpu`): 1 passed" in report and "float32 in full float32" in report
    assert "NVIDIA H100 (compute capability 9.0): native" in report  # bfloat16, per card


@pytest.mark.slow
def test_gpu_check_refuses_a_flag_as_its_hlo_folder(tmp_path):
    result = warm.run([sys.executable, os.path.join(ROOT, "tools", "gpu_check.py"), "--hlo", "--smoke"],
                      capture_output=True, text=True, timeout=300, cwd=str(tmp_path))
    assert result.returncode != 0 and "looks like a flag, not a folder: give the folder as --hlo=FOLDER" in (
        result.stderr)
    assert os.listdir(tmp_path) == []


@pytest.mark.slow
def test_coco_label_maps_draws_polygons_and_crowds_with_the_80_class_order(tmp_path):
    """Categories 1 and 90 become 1 and 2 (their order among the ids); a crowd's run-length counts go
    column by column; a large object is drawn first, a small one over it; a second run keeps the files."""
    import cv2
    import numpy as np

    coco = {"images": [{"id": 7, "file_name": "COCO_val2014_7.jpg", "height": 6, "width": 8},
                       {"id": 8, "file_name": "COCO_val2014_8.jpg", "height": 6, "width": 8}],
            "categories": [{"id": 90, "name": "toothbrush"}, {"id": 1, "name": "person"}],
            "annotations": [
                {"image_id": 7, "category_id": 1, "iscrowd": 0, "area": 4.0,
                 "segmentation": [[2, 1, 3, 1, 3, 2, 2, 2]]},
                {"image_id": 7, "category_id": 90, "iscrowd": 0, "area": 30.0,
                 "segmentation": [[0, 0, 5, 0, 5, 4, 0, 4]]},
                {"image_id": 8, "category_id": 90, "iscrowd": 1, "area": 3.0,
                 "segmentation": {"size": [6, 8], "counts": [7, 3, 38]}}]}
    (tmp_path / "instances.json").write_text(json.dumps(coco))
    out = tmp_path / "val2014"
    args = [sys.executable, os.path.join(ROOT, "tools", "coco_label_maps.py"),
            f"--annotations={tmp_path / 'instances.json'}", f"--out={out}"]
    assert warm.run(args, capture_output=True, text=True, timeout=120).returncode == 0
    first = cv2.imread(str(out / "COCO_val2014_7.png"), cv2.IMREAD_UNCHANGED)
    assert first[0:5, 0:6].min() >= 1 and first[3, 1] == 2 and first[1:3, 2:4].tolist() == [[1, 1], [1, 1]]
    assert first[5].max() == 0 and first[:, 6:].max() == 0
    crowd = cv2.imread(str(out / "COCO_val2014_8.png"), cv2.IMREAD_UNCHANGED)
    expected = np.zeros((6, 8), np.uint8)
    expected[1:4, 1] = 2                                   # flat positions 7-9: column 1, rows 1-3
    np.testing.assert_array_equal(crowd, expected)
    stamp = os.stat(out / "COCO_val2014_8.png").st_mtime_ns
    assert warm.run(args, capture_output=True, text=True, timeout=120).returncode == 0
    assert os.stat(out / "COCO_val2014_8.png").st_mtime_ns == stamp
