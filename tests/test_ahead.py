"""``runbook.ahead``: a generator run in a second process hands its items over in order, its errors arrive as
raised, and a child that dies or is left behind is named, ended and cleaned up.

The generators live in this module (the child imports it through the caller's ``sys.path``)."""

from __future__ import annotations

import glob
import os
import signal
import sys
import tempfile
import time

import numpy as np
import psutil
import pytest

from runbook import ahead


class Unpicklable(Exception):
    def __reduce__(self):
        raise TypeError("not this one")


def numbered(n: int, size: int = 0):
    for i in range(n):
        yield i, os.getpid(), np.full(size, i, dtype=np.float32)


def chatty(n: int):
    """Prints to stdout and stderr and writes to fd 1 between items: none of it may reach the items."""
    for i in range(n):
        print(f"item {i} on stdout", flush=True)
        print(f"item {i} on stderr", file=sys.stderr, flush=True)
        os.write(1, b"\x80\x04raw bytes on fd 1\n")
        yield i


def failing(n: int, exc: BaseException):
    yield from range(n)
    raise exc


class NeedsTwo(Exception):
    def __init__(self, path, free):  # pickles, but cannot be rebuilt from its args
        super().__init__(f"{path}: {free} bytes free")


def fails_unrebuildably():
    yield from ()
    raise NeedsTwo("/data", 5)


def fails_unpicklably():
    yield from ()
    raise Unpicklable("odd")


def unpicklable_item():
    """An item that fails to pickle after 4 MB of it would have been written (more than the pipe's buffer)."""
    import threading

    yield 1
    yield (np.zeros(1 << 20, dtype=np.float32), threading.Lock())


def endless():
    i = 0
    while True:
        yield i, np.zeros(50_000, dtype=np.float32)  # 200 kB an item: more than a pipe holds
        i += 1


def slow():
    yield 0
    time.sleep(60)
    yield 1


def _cannot_be_read():
    raise ValueError("this item cannot be rebuilt here")


class Unreadable:
    def __reduce__(self):  # pickles there, fails when unpickled here
        return (_cannot_be_read, ())


def unreadable_then_slow():
    yield Unreadable()
    time.sleep(60)


def exits_silently(n: int):
    yield from range(n)
    os._exit(3)


def children() -> list[psutil.Process]:
    return [p for p in psutil.Process().children(recursive=True) if "runbook.ahead" in " ".join(p.cmdline())]


def args_files() -> list[str]:
    return glob.glob(os.path.join(tempfile.gettempdir(), "runbook-ahead-*.pickle"))


