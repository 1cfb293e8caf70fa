"""The release: a wheel that `python -m build` makes, installed into a fresh virtual environment,
runs a command and carries the package's data; the version comes from the package metadata."""

import os
import re
import site
import subprocess
import sys
import zipfile

import pytest

import meta_drn_tf

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_version_comes_from_the_installed_metadata():
    with open(os.path.join(ROOT, "pyproject.toml")) as f:  # (tomllib is Python 3.11+)
        assert meta_drn_tf.__version__ == re.search(r'^version = "([^"]+)"', f.read(), re.M)[1]


@pytest.mark.slow
def test_the_wheel_installs_in_a_fresh_environment_and_runs(tmp_path):
    # --no-isolation: the build tools of the test extra, no network.
    built = subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(tmp_path)],
                           cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = tmp_path.glob("meta_drn_tf-*.whl")
    assert wheel.name.startswith(f"meta_drn_tf-{meta_drn_tf.__version__}-py3-none-any")
    names = zipfile.ZipFile(wheel).namelist()
    for needed in ("meta_drn_tf/data/splits/fss1000_test.txt", "meta_drn_tf/runs/__init__.py",
                   "meta_drn_tf/bench/xla_runner.py"):
        assert needed in names, needed
    assert not [n for n in names if n.startswith(("tests/", "tools/", "docs/"))]

    venv = tmp_path / "fresh"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = str(venv / "bin" / "python")
    install = subprocess.run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index",
                              str(wheel)], capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr[-3000:]
    # The dependencies (TensorFlow is 600 MB; no network here) come from this environment, after the fresh
    # one's own site-packages: a .pth line adds the folder without running this environment's editable hook.
    fresh_site = subprocess.run([python, "-c", "import site; print(site.getsitepackages()[0])"],
                                capture_output=True, text=True, check=True).stdout.strip()
    with open(os.path.join(fresh_site, "dependencies.pth"), "w") as f:
        f.write("\n".join(site.getsitepackages()) + "\n")
    # Only what is installed: a PYTHONPATH set for the suite must not put a source tree first.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([python, "-c", "import meta_drn_tf; print(meta_drn_tf.__file__, meta_drn_tf.__version__)"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120, env=env)
    assert out.stdout.startswith(fresh_site) and out.stdout.split()[1] == meta_drn_tf.__version__, out
    model = subprocess.run([python, "-m", "meta_drn_tf.summary"], cwd=tmp_path, capture_output=True, text=True,
                           timeout=300, env={**env, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert model.returncode == 0, model.stderr[-3000:]
    assert re.search(r"total\s+9,626,464", model.stdout), model.stdout
