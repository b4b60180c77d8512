"""The disk: preflight's calibrated projection refuses what would not fit, phase 03 stops cleanly when the
disk fills (before a batch, or when Chroma itself runs out) and resumes once space is freed.

Each volume test runs twice: on a real tmpfs this test mounts (40 MB, as root), and on a simulated volume
(``disk.usage`` answers for a folder as if it were a volume of that size; the loader's Chroma then fails the
way chromadb 1.5.9 fails on a full disk). Without the right to mount, the tmpfs run is skipped and the
simulated one still tests the same behaviour."""

from __future__ import annotations

import errno
import gc
import os
import sqlite3
import subprocess
from pathlib import Path

import numpy as np
import pytest

from runbook import (
    atomic,
    chroma_target,
    disk,
    embeddings,
    export_format,
    extract,
    load,
    preflight,
    source,
)
from runbook.rehearsal import cloud_emulator, corpus

DIM = 384
KEY = "disk-test-key-1234"
MB = 2**20
# what chromadb 1.5.9 raises from ``add`` when its volume is full (seen on a full tmpfs), and on every call
# after it until space is freed
CHROMA_FULL = "Error in compaction: Failed to apply logs to the metadata segment"


# ---------------------------------------------------------------- fixtures
def _export(root: Path, chunks: int) -> Path:
    """An export of ``chunks`` synthetic chunks with their vectors, written by phase 01's own code."""
    syn = corpus.SyntheticCorpus(chunks, DIM, chunks_per_doc=50)
    with (
        pytest.MonkeyPatch.context() as mp,
        cloud_emulator.EmulatorServer(syn, KEY, serve_embeddings=True) as srv,
    ):
        mp.setenv("DISK_TEST_KEY", KEY)
        res = extract.export_index(
            source.open_source(srv.url, "DISK_TEST_KEY"),
            root,
            index_name=syn.pipeline["name"],
            progress=False,
        )
    return Path(res.path)


@pytest.fixture(scope="module")
def big_export(tmp_path_factory) -> Path:
    return _export(tmp_path_factory.mktemp("disk-exports"), 6000)


@pytest.fixture(scope="module")
def small_export(tmp_path_factory) -> Path:
    return _export(tmp_path_factory.mktemp("disk-exports-small"), 1000)


def _ids(export_dir) -> list[str]:
    exp = export_format.open_export(export_dir)
    return [i for b in exp.iter_chunk_batches(columns=["chunk_id"]) for i in b.column(0).to_pylist()]


def _payload(export_dir) -> float:
    rows = list(export_format.open_export(export_dir).iter_chunks())
    return sum(disk.payload_bytes(r) for r in rows) / len(rows)


def _allocated(path: Path) -> int:
    return sum(p.stat().st_blocks * 512 for p in Path(path).rglob("*") if p.is_file())


