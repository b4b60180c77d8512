"""The loader's checkpoint, in process: what it records after each batch, how a stopped load resumes (with
another batch size, so a resume starts inside a shard), and what a batch Chroma refuses leaves behind.
A small synthetic export (300 chunks of 16-d vectors in 5 shards of 60) keeps each test to seconds."""

from __future__ import annotations

import errno
import time

import numpy as np
import pytest

from runbook import atomic, chroma_target, disk, export_format, load, records
from runbook.rehearsal import corpus

from .conftest import synthetic_export

N, SHARD = 300, 60


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    syn = corpus.SyntheticCorpus(N, 16, chunks_per_doc=10)
    return synthetic_export(
        syn, tmp_path_factory.mktemp("resume"), shard_rows=SHARD, key_env="RESUME_EXPORT_KEY"
    )


def collection(path, export_dir, name="resume"):
    client = chroma_target.open_client("embedded", str(path))
    prov = chroma_target.provenance(export_format.open_export(export_dir), "hash")
    col, _ = chroma_target.create_or_verify(client, name, chroma_target.HnswSettings(), prov)
    return client, col


def snapshot(col) -> dict:
    got = col.get(include=["documents", "metadatas", "embeddings"])
    return {
        i: (d, m, np.asarray(e, dtype=np.float32).tobytes())
        for i, d, m, e in zip(got["ids"], got["documents"], got["metadatas"], got["embeddings"], strict=True)
    }


def export_ids(export_dir) -> list[str]:
    exp = export_format.open_export(export_dir)
    return [i for b in exp.iter_chunk_batches(columns=["chunk_id"]) for i in b.column(0).to_pylist()]


class Stop(Exception):
    pass


def stop_before(call: int):
    """A ``before_batch`` guard that stops the load before its ``call``-th ``add`` (as the disk guard does)."""
    calls = []

    def guard(n):
        calls.append(n)
        if len(calls) == call:
            raise Stop(f"stopped before add #{call}")

    guard.calls = calls
    return guard


@pytest.fixture(scope="module")
def reference(export_dir, tmp_path_factory):
    """One uninterrupted load: every record as Chroma holds it, and the tally."""
    client, col = collection(tmp_path_factory.mktemp("ref"), export_dir)
    res = load.load_export(
        client, col, export_dir, tmp_path_factory.mktemp("refcp") / "cp.json", progress=False
    )
    return snapshot(col), res.tally.state()


def test_a_stopped_load_checkpoints_each_whole_batch_and_resumes_inside_a_shard(
    export_dir, reference, tmp_path
):
    client, col = collection(tmp_path, export_dir)
    cp_path = tmp_path / "cp.json"
    guard = stop_before(5)  # batches of 25 in shards of 60: 25, 25, 10 | 25, [stop]
    with pytest.raises(Stop):
        load.load_export(client, col, export_dir, cp_path, batch_size=25, progress=False, before_batch=guard)
    assert guard.calls == [25, 25, 10, 25, 25]
    cp = atomic.read_json(cp_path)
    tally = cp.pop("tally")
    assert cp == {
        "export_manifest_sha256": export_format.open_export(export_dir).manifest_sha256,
        "collection": "resume",
        "collection_id": str(col.id),
        "policy": vars(records.Policy()),
        "flat_format": records.FLAT_FORMAT,
        "shard": 1,
        "row": 25,
        "loaded": 85,
        "rows_done": 85,
    }
    assert sum(tally["counts"].values()) == 85 and col.count() == 85
    assert sorted(col.get()["ids"]) == sorted(export_ids(export_dir)[:85])

    # resumed with batches of 40: shard 1 starts at its row 25 (its first batch of 40 is sliced)
    res = load.load_export(client, col, export_dir, cp_path, batch_size=40, progress=False)
    assert (res.skipped_by_checkpoint, res.loaded_now, res.total, res.batch_size) == (85, N - 85, N, 40)
    assert snapshot(col) == reference[0]
    assert res.tally.state() == reference[1]
    cp = atomic.read_json(cp_path)
    assert (cp["shard"], cp["row"], cp["loaded"], cp["rows_done"], cp["complete"]) == (4, SHARD, N, N, True)

    # and a third run has nothing left to do
    again = load.load_export(client, col, export_dir, cp_path, batch_size=40, progress=False)
    assert (again.skipped_by_checkpoint, again.loaded_now) == (N, 0) and snapshot(col) == reference[0]


