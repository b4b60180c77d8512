"""``memory.release`` hands back what the heaps keep after a step: phase 03's peak is the index plus what is
kept, so memory freed by the load and held by glibc used to count toward the verification's peak."""

from __future__ import annotations

import subprocess
import sys

import pytest

PROBE = """
from runbook import memory
def rss_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1]) // 1024
blocks = [bytes(2000) for _ in range(150_000)]  # 300 MB in glibc's heap (too large for Python's own arenas)
kept = blocks[::16]  # one in 16 stays: the heap cannot shrink from its top, only by pages inside it
del blocks
before = rss_mb()
memory.release()
print(before, rss_mb())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's heaps, read from /proc")
def test_release_returns_the_freed_heap_to_the_system():
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True).stdout
    before, after = map(int, out.split())
    assert before - after > 120, (before, after)  # about 280 MB freed in holes; 180 returned here


READ = """
import sys
import pyarrow as pa
from runbook import export_format, load, verify
exp = export_format.open_export(sys.argv[1])
if sys.argv[2] == "export":  # the verifications' and the exact search's reader
    for _ in exp.iter_chunk_batches():
        pass
elif sys.argv[2] == "loader":  # the loader's (its second process's)
    for _ in load._batches(exp, 5000, 0, 0):
        pass
elif sys.argv[2] == "stats":  # the export's statistics, written into its manifest when it completes
    from runbook import extract
    assert extract.embedding_stats(exp.path, exp.shards)["from_cloud"] == 20000
else:  # phase 01's verification of the export
    assert verify.verify_export(sys.argv[1]).ok
print(pa.default_memory_pool().max_memory())
"""


@pytest.fixture(scope="module")
def shard_export(tmp_path_factory):
    from runbook.rehearsal import corpus

    path = tmp_path_factory.mktemp("one-shard") / "e"
    corpus.write_synthetic_export(20000, 384, path)  # one shard of 20,000 rows: 30.7 MB of vectors
    return path


# Arrow's peak over the vectors' bytes, read as needed (measured 1.71, 1.86, 2.36, 2.76); pre-buffered, the
# compressed column (as large: random floats do not compress) comes on top (2.59, 2.74, 3.24, 3.64)
PEAK_OVER_VECTORS = {"export": 2.2, "loader": 2.2, "stats": 2.8, "verify_export": 3.2}


@pytest.mark.parametrize("reader", sorted(PEAK_OVER_VECTORS))
def test_a_shard_is_read_without_holding_its_compressed_column_too(shard_export, reader):
    """pyarrow pre-buffers a column's data before decoding it by default: reading one shard of 20,000 x 1,536
    floats held 222-225 MB of Arrow memory at its peak, 113-118 MB read as needed (the same CPU)."""
    out = subprocess.run(
        [sys.executable, "-c", READ, str(shard_export), reader], capture_output=True, text=True, check=True
    ).stdout
    peak = int(out.split()[-1])  # Arrow's own count of its memory at its peak: no sampling, no timing
    vectors = 20000 * 384 * 4
    assert peak < PEAK_OVER_VECTORS[reader] * vectors, (peak / vectors, reader)


def test_every_reader_of_an_export_shard_goes_through_export_format():
    """The memory test above measures ``export_format``'s readers; a module reading a shard with pyarrow's own
    ``read_table`` or ``iter_batches`` (pre-buffered by default) would escape it. The sparse index reads only
    its own file, and verify's ``ParquetFile`` only a shard's footer (``.metadata``)."""
    import re
    from pathlib import Path

    lib = Path(__file__).resolve().parent.parent / "lib"
    own_files = {"export_format.py", "sparse_index.py"}
    found = [
        f"{p.relative_to(lib)}:{n}: {line.strip()}"
        for p in sorted(lib.rglob("*.py"))
        if p.name not in own_files
        for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
        if (re.search(r"\b(read_table|iter_batches)\(", line) and "export_format." not in line)
        or (re.search(r"ParquetFile\(", line) and ".metadata" not in line)
    ]
    assert not found, found
