"""The package's shape: commands at the top, the library in subpackages, imports only downwards,
no cycles, nothing done on import."""

import ast
import json
import os
import subprocess
import sys

import pytest

import meta_drn_tf

PACKAGE = os.path.dirname(meta_drn_tf.__file__)
# From the bottom up; a unit is a top-level module or a subpackage. A unit imports only units of
# lower levels and itself: units of one level know nothing of each other.
LEVELS = (
    ("errors", "hardware", "progress"),  # the leaves
    ("paths", "settings"),
    ("results",),  # scores and pictures of masks
    ("network",),
    ("meta", "data"),
    ("runs",),
    ("serving",),
    ("training",),
    ("cli",),  # start-up, exit codes and the flags several commands share
    ("train", "evaluate", "export", "segment", "summary", "app", "__init__"),
    ("bench",),  # measurement and diagnosis: the product imports none of it
)
LEVEL = {unit: i for i, units in enumerate(LEVELS) for unit in units}
MAX_FILE_LINES = 400
MAX_FUNCTION_LINES = 60


def _modules():
    """{dotted module name: path} for every module of the package."""
    found = {}
    for root, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(root, name)
                relative = os.path.relpath(path, os.path.dirname(PACKAGE))[:-3].replace(os.sep, ".")
                found[relative.removesuffix(".__init__") if name == "__init__.py" else relative] = path
    return found


def _imports(path: str) -> set[str]:
    """The package's modules `path` imports anywhere in it (in functions and type-only blocks too)."""
    names = set()
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("meta_drn_tf"):
            names |= {f"{node.module}.{alias.name}" for alias in node.names} | {node.module}
        elif isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names if alias.name.startswith("meta_drn_tf")}
    return names


def _unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _graph():
    modules = _modules()
    # `from meta_drn_tf import errors` names the package, whose __init__ imports nothing of it.
    return {name: {m for m in _imports(path) if m in modules and m not in (name, "meta_drn_tf")}
            for name, path in modules.items()}


def test_every_unit_has_a_level_and_imports_only_lower_ones():
    wrong = []
    for module, imported in _graph().items():
        unit = _unit(module)
        assert unit in LEVEL, f"{module}: place {unit} in LEVELS"
        for other in imported:
            if _unit(other) != unit and LEVEL[_unit(other)] >= LEVEL[unit]:
                wrong.append(f"{module} imports {other}")
    assert not wrong, wrong


def test_no_import_cycles_between_modules():
    graph, state, cycles = _graph(), {}, []

    def visit(module, trail):
        state[module] = "open"
        for other in graph[module]:
            if other.startswith(module + "."):  # a package importing its own modules is not a cycle
                continue
            if state.get(other) == "open":
                cycles.append(trail[trail.index(other):] + [other] if other in trail else [module, other])
            elif other not in state:
                visit(other, trail + [other])
        state[module] = "done"

    for module in graph:
        if module not in state:
            visit(module, [module])
    assert not cycles, cycles


def test_files_stay_short():
    long = {name: n for name, path in _modules().items() if (n := len(open(path).readlines())) > MAX_FILE_LINES}
    assert not long, long


@pytest.mark.timeout(120)
def test_importing_the_library_changes_nothing():
    """Every module imported in a fresh interpreter: no environment variable set, no absl flag defined."""
    script = (
        "import json, os, sys\n"
        "import keras, tensorflow\n"
        "from absl import flags\n"
        "before_env, before_flags = dict(os.environ), set(flags.FLAGS)\n"
        f"for name in {sorted(_modules())!r}:\n"
        "    __import__(name)\n"
        "changed = sorted(k for k in set(os.environ) | set(before_env) if os.environ.get(k) != before_env.get(k))\n"
        "print(json.dumps({'env': changed, 'flags': sorted(set(flags.FLAGS) - before_flags)}))\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=110)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.splitlines()[-1]) == {"env": [], "flags": []}


def test_functions_stay_short():
    long = []
    for name, path in _modules().items():
        for node in ast.walk(ast.parse(open(path).read())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and \
                    node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES:
                long.append(f"{name}.{node.name}: {node.end_lineno - node.lineno + 1} lines")
    assert not long, long


def test_every_import_of_the_package_resolves_including_those_inside_functions():
    """A lazy import (inside a function, run only on some path) that names a moved module fails here;
    the tools' imports (in their `main`s) too."""
    statements = set()
    tools = os.path.join(os.path.dirname(PACKAGE), "tools")
    tool_files = [os.path.join(tools, n) for n in sorted(os.listdir(tools)) if n.endswith(".py")]
    for path in list(_modules().values()) + tool_files:
        for node in ast.walk(ast.parse(open(path).read())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("meta_drn_tf"):
                statements.add(f"from {node.module} import {', '.join(alias.name for alias in node.names)}")
            elif isinstance(node, ast.Import):
                statements |= {f"import {a.name}" for a in node.names if a.name.startswith("meta_drn_tf")}
    broken = []
    for statement in sorted(statements):
        try:
            exec(statement, {})
        except ImportError as e:
            broken.append(f"{statement}: {e}")
    assert not broken, broken