def test_a_resume_in_other_batches_adds_each_remaining_record_once_in_export_order(
    export_dir, reference, tmp_path
):
    """Stopped after one batch of 30, resumed in batches of 7 (whose edges fall at 28 and 35, not at 30):
    the batch that holds the checkpoint is cut there, nothing is added twice, nothing is missed."""
    client, col = collection(tmp_path, export_dir)
    cp_path = tmp_path / "cp.json"
    with pytest.raises(Stop):
        load.load_export(
            client, col, export_dir, cp_path, batch_size=30, progress=False, before_batch=stop_before(2)
        )
    assert (atomic.read_json(cp_path)["shard"], atomic.read_json(cp_path)["row"]) == (0, 30)
    added = []
    real_add = col.add

    def counting_add(**kw):
        added.extend(kw["ids"])
        return real_add(**kw)

    col.add = counting_add
    res = load.load_export(client, col, export_dir, cp_path, batch_size=7, progress=False)
    assert added == export_ids(export_dir)[30:] and res.loaded_now == N - 30
    assert snapshot(col) == reference[0]


def test_a_checkpoint_of_another_collection_or_export_is_not_resumed(export_dir, tmp_path):
    """The checkpoint names the export and the collection (and that collection's id): a collection made anew
    under the same name is loaded from the start."""
    client, col = collection(tmp_path, export_dir)
    cp_path = tmp_path / "cp.json"
    load.load_export(client, col, export_dir, cp_path, progress=False)
    client.delete_collection("resume")
    client, fresh = collection(tmp_path, export_dir)
    res = load.load_export(client, fresh, export_dir, cp_path, progress=False)
    assert (res.skipped_by_checkpoint, res.loaded_now) == (0, N) and fresh.count() == N
    assert atomic.read_json(cp_path)["collection_id"] == str(fresh.id)
    # another export's checkpoint (its manifest differs): the same
    cp = atomic.read_json(cp_path)
    atomic.write_json(cp_path, {**cp, "export_manifest_sha256": "0" * 64})
    res = load.load_export(client, fresh, export_dir, cp_path, progress=False)
    assert (res.skipped_by_checkpoint, res.loaded_now) == (0, N)


class Refusing:
    """A real collection whose ``add`` fails on the ``fail_at``-th call with ``exc``."""

    def __init__(self, col, fail_at: int, exc: Exception):
        self._col, self._fail_at, self._exc, self.calls = col, fail_at, exc, 0

    def __getattr__(self, name):
        return getattr(self._col, name)

    def add(self, **kw):
        self.calls += 1
        if self.calls == self._fail_at:
            raise self._exc
        return self._col.add(**kw)


def test_a_batch_chroma_refuses_is_named_and_nothing_of_it_is_counted(export_dir, tmp_path):
    client, col = collection(tmp_path, export_dir)
    cp_path = tmp_path / "cp.json"
    refusing = Refusing(col, 2, ValueError("Expected metadata value to be a str"))
    with pytest.raises(load.LoadError) as err:
        load.load_export(client, refusing, export_dir, cp_path, batch_size=25, progress=False)
    ids = export_ids(export_dir)
    shard0 = export_format.open_export(export_dir).shards[0]["chunks_file"]
    assert str(err.value) == (
        f"Chroma refused the batch of 25 records from {shard0} (chunks {ids[25]!r} … {ids[49]!r}): "
        "Expected metadata value to be a str. Nothing of this batch is counted as loaded; the records before "
        "it are checkpointed. Report the chunk ids with this message."
    )
    assert isinstance(err.value.__cause__, ValueError)
    cp = atomic.read_json(cp_path)
    assert (cp["loaded"], cp["rows_done"], cp["row"]) == (25, 25, 25) and col.count() == 25
    assert sum(cp["tally"]["counts"].values()) == 25


def preparing_children() -> list:
    import psutil

    return [p for p in psutil.Process().children(recursive=True) if "runbook.ahead" in " ".join(p.cmdline())]


