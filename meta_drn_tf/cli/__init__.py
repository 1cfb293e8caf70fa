"""What every command-line app shares: a quiet start-up, one-line errors, exit codes.

    from meta_drn_tf import cli

    def define_flags() -> None:
        flags.DEFINE_string("model_dir", None, "A training run's directory.", required=True)

    if __name__ == "__main__":
        cli.run(main, define_flags)

Errors a user causes (`meta_drn_tf.errors`, flag values) end the command with
one line on stderr, `error: <what is wrong, naming the file or flag, and what
to do>`, and these exit codes; anything else is a bug and keeps its traceback.

    0    done
    1    an unexpected error (a bug: please report the traceback)
    2    usage: a bad flag value, a missing or incompatible run, an unusable path
    3    training met a non-finite loss; the message names the last good checkpoint
    4    lost contact with another worker; restart every worker to resume
    5    data: dataset files or input images cannot be used (each one named)
    6    storage: a file could not be written (disk full, read-only folder); nothing half-written is left
    75   preempted (SIGTERM): training finished its meta-step and saved a checkpoint;
         run the same command again to resume (EX_TEMPFAIL: a retry loop restarts on it)
    130  interrupted (Ctrl-C): training saves a checkpoint first, as for SIGTERM (a second
         Ctrl-C stops at once); re-running the same command resumes it

TensorFlow's C++ start-up messages (CUDA probing on machines without a GPU,
CPU feature notes) go to the terminal only with `--verbosity=0` or higher
(`-v 0`); without it they are captured while TensorFlow starts and shown
only if the start fails. So apps import TensorFlow (and the library) only
after `run` has started it: inside `define_flags` and `main`, never at the top
of the command's module.
"""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import sys
import tempfile
from collections.abc import Callable

from absl import app, flags, logging

from meta_drn_tf import errors, hardware, paths

EXIT_USAGE = 2
EXIT_NONFINITE = 3
EXIT_WORKER_LOST = 4
EXIT_DATA = 5
EXIT_STORAGE = 6
EXIT_PREEMPTED = 75
EXIT_INTERRUPTED = 130


def fail(message: object, code: int) -> None:
    """Ends the command: `error: message` on stderr and exit code `code`."""
    sys.stdout.flush()
    sys.stderr.write(f"error: {message}\n")
    sys.stderr.flush()
    sys.exit(code)


def _parse_flags(argv: list[str]) -> list[str]:
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:  # a folder that cannot be written is a storage problem, as when writing fails
        fail(f"{e} (see --helpfull for every flag)", EXIT_STORAGE if paths.unwritable(str(e)) else EXIT_USAGE)


def check_paths(**kinds: str) -> None:
    """Checks path flags when they are parsed, before any work: `check_paths(out="new_folder")`.

    Kinds are those of `meta_drn_tf.paths.KINDS` (file, folder, path, new_folder, new_file); a
    multi-value flag has each value checked; an unset flag is left to `required=`.
    """
    for name, kind in kinds.items():
        def checker(value, kind=kind):
            for item in value if isinstance(value, list) else [value]:
                problem = paths.KINDS[kind](item) if item is not None else None
                if problem:
                    raise flags.ValidationError(problem)
            return True

        flags.register_validator(name, checker)


def verbose() -> bool:
    """Whether the user asked for INFO logging (`--verbosity=0` or higher)."""
    return flags.FLAGS["verbosity"].present and flags.FLAGS.verbosity >= 0


def verbosity_in(argv: list[str]) -> bool:
    """`verbose()` read off raw arguments, for use before the flags are parsed."""
    for i, arg in enumerate(argv):
        name, _, value = arg.partition("=")
        if name in ("--verbosity", "-verbosity", "--v", "-v"):
            value = value or (argv[i + 1] if i + 1 < len(argv) else "")
            try:
                return int(value) >= 0
            except ValueError:
                return False
    return False


