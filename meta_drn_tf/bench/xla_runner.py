"""Runs the XLA programs written by `python tools/gpu_check.py --hlo=DIR` with JAX's XLA, on any device.

    python DIR/run.py [--report=DIR/report.md] [--budget_s=480] [--repeats=5] [--check_only] [--programs=REGEX]

This file travels alone (copied into DIR as run.py): it needs numpy and JAX, not TensorFlow and not
this package. It reads DIR/manifest.json, regenerates every program's seeded inputs (weights,
images, masks) with numpy, compiles each program for the first device JAX finds (a GPU when there
is one), and:

- checks the small programs' results against the figures TensorFlow computed on a CPU
  (DIR/references.npz): the relative error of all outputs as one vector, and of the loss;
- times the full-size programs (median of --repeats after a warm-up) and reports seconds per
  step, tasks per second, the projected FSS-1000 epoch (7,000 tasks) beside the paper's RTX 2080
  time, and memory (XLA's buffer sizes; the device's peak where JAX reports it).

Rows run in the manifest's order (checks first, then the most important timings) and stop
starting when --budget_s is spent; the report names the rows it did not reach. What is measured is
XLA's code for this project's programs, not TensorFlow's executor or cuDNN through TensorFlow.

Only public JAX APIs are used: `jax.export` (an `Exported` made for the program's signature, with
the program's StableHLO portable artifact in place of its module) and `jax.jit`.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import re
import statistics
import sys
import time

import numpy as np

MANIFEST = "manifest.json"
REFERENCES = "references.npz"
EPOCH_TASKS = 7000  # FSS-1000's 700 training classes x 10 images, one task each, as the paper counts an epoch
PAPER_EPOCH = {"maml": "28:40", "fomaml": "18:09", "metasgd": "29:32", "reptile": "51:09"}  # RTX 2080, min:s
TESTED_JAX = "0.6.2, 0.8.3 and 0.10.2"  # the versions this runner was tested with (its APIs are public)


def generate(spec: dict, seed: int, index: int) -> np.ndarray:
    """The seeded value of one program input, as described by its manifest entry.

    `spec["init"]` is one of: {"kind": "uniform"} (images in [0, 1)), {"kind": "mask", "p": p}
    (0/1 with P(1) = p), {"kind": "normal", "std": s}, {"kind": "constant", "value": v}.
    Each input has its own stream (seed, index): the same values in TensorFlow and in the runner.
    """
    init, shape = spec["init"], tuple(spec["shape"])
    rng = np.random.default_rng([seed, index])
    kind = init["kind"]
    if kind == "uniform":
        value = rng.uniform(size=shape)
    elif kind == "mask":
        value = rng.uniform(size=shape) < init["p"]
    elif kind == "normal":
        value = rng.standard_normal(size=shape) * init["std"]
    elif kind == "constant":
        value = np.full(shape, init["value"])
    else:
        raise ValueError(f"unknown input kind {kind!r} in {spec['name']}")
    return value.astype(spec["dtype"])


def program_inputs(program: dict, seed: int) -> list[np.ndarray]:
    return [generate(spec, seed, i) for i, spec in enumerate(program["inputs"])]


def relative_error(ours, reference) -> float:
    """||ours - reference|| / ||reference|| over all outputs as one float64 vector."""
    a = np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in ours])
    b = np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in reference])
    if not np.all(np.isfinite(a)):
        return float("inf")
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


class Program:
    """One program of the folder, compiled for JAX's default device."""

    def __init__(self, folder: str, entry: dict):
        import jax
        from jax import export

        with open(os.path.join(folder, entry["artifact"]), "rb") as f:
            artifact = f.read()
        avals = [jax.ShapeDtypeStruct(tuple(s["shape"]), np.dtype(s["dtype"])) for s in entry["inputs"]]
        outputs = [(tuple(s["shape"]), np.dtype(s["dtype"])) for s in entry["outputs"]]

        def signature(*args):  # only its signature is used: the program replaces its body
            import jax.numpy as jnp

            return tuple(jnp.zeros(shape, dtype) for shape, dtype in outputs)

        template = export.export(jax.jit(signature))(*avals)
        missing = {"mlir_module_serialized", "module_kept_var_idx", "fun_name"} - {
            f.name for f in dataclasses.fields(template)}
        if missing:
            sys.exit(f"error: jax {jax.__version__}'s jax.export.Exported lacks {sorted(missing)}; "
                     f"install a jax this runner was tested with ({TESTED_JAX})")
        self.exported = dataclasses.replace(template, mlir_module_serialized=artifact, fun_name=entry["name"],
                                            module_kept_var_idx=tuple(range(len(avals))))
        self.avals = avals
        self.compiled = None
        self.compile_s = None

    def compile(self):
        import jax

        start = time.perf_counter()
        self.compiled = jax.jit(self.exported.call).lower(*self.avals).compile()
        self.compile_s = time.perf_counter() - start
        return self.compiled

    def __call__(self, *args):
        if self.compiled is None:
            self.compile()
        outputs = self.compiled(*args)
        return outputs if isinstance(outputs, (tuple, list)) else (outputs,)

    def memory_bytes(self) -> int | None:
        """XLA's buffers for one call: arguments, outputs and temporaries (None where not reported)."""
        try:
            analysis = self.compiled.memory_analysis()
            return int(analysis.argument_size_in_bytes + analysis.output_size_in_bytes
                       + analysis.temp_size_in_bytes)
        except Exception:  # a backend without the analysis
            return None