def test_a_load_prepared_in_a_second_process_is_the_same_load(export_dir, reference, tmp_path, monkeypatch):
    """The batches after the first are prepared in a second process: the same records, the same tally, the
    same checkpoints (a stop and a resume inside a shard included), and no process left behind."""
    monkeypatch.setattr(load, "FIRST_BATCH", 25)
    client, col = collection(tmp_path, export_dir)
    cp_path = tmp_path / "cp.json"
    added = []
    real_add = col.add

    def counting_add(**kw):
        added.append(len(kw["ids"]))
        return real_add(**kw)

    col.add = counting_add
    # the first batch here (25 rows); then batches of 40 there, from row 25 (the batch that holds it is cut)
    guard = stop_before(6)
    with pytest.raises(Stop):
        load.load_export(
            client,
            col,
            export_dir,
            cp_path,
            batch_size=40,
            progress=False,
            before_batch=guard,
            second_process=True,
        )
    assert guard.calls == [25, 15, 20, 40, 20, 40] and added == [25, 15, 20, 40, 20]
    cp = atomic.read_json(cp_path)
    assert (cp["shard"], cp["row"], cp["loaded"], col.count()) == (1, SHARD, 120, 120)
    assert sum(cp["tally"]["counts"].values()) == 120
    assert not preparing_children()
    res = load.load_export(
        client, col, export_dir, cp_path, batch_size=40, progress=False, second_process=True
    )
    assert (res.skipped_by_checkpoint, res.loaded_now) == (120, N - 120)
    assert snapshot(col) == reference[0] and res.tally.state() == reference[1]
    assert atomic.read_json(cp_path)["complete"] is True and not preparing_children()
    assert res.second_process_peak_rss_mb > 10  # reported by the child at its end
    # and on the page, beside this process's figures
    assert res.summary()["peak RSS MB (the second process, preparing batches)"] > 10


def test_a_load_larger_than_the_threshold_uses_a_second_process_by_itself(
    export_dir, reference, tmp_path, monkeypatch
):
    """Without ``second_process`` the load decides by its rows left: more than ``FIRST_BATCH + AHEAD_MIN_ROWS``."""
    monkeypatch.setattr(load, "FIRST_BATCH", 25)
    monkeypatch.setattr(load, "AHEAD_MIN_ROWS", N - 25 - 1)  # N rows left: one more than the threshold
    client, col = collection(tmp_path / "over", export_dir)
    res = load.load_export(client, col, export_dir, tmp_path / "over.json", batch_size=40, progress=False)
    assert res.second_process_peak_rss_mb is not None and snapshot(col) == reference[0]
    monkeypatch.setattr(load, "AHEAD_MIN_ROWS", N - 25)  # exactly the threshold: prepared here
    client, col = collection(tmp_path / "at", export_dir)
    res = load.load_export(client, col, export_dir, tmp_path / "at.json", batch_size=40, progress=False)
    assert res.second_process_peak_rss_mb is None and snapshot(col) == reference[0]
    assert not any("second process" in k for k in res.summary())


def test_a_preparation_process_that_is_killed_stops_the_load_naming_its_checkpoint(
    export_dir, reference, tmp_path
):
    """Killed (out of memory, by an operator) while the load runs: the load stops with the checkpoint it
    reached instead of waiting, and a re-run resumes there."""
    client, col = collection(tmp_path, export_dir)
    cp_path = tmp_path / "cp.json"
    real_add = col.add

    def add_then_kill(**kw):
        real_add(**kw)
        if col.count() == 50:
            for p in preparing_children():
                p.kill()

    col.add = add_then_kill
    with pytest.raises(load.LoadError) as err:
        load.load_export(client, col, export_dir, cp_path, batch_size=25, progress=False, second_process=True)
    cp = atomic.read_json(cp_path)
    assert "complete" not in cp and cp["loaded"] == col.count() >= 50
    assert str(err.value).startswith(
        "the process that prepares the load's next batches could not hand over its next item: it was killed "
        "(SIGKILL: the system's out-of-memory killer sends it, or an operator) ("
    )
    assert str(err.value).endswith(
        f"Nothing after the last checkpoint (shard {cp['shard']}, row {cp['row']}) is counted as loaded. Run phase "
        "03 again (it resumes there) and report this message if it repeats"
    )
    col.add = real_add
    res = load.load_export(
        client, col, export_dir, cp_path, batch_size=25, progress=False, second_process=True
    )
    assert res.loaded_now == N - cp["loaded"] and snapshot(col) == reference[0]


