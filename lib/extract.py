"""Phase 01: take everything out of the source index into a checksummed, resumable export.

Read-only against the source (GET only). Documents are listed page by page; each page's chunks are
fetched with bounded concurrency; whole documents are grouped into shards that are committed
atomically. A killed export resumes from its committed shards; a document whose content changed
between runs is re-fetched whole; documents added or deleted while the export ran are reconciled by
listing the source again until two listings agree.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pandas  # noqa: F401 - pyarrow imports it on first table; pay that before timing starts

from . import atomic, credentials, export_format, records
from .export_format import ExportError
from .source import Source, find_pipeline, path_id


@dataclass
class ExportResult:
    path: Path
    manifest: dict
    fetched_documents: int = 0
    resumed_documents: int = 0
    refetched_documents: int = 0
    removed_documents: int = 0
    listing_passes: int = 0
    requests: int = 0
    seconds: float = 0.0
    events: list[str] = field(default_factory=list)
    plan: dict | None = None  # a dry run's plan (``plan_export``): nothing was exported

    @property
    def dry_run(self) -> bool:
        return self.plan is not None

    @property
    def title(self) -> str | None:
        return "dry run: the export phase 01 would write (nothing written)" if self.dry_run else None

    def summary(self) -> dict:
        if self.plan is not None:
            return self.plan
        m = self.manifest
        return {
            "export": str(self.path),
            "index": f"{m['index_name']} ({m['index_id']})",
            "documents": m["total_documents"],
            "chunks": m["total_chunks"],
            "source total_count": m["source_total_count"],
            "fetched now": self.fetched_documents,
            "resumed from earlier run": self.resumed_documents,
            "re-fetched (changed)": self.refetched_documents,
            "removed (deleted at source)": self.removed_documents,
            "listing passes": self.listing_passes,
            "vectors from cloud": m["embeddings"]["from_cloud"],
            "vectors missing": m["embeddings"]["missing"],
            "seconds": round(self.seconds, 1),
        }


def _slug(s: str) -> str:
    return re.sub(r"[^\w.-]+", "-", s, flags=re.UNICODE).strip("-")[:40] or "index"


class _Writer:
    """Buffers whole documents into shards; commits each shard atomically into the partial manifest."""

    def __init__(self, path: Path, header: dict, shard_rows: int):
        self.path = path
        self.shard_rows = shard_rows
        self.partial_path = path / "manifest.partial.json"
        if self.partial_path.exists():
            self.state = atomic.read_json(self.partial_path)
        else:
            self.state = {**header, "shards": []}
            atomic.write_json(self.partial_path, self.state)
        self._cleanup_orphans()
        self.buf_chunks: list[dict] = []
        self.buf_docs: list[dict] = []
        self.buf_refused: list[dict] = []  # committed with the shard of their document

    def _cleanup_orphans(self):
        named = {sh[k] for sh in self.state["shards"] for k in ("chunks_file", "documents_file")}
        for p in self.path.iterdir():
            if p.name.endswith(".tmp") or (p.suffix == ".parquet" and p.name not in named):
                p.unlink()

    def committed_documents(self) -> dict[str, tuple[str, int]]:
        """document id -> (content hash, shard index) for every committed document."""
        done = {}
        for sh in self.state["shards"]:
            t = export_format.read_table(self.path / sh["documents_file"], ["document_id", "content_sha256"])
            for row in t.to_pylist():
                done[row["document_id"]] = (row["content_sha256"], sh["index"])
        return done

    def add(self, doc_row: dict, chunk_rows: list[dict], refused: list[dict] = ()):
        self.buf_docs.append(doc_row)
        self.buf_chunks.extend(chunk_rows)
        self.buf_refused.extend(refused)
        if len(self.buf_chunks) >= self.shard_rows:
            self.flush()

    def refuse_document(self, doc_id: str, entries: list[dict]):
        refused = [x for x in self.state.get("refused", []) if x["document_id"] != doc_id]
        self.state["refused"] = refused + (
            entries
            or [
                {
                    "document_id": doc_id,
                    "chunk_id": None,
                    "problem": "document id has a lone surrogate (not valid Unicode text)",
                    "what to do": "fix the document at the source, then export again",
                }
            ]
        )
        self.state["refused_documents"] = sorted(
            {x["document_id"] for x in self.state["refused"] if "document id" in x["problem"]}
        )
        atomic.write_json(self.partial_path, self.state)

    def _next_index(self) -> int:
        return max((sh["index"] for sh in self.state["shards"]), default=-1) + 1

    def flush(self):
        if not self.buf_docs:
            return
        i = self._next_index()
        entry = self._write_pair(i, self.buf_docs, self.buf_chunks)
        self.state["shards"].append(entry)
        self.state.setdefault("refused", []).extend(self.buf_refused)
        atomic.write_json(self.partial_path, self.state)
        self.buf_docs, self.buf_chunks, self.buf_refused = [], [], []

    def _write_pair(self, i: int, docs: list[dict], chunks: list[dict], generation: int = 0) -> dict:
        suffix = f"-{generation}" if generation else ""
        cf, df = f"chunks-{i:05d}{suffix}.parquet", f"documents-{i:05d}{suffix}.parquet"
        c_sha = export_format.write_table_atomic(export_format.chunk_table(chunks), self.path / cf)
        d_sha = export_format.write_table_atomic(export_format.doc_table(docs), self.path / df)
        return {
            "index": i,
            "chunks_file": cf,
            "documents_file": df,
            "rows": len(chunks),
            "documents": len(docs),
            "chunks_sha256": c_sha,
            "documents_sha256": d_sha,
            "generation": generation,
        }

    def remove_documents(self, doc_ids: set[str]) -> int:
        """Rewrite the shards that hold these documents without them (new file names, then swap)."""
        removed = 0
        for pos, sh in enumerate(list(self.state["shards"])):
            docs = export_format.read_table(self.path / sh["documents_file"]).to_pylist()
            hit = [d for d in docs if d["document_id"] in doc_ids]
            if not hit:
                continue
            keep_docs = [d for d in docs if d["document_id"] not in doc_ids]
            chunks = [
                r
                for r in export_format.read_table(self.path / sh["chunks_file"]).to_pylist()
                if r["document_id"] not in doc_ids
            ]
            old = (sh["chunks_file"], sh["documents_file"])
            new = self._write_pair(sh["index"], keep_docs, chunks, sh.get("generation", 0) + 1)
            self.state["shards"][pos] = new
            atomic.write_json(self.partial_path, self.state)
            for f in old:  # read above, so there; gone only once the manifest names the new pair
                (self.path / f).unlink()
            removed += len(hit)
        self.state["shards"] = [s for s in self.state["shards"] if s["documents"] > 0]
        self.state["refused"] = [x for x in self.state.get("refused", []) if x["document_id"] not in doc_ids]
        atomic.write_json(self.partial_path, self.state)
        return removed

    def finalize(self, extra: dict) -> dict:
        self.flush()
        shards = self.state["shards"]
        manifest = {
            **self.state,
            **extra,
            "total_documents": sum(s["documents"] for s in shards),
            "total_chunks": sum(s["rows"] for s in shards),
        }
        manifest["embeddings"] = embedding_stats(self.path, shards)
        manifest["embedding_dimension"] = manifest["embeddings"]["dimension"]
        manifest["status"] = "complete"
        atomic.write_json(self.path / "manifest.json", manifest)
        self.partial_path.unlink(missing_ok=True)
        atomic.fsync_dir(self.path)
        return manifest


def embedding_stats(path: Path, shards: list[dict]) -> dict:
    import pyarrow.compute as pc

    cloud = computed = missing = 0
    dims: set[int] = set()
    models: set[str] = set()
    for sh in shards:
        t = export_format.read_table(path / sh["chunks_file"], ["embedding", "embedding_source"])
        src = t.column("embedding_source")
        cloud += pc.sum(pc.equal(src, "cloud")).as_py() or 0
        computed += pc.sum(pc.equal(src, "computed")).as_py() or 0
        missing += t.column("embedding").null_count
        lens = pc.unique(pc.list_value_length(t.column("embedding").drop_null())).to_pylist()
        dims.update(x for x in lens if x is not None)
    for sh in shards:
        if sh.get("embedding_model"):
            models.add(sh["embedding_model"])
    return {
        "from_cloud": cloud,
        "computed": computed,
        "missing": missing,
        "dimension": dims.pop() if len(dims) == 1 else (sorted(dims) if dims else None),
        "computed_with": sorted(models),
    }


class Chunks(list):
    """A document's served chunks (TextNode JSON), and ``finite``: whether they were read by orjson, which
    refuses NaN and Infinity, so their JSON parts are written without looking for them."""

    finite: bool = False


def fetch_chunks(src: Source, pipeline_id: str, doc_id: str) -> Chunks | None:
    import llama_cloud

    try:
        # the raw JSON (the client's retries still apply): building and dumping pydantic models for every
        # chunk would cost more CPU than the request itself at millions of chunks
        raw = src.client.pipelines.documents.with_raw_response.get_chunks(
            document_id=path_id(doc_id), pipeline_id=pipeline_id
        )
        # the body as bytes: read as Python's json reads a response (invalid UTF-8 is an error), by orjson
        # where that is exact
        nodes, finite = records.loads_checked(raw.http_response.content)
    except llama_cloud.NotFoundError:
        return None  # deleted since it was listed; reconciled by the next listing
    except llama_cloud.APIError as e:
        raise ExportError(
            f"fetching the chunks of document {doc_id!r} failed after the client's retries: "
            f"{credentials.scrub(str(e))[:300]}. Nothing committed is lost: run phase 01 again to resume."
        ) from None
    if not isinstance(nodes, list):
        raise ExportError(f"chunks of document {doc_id!r}: expected a JSON list, got {type(nodes).__name__}")
    out = Chunks(nodes)
    out.finite = finite
    return out


def _get_page(src: Source, pipeline_id: str, skip: int, limit: int) -> tuple[list, int | None, int]:
    raw = src.client.pipelines.documents.with_raw_response.list(
        pipeline_id=pipeline_id, skip=skip, limit=limit
    )
    page = raw.http_response.json()
    offset = page.get("offset") if page.get("offset") is not None else skip
    return page.get("documents") or [], page.get("total_count"), offset


def list_pages(src: Source, pipeline_id: str, page_size: int, prefetch: int = 0, known: tuple = ()):
    """Yield (documents, total_count) page by page, the way the official pager asks (skip, limit).

    With ``prefetch`` > 0, once the first page has told the total, up to ``prefetch`` later pages are requested
    at once (a listing of 200k documents is 2,000 round trips otherwise) and still yielded in order. The page
    length the server actually returned is the stride; a short page before the end falls back to plain
    paging from there, so a server that caps ``limit`` never makes the listing skip documents. ``known``:
    (stride, total) of an earlier listing: its later pages are asked for with the first, and used where the
    first page's stride asks for the same ones.
    """
    pool = ThreadPoolExecutor(max_workers=prefetch) if prefetch > 0 else None
    early: dict = {}
    pending: deque = deque()
    try:
        if pool is not None and known and known[0] > 0:
            early = {
                s: pool.submit(_get_page, src, pipeline_id, s, page_size)
                for s in range(known[0], known[1], known[0])[:prefetch]
            }
        docs, total, offset = _get_page(src, pipeline_id, 0, page_size)
        skip, step = offset + len(docs), len(docs)
        if pool is not None and step and total is not None and skip < total:
            starts = iter(range(skip, total, step))
            for start in starts:
                pending.append(
                    early.pop(start, None) or pool.submit(_get_page, src, pipeline_id, start, page_size)
                )
                if len(pending) >= prefetch:
                    break
            # the next pages are on their way while the caller works through the first: asked for only
            # after it, they came a third of the way into a 10k-chunk export
            yield docs, total
            while pending:
                docs, total, offset = pending.popleft().result()
                skip = offset + len(docs)
                short = len(docs) < step and skip < (total or 0)
                if short:
                    for f in pending:
                        f.cancel()
                    pending.clear()
                # the next page is asked for before this one is handed on, for the same reason
                elif (nxt := next(starts, None)) is not None:
                    pending.append(pool.submit(_get_page, src, pipeline_id, nxt, page_size))
                yield docs, total
                if short:
                    break  # a short page: continue plainly from where it ended
            else:
                return
        else:
            yield docs, total
        while docs and total is not None and skip < total:
            docs, total, offset = _get_page(src, pipeline_id, skip, page_size)
            yield docs, total
            skip = offset + len(docs)
    finally:
        for f in [*early.values(), *pending]:
            f.cancel()
        if pool is not None:
            pool.shutdown(wait=True)


def find_resumable(exports_dir: Path, pipeline_id: str) -> Path | None:
    for d in sorted(exports_dir.glob("*/manifest.partial.json"), reverse=True):
        if atomic.read_json(d).get("index_id") == pipeline_id:
            return d.parent
    return None


def _rows_of(d: dict, nodes: list[dict]) -> tuple[list[dict], list[dict]]:
    """Export rows of a document's chunks, and the chunks refused because no file could hold them (each
    named with its document and what to do). ``seq`` keeps the source's order, gaps included."""
    rows, refused = [], []
    doc_problem = None
    if not records.is_utf8(d["id"]):
        doc_problem = "document id has a lone surrogate (not valid Unicode text)"
    elif not records.is_utf8(d.get("text") or ""):
        refused.append(
            {
                "document_id": d["id"],
                "chunk_id": None,
                "problem": "document text has a lone surrogate: the document's own text is not stored "
                "(its chunks are checked one by one)",
                "what to do": "fix the document at the source; phase 07's delta sync picks it up",
            }
        )
    finite = getattr(nodes, "finite", False)
    for k, n in enumerate(nodes):
        row = export_format.node_to_row(d["id"], k, n, finite)
        why = doc_problem or export_format.unstorable(row)
        if why:
            refused.append(
                {
                    "document_id": d["id"],
                    "chunk_id": row["chunk_id"],
                    "problem": why,
                    "what to do": "fix the text at the source (it must be valid Unicode), then run phase 07's "
                    "delta sync or export again",
                }
            )
            continue
        rows.append(row)
    return rows, refused