def check(folder: str, entry: dict, references) -> dict:
    """Runs a program on its seeded inputs and compares with TensorFlow's outputs."""
    return compare(entry, run_program(folder, entry), references)


def run_program(folder: str, entry: dict) -> list[np.ndarray]:
    """A program's outputs on its seeded inputs."""
    program = Program(folder, entry)
    return [np.asarray(o) for o in program(*program_inputs(entry, entry["seed"]))]


def compare(entry: dict, outputs: list[np.ndarray], references) -> dict:
    """A program's outputs against TensorFlow's (`references`: "NAME/i" -> array): errors, pass/fail."""
    expected = [references[f"{entry['name']}/{i}"] for i in range(len(entry["outputs"]))]
    error = relative_error(outputs, expected)
    loss = entry.get("loss_output")
    loss_error = None if loss is None else relative_error([outputs[loss]], [expected[loss]])
    return {"error": error, "loss_error": loss_error, "passed": error <= entry["rtol"] and (
        loss_error is None or loss_error <= entry["rtol"]), "loss": None if loss is None else float(outputs[loss])}


def time_program(folder: str, entry: dict, repeats: int) -> dict:
    """Seconds per call (median of `repeats` after one warm-up call) and memory."""
    import jax

    program = Program(folder, entry)
    program.compile()
    device = jax.devices()[0]
    args = [jax.device_put(x, device) for x in program_inputs(entry, entry["seed"])]
    outputs = program(*args)
    jax.block_until_ready(outputs)
    finite = all(bool(np.all(np.isfinite(np.asarray(o, np.float32)))) for o in outputs)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(program(*args))
        times.append(time.perf_counter() - start)
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    peak = (stats or {}).get("peak_bytes_in_use")
    return {"seconds": statistics.median(times), "compile_s": program.compile_s, "memory": program.memory_bytes(),
            "peak": peak, "finite": finite}


def minutes(seconds: float) -> str:
    return f"{int(seconds // 60)}:{int(round(seconds % 60)):02d}"


def paper_seconds(algorithm: str) -> float:
    m, s = PAPER_EPOCH[algorithm].split(":")
    return 60 * int(m) + int(s)


def _mib(n: int | None) -> str:
    return "" if n is None else f"{n / 2**20:.0f}"


def check_row(entry: dict, result: dict) -> str:
    loss = "" if result["loss"] is None else f"{result['loss']:.6g}"
    loss_error = "" if result["loss_error"] is None else f"{result['loss_error']:.1e}"
    return (f"| {entry['name']} | {loss} | {loss_error} | {result['error']:.1e} | {entry['rtol']:.0e} | "
            f"{'pass' if result['passed'] else '**FAIL**'} |")


def time_row(entry: dict, result: dict) -> str:
    tasks = entry.get("tasks")
    epoch = paper = ratio = rate = ""
    if tasks:
        rate = f"{tasks / result['seconds']:.1f}"
        projected = result["seconds"] * EPOCH_TASKS / tasks
        epoch = minutes(projected)
        if entry.get("algorithm") in PAPER_EPOCH:
            paper = PAPER_EPOCH[entry["algorithm"]]
            ratio = f"{projected / paper_seconds(entry['algorithm']):.2f}"
    finite = "" if result["finite"] else " (non-finite outputs)"
    return (f"| {entry['name']} | {result['seconds']:.4f}{finite} | {rate} | {epoch} | {paper} | {ratio} | "
            f"{result['compile_s']:.1f} | {_mib(result['memory'])} | {_mib(result['peak'])} |")


CHECK_HEAD = ["| program | loss | loss rel. error | outputs rel. error | tolerance | |", "|---|---|---|---|---|---|"]
TIME_HEAD = ["| program | s/step | tasks/s | projected epoch (7,000 tasks) | paper, RTX 2080 | ratio | compile s "
             "| XLA buffers MiB | device peak MiB |", "|---|---|---|---|---|---|---|---|---|"]