def test_a_shard_that_fails_in_the_preparation_process_reaches_the_caller_as_raised(export_dir, tmp_path):
    """An unreadable shard met by the second process: its error, as raised there, with where it was raised;
    the batches before it are checkpointed and the load is not complete."""
    import shutil

    import pyarrow as pa

    broken = tmp_path / "export"
    shutil.copytree(export_dir, broken)
    shard3 = broken / export_format.open_export(broken).shards[3]["chunks_file"]
    good = shard3.read_bytes()
    client, col = collection(tmp_path, broken)
    cp_path = tmp_path / "cp.json"
    real_add = col.add

    def add_then_break_shard_3(**kw):  # the load has read every id by now; the second process reads on
        shard3.write_bytes(b"not parquet at all")
        return real_add(**kw)

    col.add = add_then_break_shard_3
    with pytest.raises(pa.ArrowInvalid) as err:
        load.load_export(client, col, broken, cp_path, batch_size=25, progress=False, second_process=True)
    assert "raised in the process that prepares the load's next batches" in err.value.__notes__[0]
    cp = atomic.read_json(cp_path)
    assert "complete" not in cp and (cp["shard"], cp["row"], cp["loaded"], col.count()) == (
        2,
        SHARD,
        180,
        180,
    )
    assert not preparing_children()
    shard3.write_bytes(good)
    col.add = real_add
    res = load.load_export(client, col, broken, cp_path, batch_size=25, progress=False, second_process=True)
    assert res.loaded_now == N - 180 and col.count() == N


def test_a_shard_that_fails_mid_load_stops_it_and_the_load_is_not_complete(export_dir, tmp_path, monkeypatch):
    """What goes wrong while the next batch is read (an unreadable shard, a disk error) reaches the caller as
    it was raised; the batches before it are checkpointed and the load is not marked complete."""
    client, col = collection(tmp_path, export_dir)
    cp_path = tmp_path / "cp.json"
    real = load._prepare_batch
    calls = []

    def failing(batch, ctx, start):
        calls.append(start)
        if len(calls) == 3:
            raise OSError(errno.EIO, "Input/output error reading shard 0")
        return real(batch, ctx, start)

    monkeypatch.setattr(load, "_prepare_batch", failing)
    with pytest.raises(OSError, match="Input/output error reading shard 0"):
        load.load_export(client, col, export_dir, cp_path, batch_size=25, progress=False)
    cp = atomic.read_json(cp_path)
    assert "complete" not in cp and (cp["loaded"], cp["row"], col.count()) == (50, 50, 50)
    monkeypatch.undo()
    t0 = time.time()
    res = load.load_export(client, col, export_dir, cp_path, batch_size=25, progress=False)
    assert (res.collection, res.skipped_by_checkpoint, res.loaded_now, col.count()) == (
        "resume",
        50,
        N - 50,
        N,
    )
    assert 0 < res.seconds <= time.time() - t0  # what the result says the load took lies within the call
    assert atomic.read_json(cp_path)["complete"] is True


@pytest.fixture(scope="module")
def hostile_export(tmp_path_factory):
    """The hostile corpus (empty texts, a chunk id in two documents, odd vectors...) exported as phase 01 would."""
    return synthetic_export(
        corpus.build_hostile_corpus(), tmp_path_factory.mktemp("hostile"), key_env="RESUME_HOSTILE_KEY"
    )


def test_the_policy_asked_for_decides_every_record(hostile_export, tmp_path):
    """The load decides each record under the policy it is given, as an independent pass over the export
    (``planned_ids``) does: skipping empty texts and refusing reused ids loads fewer records than the default."""
    strict = records.Policy(empty_texts="skip", duplicate_chunk_ids="refuse")
    exp = export_format.open_export(hostile_export)
    # its vectors have two dimensions (the odd one is refused at load): the collection records the main one
    assert exp.manifest["embedding_dimension"] == [383, 384]
    assert chroma_target.provenance(exp, "hash")["dimension"] == 384
    got = {}
    for name, policy in (("default", records.Policy()), ("strict", strict)):
        client, col = collection(tmp_path / name, hostile_export, name=f"policy-{name}")
        res = load.load_export(
            client, col, hostile_export, tmp_path / f"{name}.json", progress=False, policy=policy
        )
        ids = set(col.get(include=[])["ids"])
        assert ids == load.planned_ids(export_format.open_export(hostile_export), policy), name
        # the load's account of every record, conversions included, equals verification's own pass
        v = load.verify_load(client, col, hostile_export, sample=5, recall_queries=2, policy=policy)
        assert res.tally.state() == v["tally"].state() and res.tally.metadata_rows(), name
        got[name] = (len(ids), res.tally.counts)
    assert got["strict"][0] < got["default"][0]
    assert got["strict"][1].get("skipped", 0) > got["default"][1].get("skipped", 0)
    assert got["strict"][1].get("refused", 0) > got["default"][1].get("refused", 0)


