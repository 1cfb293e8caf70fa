"""`subprocess.run` and `subprocess.Popen` for the project's commands, started warm.

    import warm

    out = warm.run([sys.executable, "-m", "meta_drn_tf.train", ...], capture_output=True, text=True)
    proc = warm.Popen([sys.executable, "tools/benchmark.py", ...], stdout=subprocess.PIPE)
    proc.send_signal(signal.SIGTERM); proc.wait()

Each command line still runs as its own process, with its own pid, exit status, signals, working
folder, environment and standard streams, as `python -m APP` would: a server process (this file
run as a script, one per pytest worker) has imported TensorFlow and the library the way `cli.run`
does, and forks a child per command line, which runs the command with `runpy`. Importing
TensorFlow costs about 6 CPU-seconds per process on the 2-core CI host, a third of a small
command's time, and the suite starts dozens of them.

What a fork cannot give falls back to a real `subprocess.Popen`: `-c` scripts, programs other than
this interpreter, and environments that differ from the server's in anything read at start-up
(`START_UP_ENV`). Tests of start-up itself (TensorFlow's chatter, a fresh install) use `subprocess`
directly.
"""

from __future__ import annotations

import atexit
import json
import os
import runpy
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading

# What Python, TensorFlow, Keras, XLA, CUDA and the threading libraries read when they start: these must
# be the server's. A forked child gets any other variable as asked (TF_CONFIG is read after start-up).
START_UP_ENV = ("PYTHON", "LD_", "TF_", "TF2_", "XLA_", "CUDA_", "NVIDIA_", "KERAS_", "JAX_", "OMP_", "KMP_",
                "MKL", "ONEDNN_", "DNNL_", "GRPC_", "ABSL_")
RUNTIME_ENV = {"TF_CONFIG"}
_server = None
_server_lock = threading.Lock()


