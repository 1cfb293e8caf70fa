"""The measuring tools still read what TensorFlow writes (their figures go into docs/performance.md)."""

import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_profile_memory_replays_the_allocations_of_a_step(tmp_path):
    result = subprocess.run(
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