def test_a_full_disk_while_adding_is_said_as_a_full_disk(export_dir, tmp_path):
    client, col = collection(tmp_path, export_dir)
    refusing = Refusing(col, 1, OSError(errno.ENOSPC, "No space left on device"))
    with pytest.raises(disk.DiskFull) as err:
        load.load_export(
            client, refusing, export_dir, tmp_path / "cp.json", progress=False, chroma_path=tmp_path
        )
    assert err.value.path == str(tmp_path) and f"(holding {tmp_path})" in str(err.value)
    assert "No space left on device" in str(err.value) and isinstance(err.value.__cause__, OSError)
    assert not (tmp_path / "cp.json").exists() and col.count() == 0  # no batch went in, none is counted
    # a Chroma server's disk (no path here): said as the server's volume, no path made up
    refusing = Refusing(col, 1, OSError(errno.ENOSPC, "No space left on device"))
    with pytest.raises(disk.DiskFull) as err:
        load.load_export(client, refusing, export_dir, tmp_path / "cp2.json", progress=False)
    assert str(err.value).startswith("disk full: the volume Chroma writes to is full (Chroma said ")


class Bar:
    """Records what the loader tells its progress bar."""

    made: list = []

    def __init__(self, total=None, initial=0, desc="", unit=""):
        self.total, self.initial, self.desc, self.unit = total, initial, desc, unit
        self.updates, self.closed = [], False
        Bar.made.append(self)

    def update(self, n):
        self.updates.append(n)

    def close(self):
        self.closed = True


def test_the_progress_bar_of_a_resumed_load_starts_where_the_checkpoint_is(export_dir, tmp_path, monkeypatch):
    from runbook import display

    monkeypatch.setattr(display, "progress", Bar)
    Bar.made = []
    client, col = collection(tmp_path, export_dir)
    cp_path = tmp_path / "cp.json"
    with pytest.raises(Stop):
        load.load_export(client, col, export_dir, cp_path, batch_size=50, before_batch=stop_before(3))
    load.load_export(client, col, export_dir, cp_path, batch_size=50)
    first, second = Bar.made
    assert (first.total, first.initial, first.updates, first.closed) == (N, 0, [50, 10], True)
    assert (second.total, second.initial, second.closed) == (N, 60, True)
    assert second.updates == [50, 10, 50, 10, 50, 10, 50, 10] and second.unit == "chunk"
    assert "resume" in second.desc


@pytest.mark.parametrize("asked, used", [(0, 1), (1, 1), (-5, 1), (10**9, None)])
def test_the_batch_size_is_at_least_one_and_at_most_what_chroma_takes(export_dir, tmp_path, asked, used):
    """A batch of one is kept (each record checkpointed); nonsense is raised to one; more than the client's
    maximum batch is cut to it."""
    client, col = collection(tmp_path, export_dir)
    sizes = []
    res = load.load_export(
        client,
        col,
        export_dir,
        tmp_path / "cp.json",
        batch_size=asked,
        progress=False,
        before_batch=sizes.append,
    )
    used = used or int(client.get_max_batch_size())
    assert res.batch_size == used and res.loaded_now == N
    assert max(sizes) == min(used, SHARD)  # a batch never spans two shards


def test_a_checkpoint_written_before_collection_ids_were_recorded_is_resumed(export_dir, tmp_path):
    """Checkpoints of older versions name the collection but not its id: they are resumed, not restarted."""
    client, col = collection(tmp_path, export_dir)
    cp_path = tmp_path / "cp.json"
    with pytest.raises(Stop):
        load.load_export(
            client, col, export_dir, cp_path, batch_size=40, progress=False, before_batch=stop_before(3)
        )
    cp = atomic.read_json(cp_path)
    del cp["collection_id"], cp["rows_done"]  # neither was recorded then
    atomic.write_json(cp_path, cp)
    res = load.load_export(client, col, export_dir, cp_path, batch_size=40, progress=False)
    assert (res.skipped_by_checkpoint, res.loaded_now) == (60, N - 60) and col.count() == N  # 40, 20 | stop
    # rows counted from where the older checkpoint had no count: the rows this run went through
    assert atomic.read_json(cp_path)["rows_done"] == N - 60


