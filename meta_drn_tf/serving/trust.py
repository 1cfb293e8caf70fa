"""Which models may run: a SavedModel or TFLite file is a program, checked before anything of it runs.

    check_saved_model("saved_models/meta_drn/3")     # UntrustedModel naming the first foreign op
    check_tflite("cat.tflite")                       # UntrustedModel for any custom (or TF "Flex") op

A SavedModel's graph and function library are read as data (its protocol buffer is parsed, nothing is
loaded into TensorFlow) and every op is checked against `export_ops.json`: the ops this project's own
exports hold, for every kernel form, precision and algorithm (`tools/export_ops.py` writes the file
from real exports; `tests/test_trust.py` checks it is exactly that). Ops that read and write files,
reach the network, start processes or call Python are in no export, so a model holding one is refused
before TensorFlow loads it - a load runs the model's resource initialisers, a call its functions.

The checkpoint-writing ops of the saver functions that `tf.saved_model.save` adds (`SaveV2`,
`RestoreV2`, ...) are allowed only there: only TF Serving's loader runs them, on the model's own
variables folder, and a function any other part of the model calls is held to the strict set.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from importlib import resources

from meta_drn_tf.errors import ConfigError

# The two scopes of `export_ops.json`: the graphs a load or a call runs, and the saver's functions.
GRAPH, SAVER = "graph", "saver"
TFLITE_CUSTOM = 32  # BuiltinOperator.CUSTOM in TFLite's schema: a custom op (TF's own "Flex" ops among them)


class UntrustedModel(ConfigError):
    """A model holds an op this project's exports never contain; the message names it and the way out."""


def allowed_ops() -> dict[str, frozenset[str]]:
    """{scope: op names} the project's exports hold (`export_ops.json`, shipped with the package)."""
    text = resources.files("meta_drn_tf.serving").joinpath("export_ops.json").read_text()
    return {scope: frozenset(names) for scope, names in json.loads(text).items()}


def _read_saved_model(path: str):
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel()
    try:
        with open(os.path.join(path, "saved_model.pb"), "rb") as f:
            proto.ParseFromString(f.read())
    except Exception as e:  # protobuf's DecodeError, a missing file: the model cannot be what it claims
        raise ConfigError(f"--model {path}: the SavedModel is damaged (saved_model.pb cannot be read: "
                          f"{type(e).__name__}); export it again from its training run (python -m "
                          "meta_drn_tf.export) or give another version") from None
    return proto


def _called(nodes: Iterable, functions: dict) -> set[str]:
    """Names of the library functions `nodes` call: through function-valued attributes (calls, branches,
    loop bodies) or as their op."""
    found = set()
    for node in nodes:
        if node.op in functions:
            found.add(node.op)
        for value in node.attr.values():
            found.update(name for name in [value.func.name, *(f.name for f in value.list.func)] if name)
    return found


def _closure(roots: set[str], functions: dict) -> set[str]:
    reached, todo = set(), list(roots)
    while todo:
        name = todo.pop()
        if name in reached or name not in functions:
            continue
        reached.add(name)
        todo.extend(_called(functions[name].node_def, functions) - reached)
    return reached


def ops_by_scope(path: str) -> dict[str, dict[str, str]]:
    """{scope: {op: where it first occurs}} of the SavedModel at `path` (a version folder), read as data.

    Scope SAVER: the functions only the saver's nodes reach; GRAPH: the top-level graph and every other
    function (a function both reach is held to GRAPH).
    """
    found: dict[str, dict[str, str]] = {GRAPH: {}, SAVER: {}}
    for meta_graph in _read_saved_model(path).meta_graphs:
        graph, saver = meta_graph.graph_def, meta_graph.saver_def
        functions = {f.signature.name: f for f in graph.library.function}
        saver_names = {name.split(":")[0] for name in (saver.save_tensor_name, saver.restore_op_name) if name}
        saver_nodes = [n for n in graph.node if n.name in saver_names]
        other_nodes = [n for n in graph.node if n.name not in saver_names]
        saver_only = _closure(_called(saver_nodes, functions), functions)
        strict = _closure(_called(other_nodes, functions) | (set(functions) - saver_only), functions)
        for scope, nodes in ((GRAPH, other_nodes), (SAVER, saver_nodes)):
            for node in nodes:
                found[scope].setdefault(node.op, "the top-level graph")
        for name, function in functions.items():
            for node in function.node_def:
                if node.op not in functions:
                    found[GRAPH if name in strict else SAVER].setdefault(node.op, f"function {name}")
    return found


