"""The measuring tools still read what TensorFlow writes (their figures go into docs/performance.md)."""

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
    """`tools/gpu_check.py --smoke` on this CPU: the first benchmark row, the GPU tests within half of the
    budget (stopped here: it is spent), then rows until the budget, each with its projected FSS-1000 epoch
    beside the paper's; the rest are named."""
    report = tmp_path / "gpu_check.md"
    result = warm.run(
        [sys.executable, os.path.join(ROOT, "tools", "gpu_check.py"), "--smoke", f"--report={report}",
         "--budget_s=5", "--repeats=1"],
        capture_output=True, text=True, timeout=600, check=True, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    text = report.read_text()
    assert re.search(r"GPU tests \(`pytest -m gpu`\): stopped unfinished after 1 s, at half of --budget_s=5",
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