class Volume:
    """A small volume at ``path``: a tmpfs mounted there, or a simulated one of ``size`` bytes."""

    def __init__(self, path: Path, kind: str, size: int, monkeypatch):
        self.path, self.kind, self.size = path, kind, size
        self.paths: list[Path] = []  # Chroma folders opened here (closed before unmounting)
        if kind == "simulated":
            real_usage, real_mount = disk.usage, disk.mount_point

            def usage(p):
                if not self._inside(p):
                    return real_usage(p)
                used = _allocated(self.path)
                return disk.Usage(self.size, used, max(0, self.size - used))

            monkeypatch.setattr(disk, "usage", usage)
            monkeypatch.setattr(
                disk, "mount_point", lambda p: self.path if self._inside(p) else real_mount(p)
            )

    def _inside(self, p) -> bool:
        return Path(os.path.abspath(p)).is_relative_to(self.path)

    def resize(self, size: int) -> None:
        """Free space the way an operator would: a larger volume."""
        if self.kind == "tmpfs":
            subprocess.run(["mount", "-o", f"remount,size={size}", str(self.path)], check=True)
        self.size = size

    def fill(self, leave: int) -> None:
        """Write a file that leaves about ``leave`` bytes free."""
        n = disk.free_bytes(self.path) - leave
        with open(self.path / f"filler-{len(list(self.path.glob('filler-*')))}", "wb") as f:
            f.write(b"\0" * max(0, n))
            f.flush()
            os.fsync(f.fileno())

    def client(self, base: Path):
        self.paths.append(base / "chroma_db")
        return chroma_target.open_client("embedded", str(base))

    def chroma(self, col):
        """The collection as the loader sees it; on a simulated volume, a Chroma that fails like 1.5.9 does
        when an ``add`` would not fit (a real tmpfs needs no help)."""
        return col if self.kind == "tmpfs" else _SimulatedFullChroma(col, self)

    def close(self) -> None:
        from chromadb.api.shared_system_client import SharedSystemClient

        for p in self.paths:
            system = SharedSystemClient._identifier_to_system.pop(str(p), None)
            SharedSystemClient._identifier_to_refcount.pop(str(p), None)
            if system is not None:
                try:
                    system.stop()
                except Exception:  # noqa: BLE001 -- stopping a system that is already stopped
                    pass
        gc.collect()


class _SimulatedFullChroma:
    """A collection whose ``add`` raises Chroma's full-disk error when the batch would not fit the simulated
    volume (its real bytes per record, without the projection's margin)."""

    def __init__(self, col, vol: Volume):
        self._col, self._vol = col, vol

    def __getattr__(self, name):
        return getattr(self._col, name)

    def add(self, ids, **kw):
        import chromadb.errors

        need = len(ids) * disk.record_bytes(DIM, self._vol.payload) / disk.MARGIN
        if disk.free_bytes(self._vol.path) < need:
            raise chromadb.errors.InternalError(CHROMA_FULL)
        return self._col.add(ids=ids, **kw)


@pytest.fixture(params=["tmpfs", "simulated"])
def volume(request, tmp_path, monkeypatch):
    """A 40 MB volume (the issue's size), mounted or simulated; unmounted afterwards."""
    path = tmp_path / "vol"
    path.mkdir()
    size = 40 * MB
    if request.param == "tmpfs":
        if os.geteuid() != 0:
            pytest.skip("not root: cannot mount a tmpfs (the simulated volume runs the same tests)")
        r = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True, text=True
        )
        if r.returncode != 0:
            pytest.skip(
                f"cannot mount a tmpfs here ({r.stderr.strip()}): the simulated volume runs the same tests"
            )
    vol = Volume(path, request.param, size, monkeypatch)
    try:
        yield vol
    finally:
        vol.close()
        if request.param == "tmpfs":
            if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
                subprocess.run(["umount", "-l", str(path)], check=True)  # files still open in this process


def _existing_collection(vol: Volume, base: Path, small_export: Path, tmp_path: Path):
    """A collection already on the volume (loaded by the runbook's loader), and what it holds."""
    client = vol.client(base)
    col, _ = chroma_target.create_or_verify(
        client, "existing", chroma_target.HnswSettings(), {"source_index_id": "existing"}
    )
    load.load_export(client, col, small_export, tmp_path / "cp-existing.json", batch_size=500, progress=False)
    return client, col, _content(col)


def _content(col) -> dict:
    got = col.get(include=["documents", "metadatas", "embeddings"])
    return {
        i: (d, m, np.asarray(e, dtype=np.float32).tobytes())
        for i, d, m, e in zip(got["ids"], got["documents"], got["metadatas"], got["embeddings"], strict=True)
    }