@contextlib.contextmanager
def _native_stderr_captured():
    """Sends file descriptor 2 (where C++ logs go) to a temporary file; replays it on failure."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        except errors.Terminated:  # stopped, not failed: TensorFlow's chatter stays out
            raise
        except BaseException:
            os.dup2(saved, 2)
            capture.seek(0)
            sys.stderr.write(capture.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def start_tensorflow(loud: bool) -> None:
    """Imports TensorFlow and Keras; quietly unless `loud` (the user asked for INFO logging).

    First limits glibc's malloc to one arena (`hardware.limit_malloc_arenas`: less peak
    memory for the same speed), which must happen before TensorFlow starts its threads;
    then lets GPU memory grow as needed (`hardware.allow_memory_growth`).
    """
    if "tensorflow" in sys.modules:
        return
    hardware.limit_malloc_arenas()  # before TensorFlow's threads exist
    _import_tensorflow(loud)
    hardware.allow_memory_growth()  # before any GPU is used: commands can share a card


def _import_tensorflow(loud: bool) -> None:
    # A level the user set wins; otherwise the C++ runtime's notes stay out of the progress bars.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "0" if loud else "2")
    if loud:
        import keras  # noqa: F401
        import tensorflow  # noqa: F401
        return
    with _native_stderr_captured():
        import keras  # noqa: F401
        import tensorflow as tf

        tf.config.list_physical_devices()  # device discovery logs too (CUDA probing)


def run(main: Callable[[list[str]], object], define_flags: Callable[[], None] | None = None) -> None:
    """`absl.app.run(main)` with one-line errors, exit codes and a quiet TensorFlow start-up.

    Args:
        main: the app; called with the arguments left after the flags.
        define_flags: defines the app's flags; called once TensorFlow has started (the
            flags of `train` come from the library's `RunConfig`, which imports it).
    """
    # SIGTERM becomes an exception where the command is, so that what it writes is cleaned up on the way
    # out (training installs its own handlers, a checkpoint first, while it trains); from the start, so
    # that a command stopped while TensorFlow starts also ends with EXIT_PREEMPTED.
    signal.signal(signal.SIGTERM, _terminated)
    try:
        start_tensorflow(verbosity_in(sys.argv))
        if define_flags is not None:
            define_flags()
        app.run(lambda argv: _guarded(main, argv), flags_parser=_parse_flags)
    except errors.Terminated:
        _ending()
        fail(TERMINATED, EXIT_PREEMPTED)


TERMINATED = ("stopped by SIGTERM; nothing half-written was left. Run the same command again (segment "
              "--skip_existing keeps the masks already written).")
_SIGTERM_RECEIVED = []  # non-empty once SIGTERM came: whatever error the command then ends with is its doing


def _guarded(main: Callable[[list[str]], object], argv: list[str]) -> object:
    try:
        if not verbose():
            logging.set_verbosity(logging.WARNING)  # absl's INFO lines would bury the progress bars
        start_tensorflow(verbose())
        tf32 = flags.FLAGS.tf32 if "tf32" in flags.FLAGS else None
        if tf32 is not None:
            hardware.use_tf32(tf32)
        print(hardware.devices_line(tf32), flush=True)  # where the work runs, before any of it
        return main(argv)
    except (SystemExit, GeneratorExit):
        raise
    except BaseException as e:  # noqa: B036 (each kind is mapped to its exit code, the rest re-raised)
        _ending()
        _exit_for(e)
        raise
    finally:
        _ending()


def _exit_for(error: BaseException) -> None:
    """Ends the command with the exit code of `error` (`fail`); returns for a bug, which keeps its traceback."""
    problem = errors.storage_problem(error) if isinstance(error, Exception) else None
    codes = [(errors.NonFiniteLoss, EXIT_NONFINITE), (errors.WorkerLost, EXIT_WORKER_LOST),
             (errors.DataError, EXIT_DATA), ((errors.ConfigError, app.UsageError), EXIT_USAGE),
             ((FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError), EXIT_USAGE)]
    if isinstance(error, errors.Stopped):  # training's own handlers: what it saved, and how to resume
        fail(error, EXIT_PREEMPTED if error.preempted else EXIT_INTERRUPTED)
    if isinstance(error, errors.Terminated) or (_SIGTERM_RECEIVED and isinstance(error, Exception)):
        fail(TERMINATED, EXIT_PREEMPTED)  # also what TensorFlow raised when the signal broke into it
    if problem is not None:
        fail(problem, EXIT_STORAGE)
    if isinstance(error, errors.Unwritable):
        fail(error, EXIT_STORAGE)
    for kinds, code in codes:
        if isinstance(error, kinds):
            fail(error, code)
    if isinstance(error, KeyboardInterrupt):
        fail("interrupted. Run the same command again: training resumes from its last checkpoint, "
             "segment --skip_existing keeps the masks already written.", EXIT_INTERRUPTED)


def _ending() -> None:
    """The command is ending: a later SIGTERM is ignored (its work is done or being cleaned up), and the
    timer that re-raises a swallowed one stops (handlers of others, a test runner's, are left alone)."""
    if signal.getsignal(signal.SIGALRM) is _terminated:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, signal.SIG_IGN)
    if signal.getsignal(signal.SIGTERM) is _terminated:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _terminated(signum, frame) -> None:
    # Python drops (and prints) an exception raised inside a garbage-collector callback, where a signal
    # handler can run: there the exception waits for the timer, which repeats until the command's own
    # code receives it.
    _SIGTERM_RECEIVED.append(signum)
    signal.signal(signal.SIGALRM, _terminated)
    signal.setitimer(signal.ITIMER_REAL, 0.1, 0.1)
    callbacks = {getattr(callback, "__code__", None) for callback in gc.callbacks}
    while frame is not None:
        if frame.f_code in callbacks:
            return
        frame = frame.f_back
    raise errors.Terminated()
