"""Running a generator in a second process, one item ahead of the caller.

Embedded Chroma holds Python's interpreter for the whole of ``collection.add`` (``benchmarks/chroma_gil.py``: a
thread makes no progress during it), so a thread that prepares the load's next batch waits for every ``add`` to
return and its work adds to the load's time. A second process is not held: ``Ahead`` runs a generator function
there and hands its items over in order, the next one prepared while the caller works on this one.

The child is a plain ``python -c`` with this process's ``sys.path`` (so it imports the same ``runbook``), not a
``multiprocessing`` child: nothing of the caller's ``__main__`` is imported again. Its arguments travel in a
temporary file (a pipe would hold the caller until the child had started and read them); its items come back
pickled through a pipe of its own, so nothing it prints can corrupt them. It only reads: should it end early
(killed, out of memory, an error), the caller gets an ``AheadError`` naming what it ended with, and whatever the
caller did with the items before stands.
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator

from .errors import RunbookError

_CHILD = (
    "import json, sys; sys.path[:0] = json.loads(sys.argv[1]); "
    "from runbook.ahead import _child_main; _child_main(int(sys.argv[2]), sys.argv[3])"
)


class AheadError(RunbookError, RuntimeError):
    pass


def _child_main(fd: int, args_path: str) -> None:
    """In the child: run the generator, write ("item", x) for each item, then ("end", peak RSS in MB), or
    ("error", exception, traceback text)."""
    import traceback

    os.set_inheritable(fd, False)  # nothing this child starts may hold the pipe open after it ends
    out = os.fdopen(fd, "wb", buffering=1 << 20)
    with open(args_path, "rb") as f:
        func, args = pickle.load(f)
    os.unlink(args_path)
    try:
        for item in func(*args):
            # pickled whole before a byte is written: an item that fails to pickle half-way leaves nothing
            # on the pipe, so the error that follows reaches the caller readable
            data = pickle.dumps(("item", item), protocol=pickle.HIGHEST_PROTOCOL)
            try:
                out.write(data)
                out.flush()
            except BrokenPipeError:  # the caller stopped reading: it has gone on without us
                os._exit(0)
        msg: tuple = ("end", _own_peak_rss_mb())
    except BaseException as e:  # noqa: BLE001 - handed over to the caller
        tb = traceback.format_exc()
        try:
            pickle.loads(
                pickle.dumps(e)
            )  # some pickle but cannot be rebuilt (an __init__ of several arguments)
            msg = ("error", e, tb)
        except Exception:  # noqa: BLE001 - an exception that does not travel goes as its text
            msg = ("error", RuntimeError(f"{type(e).__name__}: {e}"), tb)
    try:
        pickle.dump(msg, out, protocol=pickle.HIGHEST_PROTOCOL)
        out.close()
    except BrokenPipeError:
        pass
    # everything is handed over: end now rather than tear the interpreter down (pandas, Arrow), which the
    # caller would wait for when it closes
    os._exit(0)


def _own_peak_rss_mb() -> float | None:
    """This process's own peak memory (``VmHWM``): ``ru_maxrss`` would carry the parent's peak across exec."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


class Ahead:
    """``for item in Ahead(func, args, what)``: the items of ``func(*args)``, computed in a second process.
    ``func`` must be a module-level generator function and ``args`` picklable. Use it as a context manager
    (or call ``close``) so an early stop ends the child. ``peak_rss_mb``: the child's, once it has ended."""

    def __init__(self, func: Callable[..., Iterator], args: tuple, what: str):
        self.what = what
        self.peak_rss_mb: float | None = None
        self._done = False
        fd, self._args_path = tempfile.mkstemp(prefix="runbook-ahead-", suffix=".pickle")
        try:
            with os.fdopen(fd, "wb") as f:
                pickle.dump((func, args), f, protocol=pickle.HIGHEST_PROTOCOL)
        except BaseException as e:
            os.unlink(self._args_path)
            if isinstance(e, OSError):  # a full temporary folder is not the target's disk: say which it is
                raise AheadError(
                    f"could not write the arguments of the process that {what} to {tempfile.gettempdir()} "
                    f"({e.strerror or e}): free space there, or point TMPDIR at a folder with room"
                ) from e
            raise
        self._log = tempfile.TemporaryFile()
        r, w = os.pipe()
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-c", _CHILD, json.dumps(sys.path), str(w), self._args_path],
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=self._log,
                pass_fds=(w,),
            )
        except BaseException:
            os.close(r)
            self._cleanup()
            raise
        finally:
            os.close(w)
        try:
            self._reader = os.fdopen(r, "rb", buffering=1 << 20)
        except BaseException:  # an interrupt here would leave the child waiting to write, forever
            os.close(r)
            self._proc.kill()
            self._proc.wait()
            self._cleanup()
            raise

    def __iter__(self):
        return self

    def __next__(self):
        if self._done:
            raise StopIteration
        try:
            kind, *rest = pickle.load(self._reader)
        except MemoryError:  # this process's own trouble, not the child's
            self.close()
            raise
        except Exception as e:  # noqa: BLE001 - the child ended mid-item, or what it sent cannot be read here
            self._done = True
            raise AheadError(self._ended_early(e)) from None
        if kind == "item":
            return rest[0]
        self._done = True
        if kind == "end":
            self.peak_rss_mb = rest[0]
            self.close()
            raise StopIteration
        exc, tb = rest
        self.close()
        exc.add_note(f"raised in the process that {self.what}:\n{tb}")
        raise exc

    def _ended_early(self, e: BaseException) -> str:
        try:
            code = self._proc.wait(timeout=5)  # a child that died has closed its pipe: it has ended by now
        except subprocess.TimeoutExpired:  # alive, but what it sent cannot be read here
            self._proc.kill()
            self._proc.wait()
            code = None
        self._log.seek(max(0, self._log.seek(0, os.SEEK_END) - 2000))
        tail = self._log.read().decode("utf-8", "replace").strip()
        if code is None:
            how = "was still running, and was ended"
        elif code == -signal.SIGKILL:
            how = "was killed (SIGKILL: the system's out-of-memory killer sends it, or an operator)"
        elif code < 0:
            how = f"was killed by signal {-code}"
        else:
            how = f"ended with exit code {code}"
        return (
            f"the process that {self.what} could not hand over its next item: it {how} ({type(e).__name__}: {e})"
            + (f"; it wrote:\n{tail}" if tail else "")
        )

    def close(self) -> None:
        """End the child (if it still runs) and remove what it left behind; safe to call twice."""
        self._done = True
        try:
            self._reader.close()
        finally:
            if self._proc.poll() is None:
                self._proc.kill()
            self._proc.wait()
            self._cleanup()

    def _cleanup(self) -> None:
        self._log.close()
        try:
            os.unlink(self._args_path)
        except FileNotFoundError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