# ---------------------------------------------------------------- (a) preflight refuses what would not fit
def test_preflight_refuses_a_corpus_that_would_not_fit_and_accepts_one_that_does(volume, big_export):
    base = volume.path / "base"
    payload = _payload(big_export)
    # the issue's corpus: the old projection (9.2 KB per 384-d chunk for export and Chroma) put it at 72.5%
    # of this 40 MB volume, and phase 03 filled the volume
    issue_chunks = int(0.725 * 40 * MB / (2 * 4 * DIM + 6 * 1024))
    refused = preflight.disk_check(
        str(base), issue_chunks, DIM, 80.0, reembed=True, payload_bytes=payload, batch_size=500
    )
    assert not refused["ok"] and refused["projected use %"] > 100, preflight.disk_summary(refused)
    parts = {c["component"]: c for c in refused["components"]}
    assert {
        "export",
        "chroma",
        "embedding cache",
        "snapshots (phase 07)",
        "collection versions (phase 07)",
    } <= set(parts)
    assert all(c["basis"] for c in refused["components"]) and "1.5.9" in refused["basis"]
    assert parts["chroma"]["projected MB"] > 0 and parts["embedding cache"]["projected MB"] > 0
    assert parts["sparse index"]["basis"].startswith("none yet")
    assert refused["volumes"][0]["volume"] == str(volume.path)  # the volume of the base path, not /
    # even Chroma alone, without the embedding cache or phase 07, would not fit
    lean = preflight.disk_check(
        str(base), issue_chunks, DIM, 80.0, reembed=False, snapshots=0, versions=0, payload_bytes=payload
    )
    assert not lean["ok"]

    small = preflight.disk_check(
        str(base), 100, DIM, 80.0, reembed=True, payload_bytes=payload, batch_size=500
    )
    assert small["ok"] and small["projected use %"] <= 80, preflight.disk_summary(small)
    # the projection is volume by volume: a cache elsewhere does not count against this one
    elsewhere = preflight.disk_check(
        str(base), 100, DIM, 80.0, payload_bytes=payload, embedding_cache=str(Path.cwd() / "x.sqlite")
    )
    assert [v["volume"] for v in elsewhere["volumes"]] == [
        str(volume.path),
        str(disk.mount_point(Path.cwd())),
    ]
    assert elsewhere["ok"]


# ---------------------------------------------------------------- (b) phase 03 stops before a batch that would not fit
def test_load_stops_before_the_disk_fills_and_resumes_when_space_is_freed(
    volume, big_export, small_export, tmp_path
):
    base = volume.path
    client, existing, before = _existing_collection(volume, base, small_export, tmp_path)
    col, _ = chroma_target.create_or_verify(
        client, "main", chroma_target.HnswSettings(), {"source_index_id": "x"}
    )
    chroma_db = base / "chroma_db"
    # phase 03's guard: bytes per record from the calibration at the export's dimension and payload
    guard = disk.guard_for_export(chroma_db, big_export, reserve_bytes=2 * MB)
    cp = tmp_path / "cp-main.json"

    with pytest.raises(disk.DiskFull) as stopped:
        load.load_export(
            client,
            col,
            big_export,
            cp,
            batch_size=500,
            progress=False,
            before_batch=guard,
            chroma_path=chroma_db,
        )
    e = stopped.value
    assert e.__cause__ is None  # the guard stopped it: Chroma never hit the full disk
    assert str(chroma_db) in str(e) and f"mounted at {volume.path}" in str(e)
    assert "run phase 03 again" in str(e) and "resumes from its checkpoint" in str(e)
    assert e.free < e.needed and disk.free_bytes(chroma_db) > 0
    done = atomic.read_json(cp)["loaded"]
    total = export_format.open_export(big_export).manifest["total_chunks"]
    assert 0 < done < total and col.count() == done  # stopped cleanly after the last checkpointed batch
    assert existing.count() == len(before) and _content(existing) == before

    volume.resize(200 * MB)
    res = load.load_export(
        client, col, big_export, cp, batch_size=500, progress=False, before_batch=guard, chroma_path=chroma_db
    )
    assert res.skipped_by_checkpoint == done and res.loaded_now == total - done
    assert col.count() == total and sorted(col.get(include=[])["ids"]) == sorted(_ids(big_export))
    assert _content(existing) == before


