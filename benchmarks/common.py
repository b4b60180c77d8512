"""Helpers shared by the benchmark scripts: run an arm in its own process and report its peak memory."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time


def tree_rss_mb(root: int, include_root: bool = True) -> float:
    """The resident memory of process ``root`` and all its descendants, summed, in MB (0 once it has gone);
    without ``include_root``, its descendants' only."""
    kids: dict[int, list[int]] = {}
    for e in os.scandir("/proc"):
        if e.name.isdigit():
            try:
                with open(f"/proc/{e.name}/stat", "rb") as f:
                    ppid = int(f.read().rsplit(b")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):  # ended meanwhile
                continue
            kids.setdefault(ppid, []).append(int(e.name))
    total, todo, seen = 0, [root] if include_root else list(kids.get(root, ())), set()
    while todo:
        pid = todo.pop()
        if pid in seen:  # the scan is not atomic: a pid reused meanwhile could close a loop
            continue
        seen.add(pid)
        try:
            with open(f"/proc/{pid}/statm", "rb") as f:
                total += int(f.read().split()[1])
        except (OSError, IndexError, ValueError):
            continue
        todo.extend(kids.get(pid, ()))
    return total * os.sysconf("SC_PAGE_SIZE") / 2**20


class BackgroundThread:
    """``with Sub() as t: ...``: a daemon thread runs ``self._run`` (which ends once ``self._stop`` is set) for
    the length of the block."""

    def __init__(self):
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        raise NotImplementedError

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        return False


class TreeMemory(BackgroundThread):
    """``with TreeMemory(pid) as tm: ...``: the joint peak of a process tree's resident memory (``tm.peak_mb``),
    sampled every ``interval`` seconds in a thread. A process and the processes it starts (the loader's second
    process, a notebook's kernel) need not peak at the same moment: the sum of their own peaks overstates the
    tree's, a parent's ``wait4`` rusage (its largest child's peak) understates it. A peak shorter than the
    interval can be missed, so this is a lower bound where the sum of peaks is an upper one; shared pages count
    once per process (RSS, not PSS), on the high side. A scan of ``/proc`` costs about 1 ms."""

    def __init__(self, pid: int, interval: float = 0.1, include_root: bool = True):
        self.pid, self.interval, self.include_root, self.peak_mb = pid, interval, include_root, 0.0
        self.samples, self.error = 0, None
        super().__init__()

    def _run(self):
        while True:
            try:
                self.peak_mb = max(self.peak_mb, tree_rss_mb(self.pid, self.include_root))
                self.samples += 1
            except Exception as e:  # noqa: BLE001 - kept, and the figure left out, rather than a silent 0
                self.error = e
            if self._stop.wait(self.interval):
                return

    @property
    def measured_mb(self) -> float | None:
        """The joint peak, or None when no sample succeeded."""
        return round(self.peak_mb, 1) if self.samples else None


def run_arm(code: str, *args: str, env: dict | None = None, timeout: float = 3600) -> dict:
    """Run ``code`` (which prints one JSON line last) in a fresh Python; add its peak RSS in MB (its own), and
    ``tree_peak_rss_mb``: the joint peak of it and every process it started, sampled (``TreeMemory``)."""
    # VmHWM is this process's own peak (ru_maxrss would carry the parent's peak across exec)
    wrapper = code + (
        "\nimport re\nprint('__RSS__', int(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1)) / 1024)\n"
        "import resource\n_ru = resource.getrusage(resource.RUSAGE_SELF)\nprint('__CPU__', _ru.ru_utime + _ru.ru_stime)\n"
    )
    t0 = time.time()
    # a session of its own: an arm past its limit is stopped with whatever it started (the loader's second
    # process), which would otherwise run on beside the next arm
    p = subprocess.Popen(
        [sys.executable, "-c", wrapper, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
        start_new_session=True,
    )
    try:
        with TreeMemory(p.pid) as tree:
            stdout, stderr = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:  # a row that says so, not the end of a benchmark of hours
        os.killpg(p.pid, signal.SIGKILL)
        p.communicate()
        return {"error": f"stopped after its limit of {timeout:.0f} s", "wall_s": round(time.time() - t0, 1)}
    wall = time.time() - t0
    if p.returncode != 0:
        last = (stderr.strip() or stdout.strip()).splitlines()[-1:] or [
            # no word of its own: killed (the kernel's out-of-memory killer sends SIGKILL)
            f"killed by {signal.Signals(-p.returncode).name}" if p.returncode < 0 else f"exit {p.returncode}"
        ]
        return {"error": last[0][:300], "wall_s": round(wall, 1)}
    lines = stdout.strip().splitlines()
    rss = float(next(line for line in lines if line.startswith("__RSS__")).split()[1])
    cpu = float(next(line for line in lines if line.startswith("__CPU__")).split()[1])
    result = json.loads(next(line for line in reversed(lines) if line.startswith("{")))
    return {
        **result,
        "peak_rss_mb": round(rss, 1),
        "tree_peak_rss_mb": tree.measured_mb,
        "cpu_s": round(cpu, 2),
        "wall_s": round(wall, 1),
    }


def proc_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a live process (``/proc/<pid>/stat``), its reaped children included: what
    a server arm cost while a client arm ran, read before and after."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")  # utime, stime, cutime, cstime


def spread(values: list[float], digits: int = 1) -> str:
    """``median (min-max)`` of repeated measurements, or the one value."""
    import statistics

    med = round(statistics.median(values), digits)
    return (
        f"{med:g}"
        if len(values) == 1
        else f"{med:g} ({round(min(values), digits):g}-{round(max(values), digits):g})"
    )


def table(rows: list[dict], columns: list[str]) -> str:
    widths = {c: max([len(c), *(len(str(r.get(c, ""))) for r in rows)]) for c in columns}  # no rows: headers
    out = ["  ".join(c.ljust(widths[c]) for c in columns)]
    for r in rows:
        out.append("  ".join(str(r.get(c, "")).ljust(widths[c]) for c in columns))
    return "\n".join(out)


# ---------------------------------------------------------------- the benchmark page's tables
PAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "BENCHMARKS.md")


def markdown(rows: list[dict], columns: list[str]) -> str:
    """A Markdown table of ``rows`` (the columns no row has are left out)."""
    cols = [c for c in columns if any(r.get(c) not in (None, "") for r in rows)]
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        out.append("| " + " | ".join(str(r.get(c, "")).replace("|", "\\|") for c in cols) + " |")
    return "\n".join(out)


def machine() -> str:
    """What the figures were measured on: cores, memory, load when the run ended."""
    mem = next((ln.split()[1] for ln in open("/proc/meminfo") if ln.startswith("MemTotal")), "0")
    load = os.getloadavg()
    return f"{os.cpu_count()} cores, {int(mem) / 2**20:.0f} GiB, load average {load[0]:.1f} / {load[1]:.1f} at the end"


def write_section(name: str, body: str, page: str = PAGE) -> None:
    """Put ``body`` between ``<!-- bench:<name> -->`` and ``<!-- /bench:<name> -->`` on the benchmark page,
    stamped with the date, the machine and the command; the rest of the page is left as it is. The page is
    replaced in one step (a temporary file renamed over it), so an interrupted run leaves it whole."""
    import datetime as dt
    import shlex

    start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    text = open(page, encoding="utf-8").read()
    if start not in text or end not in text:
        raise SystemExit(f"{page} has no {start} ... {end} section: add the two markers where the table goes")
    stamp = (
        f"_Measured {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC on {machine()}, by "
        f"`{shlex.join(['python', *sys.argv])}`._"
    )
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    new = f"{head}{start}\n{stamp}\n\n{body.strip()}\n{end}{tail}"
    tmp = page + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(new)
    os.replace(tmp, page)
