"""The project's XLA programs as StableHLO, for a machine that has XLA (through JAX) but no TensorFlow.

    plan = programs_plan(smoke=False)
    write_folder("hlo/", plan)      # then, anywhere JAX runs: python hlo/run.py

Each program is what TensorFlow's XLA bridge makes of a function traced with the kernel policy a
GPU gets (the bridge runs on this machine's CPU device: for platform "GPU" it takes no variables):

- `meta_step`: `MetaLearner.task_sums`, the part of a meta-step `--jit_compile` compiles (a
  meta-batch's summed meta-gradient and loss; the optimizer's update is outside it), for an
  algorithm with its flagfile's settings (`flags/<algo>.flags`) in a precision;
- `forward`: the served network's probabilities for a batch of queries at the meta-learned
  weights; `adapt`: one inner step on a support image, then the queries' probabilities.

Dilated convolutions take one of two forms: `native` (one dilated convolution and its one-op
gradients: what an accelerator gets) or `space_to_batch` (TensorFlow's rewrite, which its CPU
kernels need and device-neutral exports hold). Every input - weights, learned rates, the loss
scale, images, masks - is a program argument with a seeded numpy generator in the manifest
(`xla_runner.generate`), so the runner regenerates them without TensorFlow. Small `check`
programs come with TensorFlow's outputs for those inputs, computed op by op by TensorFlow
(eagerly: no XLA) on this CPU; `time` programs are the full-size ones.
"""

from __future__ import annotations

import dataclasses
import datetime
import gzip
import json
import os
import re
import shutil

import keras
import numpy as np
import tensorflow as tf

from meta_drn_tf.bench import xla_runner
from meta_drn_tf.meta import PAPER_ALGORITHMS, Adapter, MetaLearner
from meta_drn_tf.meta.config import PRECISION_POLICIES
from meta_drn_tf.network.config import NetworkConfig
from meta_drn_tf.network.model import build_meta_drn

ALGORITHMS = PAPER_ALGORITHMS
PRECISIONS = tuple(PRECISION_POLICIES)  # float32 first
# Relative error allowed between JAX's XLA and TensorFlow's executor on the same inputs: float32
# differs by summation order only; half precisions round every op, and each tolerance stays below
# that precision's own distance from the float32 meta-gradient (docs/performance.md, "XLA programs").
RTOL = {"float32": 1e-5, "bfloat16": 7.5e-2, "float16": 1e-2}
SEED = 0


@dataclasses.dataclass(frozen=True)
class Sizes:
    """A program's shapes: image side, width multiplier, tasks of a meta-batch, queries of a task."""

    image: int
    width: float
    tasks: int
    queries: int


SMALL = Sizes(32, 0.0625, 2, 2)


@dataclasses.dataclass(frozen=True)
class ProgramSpec:
    """One program of the folder.

    Attributes:
        role: "check" (small, with TensorFlow's outputs) or "time" (full size, timed).
        kind: "meta_step", "forward" or "adapt".
        algorithm: a registered algorithm (its flagfile's settings).
        precision: "float32", "bfloat16" or "float16".
        dilations: "native" or "space_to_batch".
        sizes: the shapes; None: the flagfile's (image size, width, meta-batch, queries).
    """

    role: str
    kind: str
    algorithm: str = "maml"
    precision: str = "float32"
    dilations: str = "native"
    sizes: Sizes | None = None

    @property
    def name(self) -> str:
        what = f"{self.algorithm}-{self.precision}" if self.kind == "meta_step" else f"{self.kind}-{self.precision}"
        return f"{self.role}-{what}-{self.dilations}"