def export_index(
    src: Source,
    exports_dir: str | os.PathLike,
    index_id: str = "",
    index_name: str = "",
    project_name: str = "Default",
    organization_id: str = "",
    export_id: str = "",
    concurrency: int = 8,
    page_size: int = 100,
    shard_rows: int = 20_000,
    max_listing_passes: int = 4,
    progress: bool = True,
) -> ExportResult:
    """Export (or resume exporting) the index to ``exports_dir/<export_id>``."""
    t0 = time.time()
    exports_dir = Path(exports_dir)
    exports_dir.mkdir(parents=True, exist_ok=True)
    project, pipeline = find_pipeline(src, index_id, index_name, project_name, organization_id)
    pid = pipeline.id
    if export_id:
        path = exports_dir / export_id
        if (path / "manifest.json").exists():
            raise ExportError(f"export {path} is already complete; choose a new export_id or leave it empty")
    else:
        path = find_resumable(exports_dir, pid) or exports_dir / (
            dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + _slug(pipeline.name)
        )
    path.mkdir(parents=True, exist_ok=True)
    import llama_cloud

    header = {
        "format": export_format.FORMAT,
        "export_id": path.name,
        "index_name": pipeline.name,
        "index_id": pid,
        "project": project.model_dump(mode="json"),
        "pipeline": pipeline.model_dump(mode="json", by_alias=True),
        "source_base_url": src.base_url or "default",
        "client_version": llama_cloud.__version__,
        "started_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    w = _Writer(path, header, shard_rows)
    result = ExportResult(path, {})
    done = w.committed_documents()
    result.resumed_documents = len(done)
    if done:
        result.events.append(
            f"resuming: {len(done)} document(s) already committed in {len(w.state['shards'])} shard(s)"
        )

    bar = None
    if progress:
        from .display import progress as tqdm

        bar = tqdm(desc="documents exported", unit="doc")
    pool = ThreadPoolExecutor(max_workers=max(1, concurrency))
    # the shard a listing pass leaves in the buffer is written while the next (confirming) listing is asked
    # for; the writer is touched again only after that write has ended (``settled``)
    writer_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shard-writer")
    writing: list = []

    def settled() -> _Writer:
        while writing:
            writing.pop().result()  # its error, if any, here
        return w

    stale: set[str] = set()  # committed ids whose content changed or that vanished: removed at the end
    exported: dict[str, str] = {
        d: h for d, (h, _) in done.items()
    }  # doc id -> content hash (committed or buffered)
    try:
        fetched_before = 0
        inflight: deque = deque()
        window = 4 * max(1, concurrency)

        def take(d, h, fut):
            nodes = fut.result()
            if nodes is None:
                listed.pop(d["id"], None)  # deleted since listed
                return
            rows, refused = _rows_of(d, nodes)
            settled()
            if not records.is_utf8(d["id"]):
                w.refuse_document(d["id"], refused)  # no file can hold its id: listed, not written
                exported[d["id"]] = h
                return
            doc_row = {
                "document_id": d["id"],
                "text": d["text"] if records.is_utf8(d["text"] or "") else None,
                "metadata_json": export_format.dumps(d.get("metadata") or {}),
                "content_sha256": h,
                "chunk_count": len(rows),
            }
            if d["id"] in stale:
                w.flush()
                w.remove_documents({d["id"]})  # the fresh copy replaces the stale one
                stale.discard(d["id"])
            w.add(doc_row, rows, refused)
            exported[d["id"]] = h
            result.fetched_documents += 1
            if bar is not None:
                bar.update(1)

        known: tuple = ()  # (stride, total) of the last listing
        for pass_no in range(1, max_listing_passes + 1):
            result.listing_passes = pass_no
            listed: dict[str, str] = {}
            total, known_stride = None, 0
            # a confirming listing mostly fetches nothing, so it may have as many pages in flight as pass 1 had
            # chunk requests (at most 16: with the chunk requests it stays within the client's connections);
            # it knows the last listing's stride and total
            ahead = min(4, concurrency) if pass_no == 1 else max(4, min(16, concurrency))
            for docs, total in list_pages(src, pid, page_size, prefetch=ahead, known=known):
                if docs and not known_stride:
                    known_stride = len(docs)
                if bar is not None and bar.total != total:
                    bar.total = total
                    bar.refresh()
                for d in docs:
                    if d["id"] in listed:
                        continue  # the listing shifted under us; the id is already handled
                    h = export_format.document_hash(d["text"], d.get("metadata") or {})
                    listed[d["id"]] = h
                    if exported.get(d["id"]) == h and d["id"] not in stale:
                        if bar is not None and pass_no == 1:
                            bar.update(1)
                        continue
                    if d["id"] in exported:
                        stale.add(d["id"])  # changed since committed: re-fetch whole, drop the old copy
                        result.refetched_documents += 1
                    # fetch while the listing goes on; results are taken in listing order
                    inflight.append((d, h, pool.submit(fetch_chunks, src, pid, d["id"])))
                    while len(inflight) > window:
                        take(*inflight.popleft())
            while inflight:
                take(*inflight.popleft())
            known = (known_stride, total) if known_stride and total else ()
            vanished = set(exported) - set(listed)
            if vanished:
                settled().flush()
                result.removed_documents += w.remove_documents(vanished)
                for d in vanished:
                    exported.pop(d, None)
                result.events.append(
                    f"pass {pass_no}: {len(vanished)} document(s) deleted at the source, removed"
                )
            changed = result.fetched_documents != fetched_before or bool(vanished)
            # complete when one whole listing found nothing to fetch or remove, and matches the source count
            if not changed and set(exported) == set(listed) and len(listed) == (total or 0):
                break
            fetched_before = result.fetched_documents
            if settled().buf_docs:  # written while the next listing is asked for (about 0.1 s at 10k chunks)
                writing.append(writer_pool.submit(w.flush))
            result.events.append(
                f"pass {pass_no}: {len(listed)} listed, {len(exported)} exported; listing again to confirm"
            )
        else:
            raise ExportError(
                f"the source kept changing during {max_listing_passes} listings; run phase 01 again"
            )
    finally:
        pool.shutdown(wait=True)
        writer_pool.shutdown(wait=True)  # a shard being written is finished, never left half-way
        if bar is not None:
            bar.close()
    manifest = settled().finalize(
        {
            "exported_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "source_total_count": total,
        }
    )
    refused_docs = len(manifest.get("refused_documents", []))
    if manifest["total_documents"] + refused_docs != total:
        raise ExportError(
            f"export has {manifest['total_documents']} documents (+{refused_docs} refused) but the source "
            f"reports {total}"
        )
    result.manifest = manifest
    result.seconds = time.time() - t0
    return result


def sequential_export_count(src: Source, pipeline_id: str, page_size: int = 100) -> int:
    """The baseline for the benchmark: one request at a time, nothing written. Returns chunks seen."""
    n = 0
    for docs, _ in list_pages(src, pipeline_id, page_size):
        for d in docs:
            nodes = fetch_chunks(src, pipeline_id, d["id"])
            n += len(nodes or [])
    return n


def handoff_data(export_dir: str | os.PathLike, spec, vector_norms: dict | None = None, policy=None) -> dict:
    """What phase 01 records for later phases about a complete, verified export."""
    exp = export_format.open_export(export_dir)
    m = exp.manifest
    return {
        "export_dir": str(exp.path),
        "export_id": m["export_id"],
        "manifest_sha256": exp.manifest_sha256,
        "index_id": m["index_id"],
        "index_name": m["index_name"],
        "total_documents": m["total_documents"],
        "total_chunks": m["total_chunks"],
        "embedding_dimension": m["embedding_dimension"],
        "embedding_model": spec.model_id,
        "embedding_spec": _spec_dict(spec),
        "vectors": m["embeddings"],
        "vector_norms": vector_norms,
        "policy": vars(policy) if policy is not None else None,  # what phase 01's listing assumed
    }


def _spec_dict(spec) -> dict:
    return {
        "provider": spec.provider,
        "model_name": spec.model_name,
        "dimension": spec.dimension,
        "api_key_env": spec.api_key_env,
        "api_base": spec.api_base,
    }


# ``reembed.choice()``: the pipeline's own model
_AUTO = {"provider": "auto", "model_name": "", "dimension": None, "api_key_env": "", "api_base": ""}


def _spec_or_none(embed: dict, pipeline_embedding: dict | None):
    """The model phase 01 would embed with (``embeddings.spec_from_params`` on ``embed``, see
    ``reembed.choice``); None for the pipeline's own model while the pipeline is unknown (``None``: no
    source reached)."""
    from . import embeddings

    if pipeline_embedding is None and (embed.get("provider") or "auto") == "auto":
        return None
    return embeddings.spec_from_params(**embed, pipeline_embedding_config=pipeline_embedding)


def _vectors_note(spec, allow_spend: bool) -> str:
    model = spec.model_id if spec is not None else "the pipeline's own model"
    note = f"from the cloud where served; otherwise computed with {model}"
    if spec is not None and spec.paid:
        note += " (paid: a real run shows the cost first" + (
            ")" if allow_spend else " and stops, allow_embedding_spend is false)"
        )
    return note


def plan_export(
    src: Source,
    exports_dir: str | os.PathLike,
    where: dict,
    export_id: str = "",
    embed: dict | None = None,
    allow_spend: bool = False,
) -> dict:
    """Dry run of phase 01: the export it would write, from read-only requests (the pipeline, one listing
    page, a sample's chunks). Nothing is written, not even the exports folder. The keys are those of
    ``handoff_data``; what only the export can tell is estimated or a placeholder in angle brackets.
    ``where``: ``source.index_ref``; ``embed``: ``reembed.choice`` (the pipeline's own model by default)."""
    from .preflight import PLANNED_MANIFEST_SHA256, describe_source

    exports_dir = Path(exports_dir)
    project, pipeline = find_pipeline(src, **where)
    info = describe_source(src, project, pipeline)
    if export_id:
        path = exports_dir / export_id
        if (path / "manifest.json").exists():
            raise ExportError(f"export {path} is already complete; choose a new export_id or leave it empty")
        action = "resume" if (path / "manifest.partial.json").exists() else "start"
    else:
        path = find_resumable(exports_dir, pipeline.id)
        action = "resume" if path else "start"
        path = path or exports_dir / f"<UTC start time of the real run>-{_slug(pipeline.name)}"
    pipeline_embedding = pipeline.model_dump(mode="json", by_alias=True).get("embedding_config") or {}
    spec = _spec_or_none(embed or _AUTO, pipeline_embedding)
    return {
        "action": f"{action} an export (GET requests only)",
        "export_dir": str(path),
        "export_id": path.name,
        "manifest_sha256": PLANNED_MANIFEST_SHA256,
        "index_id": pipeline.id,
        "index_name": pipeline.name,
        "project": project.name,
        "total_documents": info["documents"],
        "total_chunks": info["estimated chunks"],
        "chunks per document (sample)": info["chunks per document (sample)"],
        "embedding_dimension": spec.dimension,
        "embedding_model": spec.model_id,
        "embedding_spec": _spec_dict(spec),
        "vectors": _vectors_note(spec, allow_spend),
    }


def plan_without_source(
    src: Source, exports_dir: str | os.PathLike, where: dict, export_id: str = "", embed: dict | None = None
) -> dict:
    """``plan_export`` for a dry run that did not contact the source (``source.open_for``: no source named,
    no key): the same keys, with placeholders and None where only the source can tell."""
    from .preflight import NOT_REACHED, PLANNED_EXPORT_ID, PLANNED_MANIFEST_SHA256

    name = where.get("index_name") or where.get("index_id") or ""
    path = Path(exports_dir) / (
        export_id or f"<UTC start time of the real run>-{_slug(name) if name else 'index'}"
    )
    spec = _spec_or_none(embed or _AUTO, None)
    return {
        "action": f"none: the source was not contacted, {src.not_connected}",
        "export_dir": str(path),
        "export_id": export_id or PLANNED_EXPORT_ID,
        "manifest_sha256": PLANNED_MANIFEST_SHA256,
        "index_id": where.get("index_id") or NOT_REACHED,
        "index_name": where.get("index_name") or NOT_REACHED,
        "project": where.get("project_name"),
        "total_documents": None,
        "total_chunks": None,
        "chunks per document (sample)": None,
        "embedding_dimension": spec.dimension if spec is not None else None,
        "embedding_model": spec.model_id if spec is not None else NOT_REACHED,
        "embedding_spec": _spec_dict(spec) if spec is not None else None,
        "vectors": _vectors_note(spec, False),
    }


# ------------------------------------------------------------- the page's steps (real run or dry run)
# Each takes what the step before returned; in a dry run (an ``ExportResult`` with a ``plan``) a step that
# needs the export says it did not run instead.


def export_options(
    export_id: str = "", concurrency: int = 8, page_size: int = 100, shard_rows: int = 20_000
) -> dict:
    """How phase 01 exports (``export_index``'s keyword arguments), as one argument of ``export_step``."""
    return {
        "export_id": export_id,
        "concurrency": concurrency,
        "page_size": page_size,
        "shard_rows": shard_rows,
    }


def export_step(
    src: Source,
    where: dict,
    layout,
    how: dict,
    dry_run: bool,
    embed: dict | None = None,
    allow_spend: bool = False,
) -> ExportResult:
    """Export the index (``export_index`` into ``layout.exports``, logged to the migration log); a dry run
    plans it instead (``plan_export``, or ``plan_without_source`` when the source was not contacted) and
    returns an ``ExportResult`` holding the plan. ``where``: ``source.index_ref``; ``how``:
    ``export_options``; ``embed``: ``reembed.choice``."""
    if dry_run:
        if src.connected:
            plan = plan_export(src, layout.exports, where, how["export_id"], embed, allow_spend)
        else:
            plan = plan_without_source(src, layout.exports, where, how["export_id"], embed)
        return ExportResult(Path(plan["export_dir"]), {}, plan=plan)
    from . import runlog

    runlog.log(layout, "01_extract", "export started", index=where["index_id"] or where["index_name"])
    result = export_index(src, layout.exports, **where, **how)
    runlog.log(layout, "01_extract", "export complete", **{k: str(v) for k, v in result.summary().items()})
    return result


def embedding_spec(export: ExportResult, embed: dict):
    """The model phase 01 embeds with: the params' (``reembed.choice``) or, with ``auto``, the pipeline's
    own from the export's snapshot; a dry run's from its plan (None while the pipeline is unknown)."""
    from . import embeddings

    if export.dry_run:
        d = export.plan.get("embedding_spec")
        return embeddings.ModelSpec(**d) if d else None
    pipeline_embedding = export.manifest["pipeline"].get("embedding_config") or {}
    return embeddings.spec_from_params(**embed, pipeline_embedding_config=pipeline_embedding)


def reembed_plan(export: ExportResult, spec, cache_path: str, how: dict):
    """``reembed.plan`` for the export (``how``: ``reembed.options``), shown before any spend; None in a dry
    run (nothing exported to count)."""
    from . import reembed

    return None if export.dry_run else reembed.plan(export.path, spec, cache_path, **how)


def reembed_apply(
    export: ExportResult, spec, cache_path: str, how: dict, spend: dict, layout, plan=None
) -> dict:
    """Fill the vectors ``reembed_plan`` counted (``plan``, its result, not counted again; ``reembed.apply``;
    ``spend``: ``reembed.spending``), logged to the migration log; what it did, for the page
    (``reembed.outcome``). A dry run embeds nothing."""
    from . import reembed, runlog

    if export.dry_run:
        return _not_run("re-embedding", "embeds the chunks without a vector, after the plan above")
    done = reembed.apply(export.path, spec, cache_path, **how, **spend, planned=plan)
    runlog.log(layout, "01_extract", "vectors complete", model=spec.model_id, embedded=done["embedded"])
    return reembed.outcome(done)


def verify_step(export: ExportResult, src: Source, sample: int, policy):
    """``verify.verify_export`` of the export, on its own and against ``sample`` chunks re-fetched from the
    source; None in a dry run (nothing exported)."""
    from . import verify

    if export.dry_run:
        return None
    return verify.verify_export(export.path, source=src, sample=sample, policy=policy)


def _not_run(step: str, what_a_real_run_does: str) -> dict:
    return {step: "not run (dry run): nothing was exported", "a real run": what_a_real_run_does}


def show_verification(report) -> None:
    """The verification's checks (shown, not yet stopping the run: ``handoff_step`` does) and the
    reconciliation of every chunk of the source; in a dry run, one row saying it did not run."""
    from . import display

    if report is None:
        display.table(
            _not_run(
                "verification", "checksums, counts, vectors, ids, texts, metadata, and a re-fetched sample"
            )
        )
        return
    display.checks(report.checks, fail=False)
    display.table(report.reconciliation_frame(), "every chunk of the source accounted for")


def show_odd_records(report) -> None:
    """Every odd record of the export with what phase 03 will do with it, and the metadata converted for
    Chroma's flat metadata; in a dry run, one row saying they are listed once the export exists."""
    from . import display

    if report is None:
        display.table(_not_run("odd records", "lists every odd record of the export with its treatment"))
        return
    display.table(report.odd_frame(), "odd records and what phase 03 will do with each")
    display.table(report.metadata_frame(), "metadata converted reversibly in Chroma's flat metadata")


def show_issues(report) -> None:
    """The verification's issues, each with where and what to do (nothing when there are none)."""
    from . import display

    if report is not None and report.issues:
        display.table(report.issues_frame())


def show_charts(export: ExportResult) -> None:
    """The export's charts (chunks per document, text length, tokens); none in a dry run."""
    from . import charts, display

    if export.dry_run:
        return
    for fig in charts.export_figures(charts.export_frame(export.path)):
        display.show_figure(fig)


def handoff_step(export: ExportResult, spec, report, policy) -> dict:
    """What phase 01 hands on: a sound export's ``handoff_data`` (stops the run here, with the failed checks,
    if the verification found it unsound); a dry run's plan."""
    from . import display

    if export.dry_run:
        return export.plan
    display.checks(report.checks, show=False)
    return handoff_data(export.path, spec, report.norms, policy)
