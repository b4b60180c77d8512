"""Helpers shared by the benchmark scripts: run an arm in its own process and report its peak memory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time


def run_arm(code: str, *args: str, env: dict | None = None, timeout: float = 3600) -> dict:
    """Run ``code`` (which prints one JSON line last) in a fresh Python; add its peak RSS in MB."""
    # VmHWM is this process's own peak (ru_maxrss would carry the parent's peak across exec)
    wrapper = code + (
        "\nimport re\nprint('__RSS__', int(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1)) / 1024)\n"
        "import resource\n_ru = resource.getrusage(resource.RUSAGE_SELF)\nprint('__CPU__', _ru.ru_utime + _ru.ru_stime)\n"
    )
    t0 = time.time()
    p = subprocess.run(
        [sys.executable, "-c", wrapper, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )
    wall = time.time() - t0
    if p.returncode != 0:
        return {"error": (p.stderr or p.stdout).strip().splitlines()[-1][:300], "wall_s": round(wall, 1)}
    lines = p.stdout.strip().splitlines()
    rss = float(next(line for line in lines if line.startswith("__RSS__")).split()[1])
    cpu = float(next(line for line in lines if line.startswith("__CPU__")).split()[1])
    result = json.loads(next(line for line in reversed(lines) if line.startswith("{")))
    return {**result, "peak_rss_mb": round(rss, 1), "cpu_s": round(cpu, 2), "wall_s": round(wall, 1)}


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
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns}
    out = ["  ".join(c.ljust(widths[c]) for c in columns)]
    for r in rows:
        out.append("  ".join(str(r.get(c, "")).ljust(widths[c]) for c in columns))
    return "\n".join(out)