def programs_plan(smoke: bool = False) -> list[ProgramSpec]:
    """The programs, most important first: the checks, then float32 meta-steps in the GPU's form,
    serving in both forms, the half precisions, and the meta-steps in the space-to-batch form
    (`--jit_compile` with the rewrite). `smoke`: the float32 checks (the rewrite for MAML only) and
    one small timing."""
    checks = [ProgramSpec("check", "meta_step", a, "float32", "native", SMALL) for a in ALGORITHMS]
    rewritten = ALGORITHMS[:1] if smoke else ALGORITHMS
    checks += [ProgramSpec("check", "meta_step", a, "float32", "space_to_batch", SMALL) for a in rewritten]
    checks += [ProgramSpec("check", kind, sizes=SMALL) for kind in ("forward", "adapt")]
    if smoke:
        return checks + [ProgramSpec("time", "meta_step", "fomaml", sizes=SMALL)]
    checks += [ProgramSpec("check", "meta_step", a, p, "native", SMALL) for p in PRECISIONS[1:] for a in ALGORITHMS]
    timed = [ProgramSpec("time", "meta_step", a, "float32") for a in ALGORITHMS]
    timed += [ProgramSpec("time", kind, dilations=d) for kind in ("forward", "adapt")
              for d in ("native", "space_to_batch")]
    timed += [ProgramSpec("time", "meta_step", a, p) for p in PRECISIONS[1:] for a in ALGORITHMS]
    timed += [ProgramSpec("time", "meta_step", a, "float32", "space_to_batch") for a in ALGORITHMS]
    return checks + timed


def paper_config(algorithm: str, flags_dir: str):
    """The RunConfig of `flags/<algorithm>.flags` (the paper's settings)."""
    from absl import flags

    from meta_drn_tf.runs import config as run_config

    values = flags.FlagValues()
    run_config.define_flags(values)
    values(["xla_programs", f"--flagfile={os.path.join(flags_dir, algorithm + '.flags')}"])
    return run_config.from_flag_values(values)


def _variable_init(variable: tf.Variable) -> dict:
    """How the runner regenerates a variable: its constant, or normal numbers of its spread."""
    value = variable.numpy()
    if value.size == 0 or np.all(value == value.flat[0]):
        return {"kind": "constant", "value": float(value.flat[0]) if value.size else 0.0}
    return {"kind": "normal", "std": float(np.std(value))}


def _data_inputs(kind: str, sizes: Sizes, shots: int) -> list[dict]:
    """The program's data arguments, in the order TensorFlow flattens them (a dict's keys sorted)."""
    s = sizes.image

    def images(name, *lead):
        return {"name": name, "shape": [*lead, s, s, 3], "dtype": "float32", "init": {"kind": "uniform"}}

    def masks(name, *lead):
        return {"name": name, "shape": [*lead, s, s, 1], "dtype": "float32", "init": {"kind": "mask", "p": 0.3}}

    if kind == "forward":
        return [images("query_images", sizes.queries)]
    if kind == "adapt":
        return [images("support_images", shots), masks("support_masks", shots), images("query_images", sizes.queries)]
    t, q = sizes.tasks, sizes.queries
    return [images("query_images", t, q), masks("query_masks", t, q), images("support_images", t, shots),
            masks("support_masks", t, shots),
            {"name": "tasks", "shape": [], "dtype": "int32", "init": {"kind": "constant", "value": t}},
            {"name": "epoch", "shape": [], "dtype": "float32", "init": {"kind": "constant", "value": 0.0}}]


def _adapter(spec: ProgramSpec, flags_dir: str, device: str) -> tuple[Adapter, Sizes, int]:
    """The learner (a MetaLearner for meta-steps) of `spec` on `device`, its sizes and shots."""
    config = paper_config(spec.algorithm, flags_dir)
    sizes = spec.sizes or Sizes(config.network.image_size, config.network.width, config.trainer.meta_batch_size,
                                config.data.queries)
    meta = dataclasses.replace(config.meta, precision=spec.precision, jit_compile=False, kernels="auto")
    keras.utils.set_random_seed(SEED)
    model = build_meta_drn(NetworkConfig(sizes.image, sizes.width), meta.dtype_policy)
    adapter = MetaLearner(model, meta, device=device) if spec.kind == "meta_step" else Adapter(model, meta, device)
    return adapter, sizes, config.data.shots