def foreign_ops(path: str) -> list[tuple[str, str]]:
    """(op, where) for each op of the SavedModel at `path` that the project's exports do not hold."""
    allowed = allowed_ops()
    found = ops_by_scope(path)
    foreign = [(op, where) for op, where in found[GRAPH].items() if op not in allowed[GRAPH]]
    saver_allowed = allowed[GRAPH] | allowed[SAVER]
    foreign += [(op, where) for op, where in found[SAVER].items() if op not in saver_allowed]
    return sorted(foreign)


def check_saved_model(path: str, flag: str = "--trust_model") -> None:
    """Raises UntrustedModel when the SavedModel at `path` holds an op no export of this project holds;
    `flag` is what the message tells the user to pass to run it anyway."""
    foreign = foreign_ops(path)
    if foreign:
        names = ", ".join(op for op, _ in foreign[:6]) + (f" and {len(foreign) - 6} more" if len(foreign) > 6 else "")
        raise UntrustedModel(
            f"--model {path}: the SavedModel holds op(s) that no model exported by meta_drn_tf holds: {names} "
            f"({foreign[0][0]} in {foreign[0][1]}). A SavedModel is a program and this one could read or write "
            f"files, reach the network or run code: not loaded. Use models you exported or got from someone you "
            f"trust, or pass {flag} to run it anyway")


def tflite_custom_ops(flatbuffer: bytes) -> list[str]:
    """The custom ops (TF's "Flex" ops among them) a TFLite flatbuffer asks for, read from its operator
    codes without building an interpreter."""
    import flatbuffers

    def table(buffer: bytes, position: int) -> flatbuffers.table.Table:
        return flatbuffers.table.Table(buffer, position)

    data = bytearray(flatbuffer)
    try:
        model = table(data, flatbuffers.encode.Get(flatbuffers.packer.uoffset, data, 0))
        codes_field = model.Offset(6)  # Model.operator_codes: the second field
        names = []
        if codes_field:
            vector, count = model.Vector(codes_field), model.VectorLen(codes_field)
            for i in range(count):
                code = table(data, model.Indirect(vector + 4 * i))
                deprecated = code.Get(flatbuffers.number_types.Int8Flags, code.Pos + code.Offset(4)) if (
                    code.Offset(4)) else 0
                builtin = code.Get(flatbuffers.number_types.Int32Flags, code.Pos + code.Offset(10)) if (
                    code.Offset(10)) else 0
                if TFLITE_CUSTOM in (deprecated, builtin):
                    names.append(code.String(code.Pos + code.Offset(6)).decode(errors="replace") if code.Offset(6)
                                 else "(unnamed)")
        return names
    except (IndexError, ValueError, TypeError, UnicodeError) as e:
        raise ConfigError(f"not a readable TensorFlow Lite file ({type(e).__name__})") from None


def check_tflite(flatbuffer: bytes, name: str, flag: str = "trust=True") -> None:
    """Raises UntrustedModel when the TFLite flatbuffer `name` asks for custom ops (no file this project
    writes does: its graphs are TFLite's builtin ops)."""
    custom = tflite_custom_ops(flatbuffer)
    if custom:
        raise UntrustedModel(f"{name}: the TensorFlow Lite file asks for the custom op(s) {', '.join(custom[:4])}, "
                             f"which no file written by meta_drn_tf holds (custom ops run code outside TFLite's "
                             f"builtins); not loaded. Pass {flag} to run it anyway")