# ---------------------------------------------------------------- (b) ... and when the disk fills anyway
def test_load_on_a_disk_that_fills_anyway_stops_with_a_message_about_the_disk_and_resumes(
    volume, big_export, small_export, tmp_path
):
    base = volume.path
    volume.payload = _payload(big_export)
    client, existing, before = _existing_collection(volume, base, small_export, tmp_path)
    col, _ = chroma_target.create_or_verify(
        client, "main", chroma_target.HnswSettings(), {"source_index_id": "x"}
    )
    chroma_db = base / "chroma_db"
    cp = tmp_path / "cp-main.json"

    # no guard (or one that under-estimated): Chroma itself runs out of space
    with pytest.raises(disk.DiskFull) as stopped:
        load.load_export(
            client, volume.chroma(col), big_export, cp, batch_size=500, progress=False, chroma_path=chroma_db
        )
    e = stopped.value
    assert type(e.__cause__).__name__ == "InternalError" and "compaction" in str(e.__cause__)
    assert (
        str(chroma_db) in str(e) and f"mounted at {volume.path}" in str(e) and "run phase 03 again" in str(e)
    )
    done = atomic.read_json(cp)["loaded"]
    total = export_format.open_export(big_export).manifest["total_chunks"]
    assert 0 < done < total

    volume.resize(200 * MB)
    res = load.load_export(
        client, volume.chroma(col), big_export, cp, batch_size=500, progress=False, chroma_path=chroma_db
    )
    assert res.skipped_by_checkpoint == done
    assert col.count() == total and sorted(col.get(include=[])["ids"]) == sorted(_ids(big_export))
    assert existing.count() == len(before) and _content(existing) == before


# ---------------------------------------------------------------- (c) translate
def test_translate_names_the_disk_for_full_disk_errors_and_leaves_others_alone(volume):
    import chromadb.errors

    chroma_db = volume.path / "chroma_db"
    compaction = chromadb.errors.InternalError(CHROMA_FULL)
    backfill = chromadb.errors.InternalError(f"Error sending backfill request to compactor: {CHROMA_FULL}")
    unrelated = chromadb.errors.InternalError("Error executing plan: collection not found")
    # plenty of room: a compaction failure is not blamed on the disk
    assert disk.translate(compaction, chroma_db) is compaction
    for other in (unrelated, ValueError("bad vector"), KeyError("x")):
        assert disk.translate(other, chroma_db) is other

    volume.fill(leave=200 * 1024)
    for err in (compaction, backfill):
        full = disk.translate(err, chroma_db)
        assert isinstance(full, disk.DiskFull), err
        assert str(chroma_db) in str(full) and f"mounted at {volume.path}" in str(full)
        assert "run phase 03 again" in str(full) and CHROMA_FULL in str(full) and full.free < 256 * MB
    assert disk.translate(unrelated, chroma_db) is unrelated
    # explicit signs are enough, with or without a path, and through a chain of causes
    for err in (
        sqlite3.OperationalError("database or disk is full"),
        OSError(errno.ENOSPC, "No space left on device"),
        chromadb.errors.InternalError("error returned from database: (code: 13) database or disk is full"),
    ):
        assert isinstance(disk.translate(err, chroma_db), disk.DiskFull)
        assert isinstance(disk.translate(err), disk.DiskFull)
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as inner:
            raise RuntimeError("writing the segment failed") from inner
    except RuntimeError as outer:
        assert isinstance(disk.translate(outer, chroma_db), disk.DiskFull)
    # without a path, Chroma's bare compaction error says nothing of the disk: left alone
    assert disk.translate(compaction) is compaction
    already = disk.DiskFull(chroma_db, 1, 2)
    assert disk.translate(already, chroma_db) is already