def _function(adapter: Adapter, kind: str):
    """The program's Python function of its data arguments (flat, in `_data_inputs`' order)."""
    if kind == "forward":
        return lambda query_images: adapter.predict(adapter.initial_weights(), query_images)
    if kind == "adapt":
        return lambda support_images, support_masks, query_images: adapter.predict(
            adapter.adapt(support_images, support_masks, inner_steps=1), query_images)
    phase = adapter.phase(0)

    def meta_step(query_images, query_masks, support_images, support_masks, tasks, epoch):
        batch = {"query_images": query_images, "query_masks": query_masks, "support_images": support_images,
                 "support_masks": support_masks}
        return adapter.task_sums(batch, tasks, epoch, phase.second_order, phase.multi_step_loss)

    return meta_step


def _variables(adapter: Adapter) -> list[tf.Variable]:
    """Every variable a program may read, in an order two learners built alike share."""
    return list(adapter.model.variables) + adapter.extra_variables + [adapter.loss_scale]


def _captured_specs(concrete, adapter: Adapter, first_index: int) -> list[dict]:
    """Input specs of the variables a traced function reads (XLA takes them after its arguments), each
    variable set to the values the runner will generate for it."""
    by_handle = {id(v.handle): v for v in _variables(adapter)}
    specs, variables = [], []
    for captured in concrete.captured_inputs:
        variable = by_handle.get(id(captured))
        if variable is None:
            raise ValueError(f"the traced program reads {captured!r}, which is none of the learner's variables")
        specs.append({"name": getattr(variable, "path", variable.name), "shape": list(variable.shape),
                      "dtype": tf.as_dtype(variable.dtype).name,
                      "init": _variable_init(variable)})
        variables.append(variable)
    for i, (spec, variable) in enumerate(zip(specs, variables)):
        variable.assign(xla_runner.generate(spec, SEED, first_index + i))
    return specs


def _reference(spec: ProgramSpec, flags_dir: str, adapter: Adapter, args: list) -> list[np.ndarray]:
    """TensorFlow's outputs for the program's inputs, op by op (eagerly: no XLA, no graph rewrites) on
    this machine, with the space-to-batch form its CPU kernels run: the same function, computed another
    way. Eagerly, not traced: one call does not repay a trace (docs/performance.md, "XLA programs for a
    GPU machine without TensorFlow")."""
    reference, _, _ = _adapter(spec, flags_dir, "any")
    for target, source in zip(_variables(reference), _variables(adapter), strict=True):
        target.assign(source)
    outputs = _function(reference, spec.kind)(*args)
    return [np.asarray(o) for o in tf.nest.flatten(outputs)]


def build_program(spec: ProgramSpec, flags_dir: str) -> tuple[dict, dict, list[np.ndarray] | None]:
    """The manifest entry of `spec`, its texts (StableHLO, HLO) and, for a check, TensorFlow's outputs."""
    adapter, sizes, shots = _adapter(spec, flags_dir, "gpu" if spec.dilations == "native" else "any")
    data = _data_inputs(spec.kind, sizes, shots)
    args = [tf.constant(xla_runner.generate(d, SEED, i)) for i, d in enumerate(data)]
    function = tf.function(_function(adapter, spec.kind), jit_compile=True, autograph=False)
    concrete = function.get_concrete_function(*args)
    captured = _captured_specs(concrete, adapter, len(data))
    ir = function.experimental_get_compiler_ir(*args)
    texts = {stage: ir(stage=stage) for stage in ("stablehlo", "hlo")}
    outputs = tf.nest.flatten(concrete.structured_outputs)
    entry = {"name": spec.name, "role": spec.role, "kind": spec.kind, "algorithm": spec.algorithm,
             "precision": spec.precision, "dilations": spec.dilations, "image_size": sizes.image,
             "width": sizes.width, "tasks": sizes.tasks if spec.kind == "meta_step" else None,
             "queries": sizes.queries, "seed": SEED, "rtol": RTOL[spec.precision], "inputs": data + captured,
             "outputs": [{"shape": list(o.shape), "dtype": o.dtype.name} for o in outputs],
             "loss_output": len(outputs) - 1 if spec.kind == "meta_step" else None}
    parameters = texts["stablehlo"].split("func.func @main(", 1)[1].split(") ->", 1)[0].count("%arg")
    texts["artifact"] = portable_artifact(texts["stablehlo"])
    if parameters != len(entry["inputs"]):
        raise ValueError(f"{spec.name}: the program takes {parameters} arguments, the manifest lists "
                         f"{len(entry['inputs'])}")
    references = _reference(spec, flags_dir, adapter, args) if spec.role == "check" else None
    return entry, texts, references


