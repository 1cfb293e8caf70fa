"""`tools/gpu_check.py --hlo`: the XLA programs, run by JAX's XLA without TensorFlow, give TensorFlow's
meta-gradients (JAX's CPU backend here; a GPU where one is lent)."""

import collections
import gzip
import importlib.util
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import warm

pytest.importorskip("jax", reason="the XLA programs' runner needs JAX: pip install -e '.[hlo]'")
pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ALGORITHMS = ("maml", "fomaml", "metasgd", "reptile")


def _runner(folder):
    """The folder's run.py as a module (what travels, not the package's copy)."""
    spec = importlib.util.spec_from_file_location("xla_programs_run", folder / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _manifest(folder):
    return json.loads((folder / "manifest.json").read_text())


def _check_the_runner_alone_reproduces_tensorflow_for_every_algorithm(folder):
    """run.py in a process that never imports TensorFlow (or this package) checks every program."""
    # LLVM's optimisation of the CPU code is no part of what is checked (the programs' values): level 0
    # halves the compile time of the eight programs.
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": "", "XLA_FLAGS": "--xla_backend_optimization_level=0"}
    # Importing either would fail in this process: the runner must not need them.
    without = ("import runpy, sys; sys.modules['tensorflow'] = sys.modules['meta_drn_tf'] = None; "
               "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')")
    result = subprocess.run([sys.executable, "-c", without, str(folder / "run.py"), "--repeats=1"],
                            capture_output=True, text=True, timeout=900, env=env, cwd=folder)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = (folder / "report.md").read_text()
    assert "full float32 (NVIDIA_TF32_OVERRIDE=0" in report  # what a GPU's float32 checks need
    for algorithm, dilations in [(a, "native") for a in ALGORITHMS] + [("maml", "space_to_batch")]:
        row = re.search(rf"^\| check-{algorithm}-float32-{dilations} \| ([\d.]+) \| ([\d.e+-]+) \| "
                        rf"([\d.e+-]+) \| 1e-05 \| pass \|$", report, re.MULTILINE)
        assert row, report
        assert float(row[2]) <= 1e-5 and float(row[3]) <= 1e-5
    for kind in ("forward", "adapt"):
        assert re.search(rf"^\| check-{kind}-float32-native \|\s+\|\s+\| [\d.e+-]+ \| 1e-05 \| pass \|$", report,
                         re.MULTILINE), report
    timed = re.search(r"^\| time-fomaml-float32-native \| ([\d.]+) \| ([\d.]+) \| (\d+):(\d\d) \| 18:09 \|",
                      report, re.MULTILINE)
    assert timed, report
    seconds, tasks_per_s = float(timed[1]), float(timed[2])
    assert abs(tasks_per_s - 2 / seconds) <= 0.05 * tasks_per_s + 0.1  # the smoke meta-batch of 2 tasks


def _check_a_check_fails_on_another_algorithms_or_a_perturbed_reference(folder):
    """The tolerance tells MAML's second-order meta-gradient from first-order MAML's, and a 1e-4 change
    from a 1e-6 one. (The outputs are TensorFlow's: the runner's matched them above.)"""
    runner = _runner(folder)
    programs = {p["name"]: p for p in _manifest(folder)["programs"]}
    references = dict(np.load(folder / "references.npz"))
    maml = programs["check-maml-float32-native"]
    outputs = [references[f"{maml['name']}/{i}"] for i in range(len(maml["outputs"]))]
    fomaml_outputs = {k.replace("fomaml", "maml"): v for k, v in references.items() if k.startswith("check-fomaml")}
    assert not runner.compare(maml, outputs, fomaml_outputs)["passed"]

    def scaled(factor):
        return {k: v * factor if k.startswith(maml["name"] + "/") else v for k, v in references.items()}

    assert runner.compare(maml, outputs, scaled(1 + 1e-6))["passed"]
    assert not runner.compare(maml, outputs, scaled(1 + 1e-4))["passed"]
    broken = [np.full_like(o, np.nan) for o in outputs]
    assert not runner.compare(maml, broken, references)["passed"]


def _check_inputs_are_regenerated_from_the_manifest_alone(folder):
    """Same seed and position, same values; the weights keep the spread of Keras's initialisation."""
    runner = _runner(folder)
    program = _manifest(folder)["programs"][0]
    first, again = runner.program_inputs(program, 0), runner.program_inputs(program, 0)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not np.array_equal(runner.program_inputs(program, 1)[0], first[0])
    kernels = [(spec, value) for spec, value in zip(program["inputs"], first) if spec["init"]["kind"] == "normal"]
    assert kernels and all(abs(value.std() - spec["init"]["std"]) <= 0.2 * spec["init"]["std"]
                           for spec, value in kernels if value.size >= 100)


def _check_native_programs_convolve_with_dilations_and_the_rewrite_does_not(folder):
    """The GPU's form: dilated convolutions (and their gradients) as such; the rewrite: none dilated by 4
    (resblock3's), and dilation 2 only where a stride-2 convolution's kernel gradient needs it."""
    def dilations(name):
        with gzip.open(folder / f"{name}.stablehlo.mlir.gz", "rt") as f:
            return collections.Counter(re.findall(r"rhs_dilate = \[(\d+), \d+\]", f.read()))

    native, rewritten = dilations("check-maml-float32-native"), dilations("check-maml-float32-space_to_batch")
    assert native["4"] > 0 and rewritten["4"] == 0, (native, rewritten)
    assert native["2"] > rewritten["2"], (native, rewritten)


def test_the_smoke_folder_runs_without_tensorflow_and_gives_its_meta_gradients(tmp_path):
    """One test over one folder (writing it takes a minute): pytest-xdist then runs it all on one worker."""
    folder = tmp_path / "programs"
    warm.run([sys.executable, os.path.join(ROOT, "tools", "gpu_check.py"), f"--hlo={folder}", "--smoke"],
             capture_output=True, text=True, timeout=900, check=True)
    _check_the_runner_alone_reproduces_tensorflow_for_every_algorithm(folder)
    _check_a_check_fails_on_another_algorithms_or_a_perturbed_reference(folder)
    _check_inputs_are_regenerated_from_the_manifest_alone(folder)
    _check_native_programs_convolve_with_dilations_and_the_rewrite_does_not(folder)