def test_guard_raises_before_a_batch_that_would_not_fit(volume):
    target = volume.path / "chroma_db"  # not created yet: its volume is its parent's
    free = disk.free_bytes(target)
    guard = disk.guard(target, bytes_per_record=1000, reserve_bytes=MB)
    guard((free - MB) // 1000 - 1)  # fits
    with pytest.raises(disk.DiskFull, match="the next batch of") as e:
        guard((free - MB) // 1000 + 10)
    assert e.value.free == free and e.value.needed > free and str(target) in str(e.value)


# ---------------------------------------------------------------- (d) the projection is not below a real load
def test_projection_is_not_below_what_a_real_load_measures(small_export, tmp_path):
    n = export_format.open_export(small_export).manifest["total_chunks"]
    payload = _payload(small_export)
    client = chroma_target.open_client("embedded", str(tmp_path))
    col, _ = chroma_target.create_or_verify(
        client, "calib", chroma_target.HnswSettings(), {"source_index_id": "x"}
    )
    load.load_export(client, col, small_export, tmp_path / "cp.json", progress=False)
    assert col.count() == n == 1000
    measured = {
        "chroma": _allocated(tmp_path / "chroma_db"),
        "export": _allocated(small_export),
    }
    cache = embeddings.EmbeddingCache(tmp_path / "cache" / "embeddings.sqlite")
    vecs = np.random.default_rng(0).standard_normal((n, DIM)).astype(np.float32)
    for i in range(0, n, 64):  # as embed_texts commits: a batch at a time
        cache.put_many(
            "hash", {embeddings.text_hash(f"chunk {j}"): vecs[j] for j in range(i, min(i + 64, n))}
        )
    measured["embedding cache"] = _allocated(tmp_path / "cache")
    cache.close()

    rows = disk.projection(n, DIM, reembed=True, snapshots=1, payload_bytes=payload)
    proj = {r["component"]: r["bytes"] for r in rows}
    export_alone = disk.projection(n, DIM, reembed=False, snapshots=0, payload_bytes=payload)[0]["bytes"]
    assert measured["chroma"] <= proj["chroma"] <= 2 * measured["chroma"], (measured, proj)
    assert measured["export"] <= export_alone, (measured, export_alone)
    assert measured["embedding cache"] <= proj["embedding cache"], (measured, proj)
    assert proj["snapshots (phase 07)"] == proj["chroma"]  # a snapshot copies chroma_db/
    assert proj["total"] == sum(v for k, v in proj.items() if k != "total")
    assert all(r["basis"] for r in rows)
    # the loader's per-record share (the guard's bytes_per_record) covers what a record costs Chroma here
    assert disk.record_bytes(DIM, payload) * n >= measured["chroma"]
    # without re-embedding there is no cache; a sparse index is an estimate, said to be one
    lean = {r["component"]: r for r in disk.projection(n, DIM, reembed=False, snapshots=0, sparse_index=True)}
    assert lean["embedding cache"]["bytes"] == 0 and lean["snapshots (phase 07)"]["bytes"] == 0
    assert lean["sparse index"]["bytes"] > 0 and "estimate" in lean["sparse index"]["basis"]


def test_source_check_samples_the_payload_and_whether_vectors_are_served(monkeypatch):
    syn = corpus.SyntheticCorpus(200, DIM, chunks_per_doc=20)
    monkeypatch.setenv("DISK_TEST_KEY", KEY)
    for served in (False, True):
        with cloud_emulator.EmulatorServer(syn, KEY, serve_embeddings=served) as srv:
            info = preflight.source_check(
                source.open_source(srv.url, "DISK_TEST_KEY"),
                "",
                syn.pipeline["name"],
                syn.project["name"],
                sample_docs=3,
            )
        assert info["vectors served (sample)"] is served
        row = export_format.node_to_row(syn.doc_id(0), 0, syn.get_chunks(syn.doc_id(0), False)[0])
        assert abs(
            info["payload bytes per chunk (sample)"] - disk.payload_bytes(row)
        ) < 0.1 * disk.payload_bytes(row)