def portable_artifact(stablehlo: str) -> bytes:
    """TensorFlow's StableHLO text as a portable artifact: versioned bytecode that later XLA versions read.

    TensorFlow's text still holds `mhlo.copy` ops (copies of returned values), which StableHLO has
    no op for: a conversion to the same type is the same identity.
    """
    from jax.extend import mlir as jax_mlir

    stablehlo = re.sub(r"\bmhlo\.copy (%[\w#.]+) :", r"stablehlo.convert \1 :", stablehlo)
    return jax_mlir.serialize_portable_artifact(stablehlo, PORTABLE_TARGET)


# The oldest StableHLO version the artifacts target: every JAX since 2024 reads it.
PORTABLE_TARGET = "1.0.0"


def write_folder(folder: str, plan: list[ProgramSpec], flags_dir: str, progress=print) -> str:
    """Writes every program of `plan` (artifact, gzipped StableHLO and HLO texts), the manifest, the
    references and the runner (run.py) into `folder`; returns the manifest's path."""
    os.makedirs(folder, exist_ok=True)
    entries, references, built = [], {}, {}
    for i, spec in enumerate(plan):
        twin = built.get(dataclasses.replace(spec, role="check"))
        if spec.role == "time" and twin:  # the smoke folder's timing: a check's program, timed
            entry, texts, outputs = {**twin[0], "name": spec.name, "role": spec.role}, twin[1], None
        else:
            entry, texts, outputs = build_program(spec, flags_dir)
            built[spec] = entry, texts
        entry["artifact"] = spec.name + ".vhlo"
        with open(os.path.join(folder, entry["artifact"]), "wb") as f:
            f.write(texts["artifact"])
        for stage, suffix in (("stablehlo", ".stablehlo.mlir.gz"), ("hlo", ".hlo.txt.gz")):
            with gzip.open(os.path.join(folder, spec.name + suffix), "wt") as f:
                f.write(texts[stage])
        for j, output in enumerate(outputs or []):
            references[f"{spec.name}/{j}"] = output
        entries.append(entry)
        progress(f"[{i + 1}/{len(plan)}] {spec.name}")
        keras.backend.clear_session(free_memory=True)
    np.savez_compressed(os.path.join(folder, xla_runner.REFERENCES), **references)
    manifest = {"tensorflow": tf.__version__, "written": datetime.date.today().isoformat(), "seed": SEED,
                "description": "meta-steps (MetaLearner.task_sums: a meta-batch's summed meta-gradient) with the "
                               "paper's flagfile settings, and serving's forward pass and 1-step adaptation; "
                               "the GPU's kernel policy; TensorFlow's XLA bridge.",
                "programs": entries}
    path = os.path.join(folder, xla_runner.MANIFEST)
    with open(path, "w") as f:
        json.dump(manifest, f, indent=1)
    shutil.copyfile(xla_runner.__file__, os.path.join(folder, "run.py"))
    return path
