"""tests/warm.py: a command forked warm behaves as the same command started by `subprocess`."""

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import warm

pytestmark = pytest.mark.slow  # the first call starts the worker's server (TensorFlow's import)

SCRIPT = textwrap.dedent("""
    import json, os, sys, time
    if sys.argv[1] == "sleep":
        print("sleeping", flush=True)
        time.sleep(60)
    print(json.dumps({"pid": os.getpid(), "ppid": os.getppid(), "cwd": os.getcwd(), "argv": sys.argv,
                      "stdin": sys.stdin.read(), "value": os.environ.get("TF_CONFIG"),
                      "tensorflow": "tensorflow" in sys.modules}))
    sys.stderr.write("to stderr\\n")
    sys.exit(int(sys.argv[2]))
""")


@pytest.fixture
def script(tmp_path):
    path = tmp_path / "script.py"
    path.write_text(SCRIPT)
    return str(path)


def _report(script, env, folder):
    done = warm.run([sys.executable, script, "report", "3"], input="from stdin", capture_output=True, text=True,
                    cwd=folder, env=env, timeout=120)
    return done, json.loads(done.stdout)


def test_a_forked_command_has_its_own_process_folder_streams_and_exit_status(script, tmp_path):
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    done, report = _report(script, {**os.environ, "TF_CONFIG": "{}"}, folder)
    assert done.returncode == 3 and done.stderr == "to stderr\n"
    assert report["tensorflow"]  # forked from the server: TensorFlow already imported
    assert report["pid"] != os.getpid() and report["ppid"] != os.getpid()  # the server's child
    assert report["cwd"] == str(folder) and report["argv"] == [script, "report", "3"]
    assert report["stdin"] == "from stdin" and report["value"] == "{}"  # TF_CONFIG may differ from the server's


def test_another_start_up_environment_runs_a_real_subprocess(script, tmp_path):
    _, report = _report(script, {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "0"}, tmp_path)
    assert not report["tensorflow"] and report["ppid"] == os.getpid()


def test_a_signal_ends_a_forked_command_as_it_would_a_subprocess(script):
    process = warm.Popen([sys.executable, script, "sleep", "0"], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline() == "sleeping\n"
    assert process.poll() is None
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == -signal.SIGTERM
    with pytest.raises(subprocess.TimeoutExpired):
        warm.run([sys.executable, script, "sleep", "0"], timeout=1)