def run(args, *, timeout=None, check=False, capture_output=False, input=None, **kwargs):
    """`subprocess.run`, warm where it can be (see the module's docstring)."""
    if capture_output:
        kwargs["stdout"] = kwargs["stderr"] = subprocess.PIPE
    if input is not None:
        kwargs["stdin"] = subprocess.PIPE
    with Popen(args, **kwargs) as process:
        try:
            stdout, stderr = process.communicate(input, timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise
    done = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
    if check:
        done.check_returncode()
    return done


def Popen(args, **kwargs) -> subprocess.Popen:  # noqa: N802 (subprocess's name)
    """`subprocess.Popen`, warm where it can be (see the module's docstring)."""
    if _warm_target(args) and _same_start(os.environ if kwargs.get("env") is None else kwargs["env"]):
        return _ForkedPopen(args, **kwargs)
    return subprocess.Popen(args, **kwargs)


def _warm_target(args) -> bool:
    if isinstance(args, (str, bytes)) or len(args) < 2 or args[0] != sys.executable:
        return False
    if args[1] == "-m":
        return len(args) > 2 and str(args[2]).startswith("meta_drn_tf.")
    return str(args[1]).endswith(".py")


def _same_start(env) -> bool:
    """Whether `env` agrees with the environment the server started TensorFlow in where start-up reads it."""
    started = _server_env()
    keys = {k for k in set(env) | set(started) if k.startswith(START_UP_ENV)} - RUNTIME_ENV
    return all(env.get(k) == started.get(k) for k in keys)


class _Server:
    """The warm parent: `python tests/warm.py SOCKET` started with this worker's environment."""

    def __init__(self, env: dict):
        self.folder = tempfile.mkdtemp(prefix="warm-")
        self.env = env
        self.address = os.path.join(self.folder, "socket")
        # Its stdin is its lifeline: it exits when this process does.
        self.process = subprocess.Popen([sys.executable, os.path.abspath(__file__), self.address], env=env,
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        if self.process.stdout.readline().strip() != "ready":
            raise RuntimeError(f"the warm command server did not start (exit {self.process.wait()})")
        atexit.register(self.close)

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=30)


def _running_server() -> _Server:
    global _server
    with _server_lock:
        if _server is None or _server.process.poll() is not None:
            _server = _Server(_server_env())  # a restarted server keeps the environment commands were matched to
        return _server


def _server_env() -> dict:
    # The first server starts with this process's environment; any later one with the first's.
    return dict(os.environ) if _server is None else _server.env


class _ForkedPopen(subprocess.Popen):
    """A `subprocess.Popen` whose child the warm server forks; its exit status comes over a socket."""

    def _execute_child(self, args, executable, preexec_fn, close_fds, pass_fds, cwd, env, startupinfo,
                       creationflags, shell, p2cread, p2cwrite, c2pread, c2pwrite, errread, errwrite,
                       *rest):
        self._link = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._link.connect(_running_server().address)
        request = json.dumps({"argv": [str(a) for a in args[1:]], "cwd": os.fspath(cwd or os.getcwd()),
                              "env": dict(os.environ if env is None else env)}).encode()
        # -1: the stream is inherited from this process, as subprocess does.
        fds = [fd if fd != -1 else default for fd, default in ((p2cread, 0), (c2pwrite, 1), (errwrite, 2))]
        socket.send_fds(self._link, [len(request).to_bytes(8, "big") + request], fds)
        self._reply = self._link.makefile("r")
        self.pid = int(self._reply.readline())
        self._child_created = True
        self._close_pipe_fds(p2cread, p2cwrite, c2pread, c2pwrite, errread, errwrite)

    def _try_wait(self, wait_flags):
        if wait_flags & os.WNOHANG and not select.select([self._link], [], [], 0)[0]:
            return 0, 0
        line = self._reply.readline()
        self._link.close()
        return self.pid, int(line)

    def _internal_poll(self, _deadstate=None, **_):
        if self.returncode is None and self._waitpid_lock.acquire(False):
            try:
                if self.returncode is None:
                    pid, status = self._try_wait(os.WNOHANG)
                    if pid == self.pid:
                        self._handle_exitstatus(status)
            finally:
                self._waitpid_lock.release()
        return self.returncode


# --- the server side: run as a script ----------------------------------------------------------


def _preload() -> None:
    from meta_drn_tf import cli

    cli.start_tensorflow(loud=False)  # what every command does first, quietly
    import importlib.util
    import pkgutil

    import meta_drn_tf

    # The library has no import-time side effects (flags are defined by the commands' define_flags); the
    # commands themselves are left for runpy to run as __main__.
    for module in pkgutil.walk_packages(meta_drn_tf.__path__, "meta_drn_tf."):
        spec = importlib.util.find_spec(module.name)
        with open(spec.origin, encoding="utf-8") as source:
            if 'if __name__ == "__main__"' not in source.read():
                importlib.import_module(module.name)


def _receive(connection: socket.socket) -> tuple[dict, list[int]]:
    head, fds, _, _ = socket.recv_fds(connection, 8, 3)
    size, body = int.from_bytes(head, "big"), b""
    while len(body) < size:
        body += connection.recv(size - len(body))
    return json.loads(body), fds


def _serve(address: str):
    """Accepts command lines until stdin closes; returns (in a forked child only) the command to run."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(address)
    listener.listen(16)
    print("ready", flush=True)
    children: dict[int, socket.socket] = {}
    while True:
        readable = select.select([listener, sys.stdin], [], [], 0.02)[0]
        if sys.stdin in readable and not sys.stdin.readline():
            return None
        if listener in readable:
            connection, _ = listener.accept()
            request, fds = _receive(connection)
            pid = os.fork()
            if pid == 0:
                for link in (listener, connection, *children.values()):
                    link.close()
                return request, fds
            for fd in fds:
                os.close(fd)
            connection.sendall(f"{pid}\n".encode())
            children[pid] = connection
        _reap(children)


def _reap(children: dict) -> None:
    while children:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        link = children.pop(pid, None)
        if link is not None:
            try:
                link.sendall(f"{status}\n".encode())
            except OSError:  # the test that started it has gone
                pass
            link.close()


def _become(request: dict, fds: list[int]) -> None:
    """Turns the forked child into `python ARGV...` started in the request's folder and environment."""
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    for signum in (signal.SIGTERM, signal.SIGCHLD, signal.SIGPIPE, signal.SIGXFSZ):
        signal.signal(signum, signal.SIG_DFL if signum != signal.SIGPIPE else signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    argv = request["argv"]
    if argv[0] == "-m":  # sys.path[0] as `python -m` sets it: the working folder
        sys.argv, sys.path[0] = argv[1:], os.getcwd()
        runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
    else:
        sys.argv, sys.path[0] = argv, os.path.dirname(os.path.abspath(argv[0]))
        runpy.run_path(argv[0], run_name="__main__")


if __name__ == "__main__":
    _preload()
    job = _serve(sys.argv[1])
    if job is not None:  # a forked child: run the command; its exit is this process's exit
        _become(*job)