def test_items_arrive_in_order_from_another_process_and_it_ends():
    before = set(args_files())
    ballast = np.ones(300 * 2**20 // 8)  # 300 MB here: the child's own peak must not include it
    with ahead.Ahead(numbered, (5, 100_000), "counts") as items:
        got = list(items)
    del ballast
    assert [i for i, _, _ in got] == list(range(5))
    assert {pid for _, pid, _ in got} != {os.getpid()} and len({pid for _, pid, _ in got}) == 1
    assert all(np.array_equal(v, np.full(100_000, i, dtype=np.float32)) for i, _, v in got)
    # its own peak (VmHWM), not ru_maxrss, which carries this process's peak across exec
    assert items.peak_rss_mb and 10 < items.peak_rss_mb < 250
    assert not children() and set(args_files()) <= before


def test_what_the_child_prints_does_not_reach_the_items():
    with ahead.Ahead(chatty, (3,), "talks") as items:
        assert list(items) == [0, 1, 2]


def test_an_error_in_the_child_is_raised_here_as_it_was_raised_there():
    items = ahead.Ahead(failing, (2, FileNotFoundError(2, "No such file", "shard-00003.parquet")), "reads")
    assert next(items) == 0 and next(items) == 1
    with pytest.raises(FileNotFoundError) as err:
        next(items)
    assert err.value.filename == "shard-00003.parquet"
    assert "raised in the process that reads" in err.value.__notes__[0]
    assert "in failing" in err.value.__notes__[0]  # the child's traceback
    with pytest.raises(StopIteration):
        next(items)
    assert not children()


def test_an_error_that_does_not_pickle_arrives_as_its_text():
    with ahead.Ahead(fails_unpicklably, (), "reads") as items:
        with pytest.raises(RuntimeError) as err:
            next(items)
    assert err.value.args == ("Unpicklable: odd",) and "in fails_unpicklably" in err.value.__notes__[0]


def test_arguments_that_do_not_pickle_are_refused_here_and_leave_no_file():
    before = set(args_files())
    with pytest.raises(TypeError, match="not this one"):
        ahead.Ahead(failing, (0, Unpicklable("odd")), "reads")
    assert set(args_files()) <= before and not children()


def test_a_child_killed_mid_way_is_named_with_its_signal():
    with ahead.Ahead(endless, (), "prepares the next batches") as items:
        next(items)
        (child,) = children()
        child.send_signal(signal.SIGKILL)
        with pytest.raises(ahead.AheadError) as err:
            for _ in range(10):  # the items already in the pipe, then the end
                next(items)
    assert str(err.value).startswith(
        "the process that prepares the next batches could not hand over its next item: it was killed (SIGKILL: "
        "the system's out-of-memory killer sends it, or an operator) ("
    )
    assert not children()


def test_a_child_that_exits_without_a_word_is_named_with_its_exit_code():
    with ahead.Ahead(exits_silently, (1,), "reads") as items:
        assert next(items) == 0
        with pytest.raises(ahead.AheadError) as err:
            next(items)
    assert str(err.value) == (
        "the process that reads could not hand over its next item: it ended with exit code 3 (EOFError: Ran out "
        "of input)"
    )


def test_a_child_that_cannot_start_says_what_it_wrote(monkeypatch):
    monkeypatch.setattr(ahead, "_CHILD", "import sys; sys.exit('no runbook here')")
    with ahead.Ahead(numbered, (1,), "reads") as items:
        with pytest.raises(ahead.AheadError) as err:
            next(items)
    assert "ended with exit code 1" in str(err.value) and str(err.value).endswith(
        "it wrote:\nno runbook here"
    )


def test_closing_early_ends_the_child_and_leaves_nothing_behind():
    before = set(args_files())
    items = ahead.Ahead(endless, (), "prepares")
    next(items)
    (child,) = children()
    items.close()
    items.close()  # twice is harmless
    assert not child.is_running() or child.status() == psutil.STATUS_ZOMBIE
    assert not children() and set(args_files()) <= before
    with pytest.raises(StopIteration):
        next(items)


def test_closing_ends_a_child_that_is_still_computing_instead_of_waiting_for_it():
    items = ahead.Ahead(slow, (), "prepares")
    assert next(items) == 0
    items.close()  # the child sleeps in the middle of its next item: it is killed, not waited for
    assert items._proc.returncode == -signal.SIGKILL and not children()


def test_an_item_that_cannot_be_read_here_ends_the_child_and_says_why():
    with ahead.Ahead(unreadable_then_slow, (), "reads") as items:
        with pytest.raises(ahead.AheadError) as err:
            next(items)
    assert str(err.value) == (
        "the process that reads could not hand over its next item: it was still running, and was ended "
        "(ValueError: this item cannot be rebuilt here)"
    )
    assert items._proc.returncode == -signal.SIGKILL and not children()


def test_an_item_that_cannot_be_pickled_there_arrives_as_the_error_it_raised():
    with ahead.Ahead(unpicklable_item, (), "reads") as items:
        assert next(items) == 1
        with pytest.raises(TypeError, match="cannot pickle '_thread.lock' object") as err:
            next(items)
    assert err.value.__notes__[0].startswith("raised in the process that reads")


def test_an_item_that_cannot_be_pickled_leaves_nothing_half_written_on_the_pipe():
    """The error must not follow part of an item: the reader would take the fragment's memo entries and
    opcodes as part of the error's (pickle's frames end at opcodes, so the last test passes either way)."""
    import pickle
    import pickletools

    with ahead.Ahead(unpicklable_item, (), "reads") as items:
        assert pickle.load(items._reader) == ("item", 1)
        rest = items._reader.read()  # to the end: the child writes its error and exits
    ops = [op.name for op, _, _ in pickletools.genops(rest)]  # up to the first STOP
    assert ops.count("PROTO") == 1, ops[:12]  # one whole pickle: the error, not a fragment and then the error
    assert pickle.loads(rest)[0] == "error"


def test_a_broken_pipe_the_generator_raises_is_its_error_not_the_callers_leaving():
    with ahead.Ahead(failing, (1, BrokenPipeError(32, "the source's socket")), "reads") as items:
        assert next(items) == 0
        with pytest.raises(BrokenPipeError, match="the source's socket"):
            next(items)


def test_an_error_that_pickles_but_cannot_be_rebuilt_arrives_as_its_text():
    with ahead.Ahead(fails_unrebuildably, (), "reads") as items:
        with pytest.raises(RuntimeError) as err:
            next(items)
    assert (
        err.value.args == ("NeedsTwo: /data: 5 bytes free",)
        and "in fails_unrebuildably" in err.value.__notes__[0]
    )


def test_a_full_temporary_folder_is_named_as_such(monkeypatch):
    real_open = os.fdopen

    class Full:
        def __init__(self, fd, *a, **k):
            self.f = real_open(fd, *a, **k)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, b):
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(ahead.os, "fdopen", Full)
    before = set(args_files())
    with pytest.raises(ahead.AheadError) as err:
        ahead.Ahead(numbered, (1,), "prepares the load's next batches")
    assert str(err.value) == (
        f"could not write the arguments of the process that prepares the load's next batches to "
        f"{tempfile.gettempdir()} (No space left on device): free space there, or point TMPDIR at a folder with room"
    )
    assert set(args_files()) <= before and not children()
