"""Writes meta_drn_tf/serving/export_ops.json: the ops this project's SavedModels hold, read off real exports.

    python tools/export_ops.py            # after a change to the network, the adaptation or TensorFlow

One tiny export of each kernel form (stock, gpu, cpu) in each precision (float32, bfloat16, float16),
the algorithms taken in turn so that learned rates, MAML++'s per-step norms and ANIL's frozen body all
appear, and the exports of earlier releases that users still hold (RELEASED), scanned as data by
`serving.trust.ops_by_scope`. `tests/test_trust.py` checks the shipped file
is exactly what these exports hold: a model is refused for an op no export holds, never for one of ours.
"""

from __future__ import annotations

import json
import os
import sys
import tarfile
import tempfile

import keras

from meta_drn_tf.meta import MetaConfig, MetaLearner
from meta_drn_tf.network.config import NetworkConfig
from meta_drn_tf.network.model import build_meta_drn
from meta_drn_tf.serving import saved_model, trust

NETWORK = NetworkConfig(32, 0.0625)
KERNELS = tuple(saved_model.EXPORT_KERNELS)
PRECISIONS = ("float32", "bfloat16", "float16")
# (algorithm, MetaConfig options): taken in turn over the exports, so each appears with several forms.
ALGORITHMS = (("maml", {}), ("metasgd", {}), ("maml", {"lslr": True, "per_step_norm": True}),
              ("maml", {"adapt_layers": "upsample"}))
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUTPUT = os.path.join(ROOT, "meta_drn_tf", "serving", "export_ops.json")
# Exports of earlier releases, which users still hold: their ops are ours too.
RELEASED = (os.path.join(ROOT, "tests", "data", "legacy_0.1.0", "saved_model.tgz"),)


def export_kinds() -> list[tuple[str, str, str, dict]]:
    """(kernels, precision, algorithm, options) of every export the list is read from."""
    pairs = [(k, p) for k in KERNELS for p in PRECISIONS]
    return [(k, p, *ALGORITHMS[i % len(ALGORITHMS)]) for i, (k, p) in enumerate(pairs)]


def released_exports(folder: str) -> list[str]:
    """The SavedModels of earlier releases (RELEASED), unpacked under `folder`."""
    paths = []
    for i, archive in enumerate(RELEASED):
        with tarfile.open(archive) as tar:
            tar.extractall(os.path.join(folder, f"released{i}"), filter="data")
        paths += [os.path.dirname(p) for p in _saved_model_files(os.path.join(folder, f"released{i}"))]
    return paths


def _saved_model_files(folder: str) -> list[str]:
    return sorted(os.path.join(root, "saved_model.pb") for root, _, files in os.walk(folder)
                  if "saved_model.pb" in files)


def export_ops(folder: str) -> dict[str, list[str]]:
    """{scope: sorted op names} over one export of each kind, written under `folder`, and the exports of
    earlier releases."""
    found: dict[str, set[str]] = {trust.GRAPH: set(), trust.SAVER: set()}
    for path in released_exports(folder):
        for scope, ops in trust.ops_by_scope(path).items():
            found[scope] |= set(ops)
    for i, (kernels, precision, algorithm, options) in enumerate(export_kinds()):
        keras.utils.set_random_seed(i)
        config = MetaConfig(algorithm, precision=precision, **options)
        learner = MetaLearner(build_meta_drn(NETWORK, config.dtype_policy), config)
        path = saved_model.export(learner, os.path.join(folder, str(i)), NETWORK, kernels=kernels)
        for scope, ops in trust.ops_by_scope(path).items():
            found[scope] |= set(ops)
        print(f"{kernels} {precision} {algorithm} {options or ''}: {len(found[trust.GRAPH])} ops so far", flush=True)
    return {trust.GRAPH: sorted(found[trust.GRAPH]), trust.SAVER: sorted(found[trust.SAVER] - found[trust.GRAPH])}


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        ops = export_ops(folder)
    with open(OUTPUT, "w") as f:
        json.dump(ops, f, indent=1)
        f.write("\n")
    print(f"{OUTPUT}: {len(ops[trust.GRAPH])} graph ops, {len(ops[trust.SAVER])} saver-only ops", file=sys.stderr)


if __name__ == "__main__":
    main()