def run_rows(folder: str, manifest: dict, budget_s: float, repeats: int, check_only: bool,
             pattern: str = "") -> tuple[list, list, list]:
    """Check rows, timing rows (markdown lines) and the names of rows not reached, in manifest order;
    only the programs whose names `pattern` (a regular expression) finds."""
    start, checks, timings, skipped = time.time(), [], [], []
    references = np.load(os.path.join(folder, REFERENCES))
    for entry in manifest["programs"]:
        if (entry["role"] == "time" and check_only) or not re.search(pattern, entry["name"]):
            continue
        if time.time() - start > budget_s and (checks or timings):
            skipped.append(entry["name"])
            continue
        try:
            if entry["role"] == "check":
                checks.append(check_row(entry, check(folder, entry, references)))
            else:
                timings.append(time_row(entry, time_program(folder, entry, repeats)))
        except Exception as e:  # a program this device cannot run is reported, not fatal
            line = f"| {entry['name']} | failed: {type(e).__name__}: {str(e).splitlines()[0][:160]} |"
            (checks if entry["role"] == "check" else timings).append(line)
        print((checks if entry["role"] == "check" else timings)[-1], flush=True)
    return checks, timings, skipped


def report(folder: str, budget_s: float, repeats: int, check_only: bool, pattern: str = "",
           tf32: bool = False) -> tuple[str, bool]:
    """The markdown report, and whether every check passed."""
    import jax

    with open(os.path.join(folder, MANIFEST)) as f:
        manifest = json.load(f)
    device = jax.devices()[0]
    header = [f"# XLA programs of meta_drn_tf, run by JAX ({datetime.date.today().isoformat()})", "",
              f"Device: {getattr(device, 'device_kind', device.platform)} ({device.platform}, "
              f"{len(jax.devices())} visible); JAX {jax.__version__}. Programs written by TensorFlow "
              f"{manifest['tensorflow']} ({manifest['written']}): {manifest['description']}", "",
              "What this measures: XLA's code for this project's programs on this device; not TensorFlow's "
              "executor, nor cuDNN called through TensorFlow.", "",
              "float32 convolutions and products: " + (
                  "XLA's default (TF32 on Ampere and newer NVIDIA GPUs, as TensorFlow's default there)" if tf32
                  else "full float32 (NVIDIA_TF32_OVERRIDE=0; --tf32 times XLA's and TensorFlow's default)"), ""]
    checks, timings, skipped = run_rows(folder, manifest, budget_s, repeats, check_only, pattern)
    lines = header + ["## Checks against TensorFlow (CPU, small size)", "", *CHECK_HEAD, *checks, ""]
    if timings:
        lines += [f"## Timings (median of {repeats} after a warm-up)", "", *TIME_HEAD, *timings, ""]
    if skipped:
        lines += [f"Not reached within --budget_s={budget_s:.0f}: " + ", ".join(skipped), ""]
    passed = all("| pass |" in line for line in checks)
    return "\n".join(lines), passed


def main(argv: list[str] | None = None) -> int:
    here = os.path.dirname(os.path.abspath(__file__))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--folder", default=here, help="The folder gpu_check.py --hlo wrote (default: this file's).")
    parser.add_argument("--report", default=None, help="Where the markdown report goes (default: FOLDER/report.md).")
    parser.add_argument("--budget_s", type=float, default=480.0, help="Start no row after this many seconds.")
    parser.add_argument("--repeats", type=int, default=5, help="Timed calls per program, after one warm-up.")
    parser.add_argument("--check_only", action="store_true", help="Only the checks against TensorFlow.")
    parser.add_argument("--tf32", action="store_true", help="Let NVIDIA GPUs run float32 convolutions and "
                        "products in TF32, XLA's default there (float32 checks then fail: ~1e-2 relative error).")
    parser.add_argument("--programs", default="", help="Only the programs whose names this regular expression "
                        "finds (e.g. 'float32' or '^time-(forward|adapt)').")
    args = parser.parse_args(argv)
    if not os.path.isfile(os.path.join(args.folder, MANIFEST)):
        sys.exit(f"error: --folder {args.folder}: no {MANIFEST} there; write one with "
                 "`python tools/gpu_check.py --hlo=FOLDER`")
    if not args.tf32:
        # On an H200, XLA's default TF32 left 1.3e-2 relative error in float32 meta-gradients (4e-4 in the
        # forward pass): full float32 unless asked. CUDA reads this when it starts, so before JAX does.
        os.environ["NVIDIA_TF32_OVERRIDE"] = "0"
    try:
        import jax  # noqa: F401
    except ImportError:
        sys.exit("error: this runner needs JAX: pip install jax (jax[cuda13] for NVIDIA GPUs)")
    text, passed = report(args.folder, args.budget_s, args.repeats, args.check_only, args.programs, args.tf32)
    path = args.report or os.path.join(args.folder, "report.md")
    with open(path, "w") as f:
        f.write(text + "\n")
    print(f"\nReport written to {path}; checks {'passed' if passed else 'FAILED'}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