def begun_under(policy, export_dir, tmp_path):
    """A load of 40 records under ``policy``, stopped before its second batch: (client, collection, checkpoint)."""
    client, col = collection(tmp_path, export_dir)
    cp_path = tmp_path / "cp.json"
    with pytest.raises(Stop):
        load.load_export(
            client,
            col,
            export_dir,
            cp_path,
            batch_size=40,
            progress=False,
            before_batch=stop_before(2),
            policy=policy,
        )
    return client, col, cp_path


def test_a_load_begun_under_one_policy_is_not_resumed_under_another(export_dir, tmp_path):
    """Records already loaded keep the treatment they had: a resume under another odd-records policy is
    refused, naming both; a checkpoint of an older version (no policy recorded) was the default policy."""
    skip = records.Policy(empty_texts="skip")
    default = records.Policy()
    client, col, cp_path = begun_under(skip, export_dir, tmp_path)
    with pytest.raises(load.LoadError) as e:
        load.load_export(client, col, export_dir, cp_path, batch_size=40, progress=False, policy=default)
    assert str(e.value) == (
        f"collection resume was loaded with {vars(skip)}, now asked for {vars(default)}: records already loaded "
        "would keep the old treatment. Load into a new collection (versioned_collection: true, or another "
        "collection_name), or set the policy back"
    )
    cp = atomic.read_json(cp_path)
    assert cp["policy"] == vars(skip) and cp["loaded"] == 40
    atomic.write_json(cp_path, {k: v for k, v in cp.items() if k != "policy"})
    # a checkpoint without a policy was the default's: refused under another, the message names the default
    with pytest.raises(load.LoadError) as e:
        load.load_export(client, col, export_dir, cp_path, batch_size=40, progress=False, policy=skip)
    assert str(e.value).startswith(
        f"collection resume was loaded with {vars(default)}, now asked for {vars(skip)}"
    )
    res = load.load_export(client, col, export_dir, cp_path, batch_size=40, progress=False, policy=default)
    assert (res.skipped_by_checkpoint, res.loaded_now) == (40, N - 40) and col.count() == N


def test_another_policy_is_refused_only_while_records_of_the_old_one_are_in_the_collection(
    export_dir, tmp_path
):
    """One record of the old policy left: refused. None left (emptied by hand): the load starts over under
    the new policy."""
    skip, default = records.Policy(empty_texts="skip"), records.Policy()
    client, col, cp_path = begun_under(skip, export_dir, tmp_path)
    ids = col.get()["ids"]
    col.delete(ids=ids[1:])
    with pytest.raises(load.LoadError, match="was loaded with"):
        load.load_export(client, col, export_dir, cp_path, batch_size=40, progress=False, policy=default)
    col.delete(ids=ids[:1])
    res = load.load_export(client, col, export_dir, cp_path, batch_size=40, progress=False, policy=default)
    assert (res.skipped_by_checkpoint, res.loaded_now) == (0, N) and col.count() == N
    assert atomic.read_json(cp_path)["policy"] == vars(default)


def test_a_load_begun_by_a_version_with_another_flat_format_is_not_resumed(export_dir, tmp_path):
    """Review: the flat metadata's form changed (a float Chroma would change keeps a number, its exact value
    beside it); a load an earlier version began (its checkpoint names no format) would have mixed the two."""
    client, col, cp_path = begun_under(records.Policy(), export_dir, tmp_path)
    cp = atomic.read_json(cp_path)
    assert cp["flat_format"] == records.FLAT_FORMAT and cp["loaded"] == 40
    atomic.write_json(cp_path, {k: v for k, v in cp.items() if k != "flat_format"})
    with pytest.raises(load.LoadError, match=r"begun by an earlier version .* \(flat format 1, now 2"):
        load.load_export(client, col, export_dir, cp_path, batch_size=40, progress=False)
    col.delete(ids=col.get()["ids"])  # none of the old form left: the load starts over in the new one
    res = load.load_export(client, col, export_dir, cp_path, batch_size=40, progress=False)
    assert (res.skipped_by_checkpoint, res.loaded_now) == (0, N) and col.count() == N
    assert atomic.read_json(cp_path)["flat_format"] == records.FLAT_FORMAT
