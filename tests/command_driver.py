"""Run as a script: one command-line app with many command lines, in one process.

    python tests/command_driver.py meta_drn_tf.train < cases.json > results.json

cases.json is a list of argument lists; each runs as `python -m APP ARGS...`
would (`cli.run(main)` after the app's `define_flags`, flags reset to their defaults in between), with its
stdout and stderr captured. Prints one JSON list: {"code": exit code, "stderr":
what the app wrote there} per case; an exception that escaped the app (a
traceback a user would see) is {"code": "traceback", "stderr": the traceback}.
Starting TensorFlow once for all the cases keeps a long table of bad command
lines cheap to test.
"""

import contextlib
import importlib
import io
import json
import os
import runpy
import sys
import traceback

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import flags  # noqa: E402

from meta_drn_tf import cli  # noqa: E402


def _main_of(app: str):
    if app.endswith(".py"):  # a tool: its flags are defined when the file runs (not as __main__) and, for
        # those whose choices are the library's lists, by its define_flags
        tool = runpy.run_path(app, run_name="driven")
        if "define_flags" in tool:
            tool["define_flags"]()
        return tool["main"]
    module = importlib.import_module(app)
    # What `cli.run(main, define_flags)` does first, done once for all the cases.
    module.define_flags()
    return module.main


def run_case(app: str, main, args: list[str]) -> dict:
    flags.FLAGS.unparse_flags()
    sys.argv = [app, *args]
    out, err = io.StringIO(), io.StringIO()
    code: object = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            cli.run(main)
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except BaseException:  # noqa: BLE001  (what a user would see as a traceback)
            code, err = "traceback", io.StringIO(err.getvalue() + traceback.format_exc())
    return {"code": code, "stderr": err.getvalue()}


if __name__ == "__main__":
    app = sys.argv[1]
    main = _main_of(app)
    cases = json.load(sys.stdin)
    print(json.dumps([run_case(app, main, args) for args in cases]))
