"""Writes meta_drn_tf/serving/export_ops.json: the ops this project's SavedModels hold, read off real exports.

    python tools/export_ops.py            # after a change to the network, the adaptation or TensorFlow

One tiny export of each kernel form (stock, gpu, cpu) in each precision (float32, bfloat16, float16),
the algorithms taken in turn so that learned rates, MAML++'s per-step norms and ANIL's frozen body all
appear, scanned as data by `serving.trust.ops_by_scope`. `tests/test_trust.py` checks the shipped file
is exactly what these exports hold: a model is refused for an op no export holds, never for one of ours.
"""

from __future__ import annotations

import json
import os
import sys
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
OUTPUT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "meta_drn_tf", "serving",
                      "export_ops.json")


def export_kinds() -> list[tuple[str, str, str, dict]]:
    """(kernels, precision, algorithm, options) of every export the list is read from."""
    pairs = [(k, p) for k in KERNELS for p in PRECISIONS]
    return [(k, p, *ALGORITHMS[i % len(ALGORITHMS)]) for i, (k, p) in enumerate(pairs)]


def export_ops(folder: str) -> dict[str, list[str]]:
    """{scope: sorted op names} over one export of each kind, written under `folder`."""
    found: dict[str, set[str]] = {trust.GRAPH: set(), trust.SAVER: set()}
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
