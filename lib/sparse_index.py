"""The local side's sparse (BM25) index, beside Chroma: LlamaCloud retrieves hybrid (dense + sparse), and
Chroma 1.5.9 keeps no sparse index in a local collection, so the keyword half lives here.

One index is one folder (the caller picks it, e.g. ``<base>/sparse_index/<collection>/``)::

    meta.json        format, tokenizer (name, kiwipiepy version), counts, file sizes, created_at; written last
    chunks.parquet   chunk_id, document_id, text, metadata_json, relationships_json, node_extra_json,
                     start_char_idx, end_char_idx, tokens (list<string>): what updates need without
                     tokenising unchanged chunks again, and what ``node()`` rebuilds a TextNode from
    bm25/            a bm25s index (method "lucene", k1 1.5, b 0.75) over the token lists, in file order

Every write (build, upsert, delete) fills ``<folder>.tmp-<pid>`` and swaps it in: rename the old folder to
``<folder>.old-<pid>``, rename the new one in, remove the old one. A crash leaves the old index or the new
one, never a mix; the leftovers of a crashed write are cleaned (or, when the crash fell between the two
renames, the old index is put back) by the next write or open. Writers hold a lock file beside the folder
(``.<folder>.lock``), so two writers never interleave.

Tokens come from kiwipiepy (Korean morphological analysis, offline): see ``KoreanTokenizer``.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import hashlib
import math
import os
import re
import shutil
import threading
import time
import unicodedata
import uuid
import warnings
from collections import Counter
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from . import atomic, export_format, metadata_filters, records
from .errors import RunbookError

__all__ = [
    "FORMAT",
    "KoreanTokenizer",
    "SparseIndex",
    "SparseIndexError",
    "SparseRetriever",
    "build",
    "build_from_export",
    "hybrid_retriever",
    "open_index",
    "shared_kiwi",
]

FORMAT = "welno-runbook-sparse-index/1"
TOKENIZER_NAME = "kiwi-content-morphemes/1"
META_FILE = "meta.json"
CHUNKS_FILE = "chunks.parquet"
BM25_DIR = "bm25"
BM25_METHOD, BM25_K1, BM25_B = "lucene", 1.5, 0.75  # bm25s's defaults
SCHEMA = pa.schema(
    [
        ("chunk_id", pa.string()),
        ("document_id", pa.string()),
        ("text", pa.string()),
        ("metadata_json", pa.string()),
        ("relationships_json", pa.string()),
        ("node_extra_json", pa.string()),
        ("start_char_idx", pa.int64()),
        ("end_char_idx", pa.int64()),
        ("tokens", pa.list_(pa.string())),
    ]
)
_ROW_COLUMNS = [n for n in SCHEMA.names if n != "tokens"]
_EXPORT_COLUMNS = _ROW_COLUMNS  # the export's chunk shards have all of them
_MISSING_HINT = "run phase 03 to build it"


class SparseIndexError(RunbookError, RuntimeError):
    """The sparse index is missing, corrupt or was built by an incompatible tokenizer; the message names
    the folder and what to do."""


# ---------------------------------------------------------------------------------------------- tokenizer

_kiwi_lock = threading.Lock()
_kiwi = None
_kiwi_pid = None


def shared_kiwi():
    """The process's one ``kiwipiepy.Kiwi`` (made on first use, ~1 s and ~100 MB; made again in a forked
    child, whose copy of the parent's worker threads would not run)."""
    global _kiwi, _kiwi_pid
    pid = os.getpid()
    if _kiwi is None or _kiwi_pid != pid:
        with _kiwi_lock:
            if _kiwi is None or _kiwi_pid != pid:
                from kiwipiepy import Kiwi

                _kiwi = Kiwi()
                _kiwi_pid = pid
    return _kiwi


# Content morphemes kept as tokens. Nouns: NNG (common), NNP (proper), NR (numerals: 하나, 셋); NNB
# (bound nouns: 것, 수, 등, 때) are function-word-like and dropped. Verb and adjective stems VV, VA (tags
# such as "VV-I" for irregular conjugation count as VV); roots XR; foreign words SL; numbers SN; Chinese
# characters SH; UN (what kiwi could not analyse). Particles J*, endings E*, suffixes XS*, copulas VC*,
# auxiliaries VX, pronouns NP, determiners MM, adverbs MA*, interjections IC and symbols S* are dropped.
KEEP_TAGS = frozenset({"NNG", "NNP", "NR", "VV", "VA", "XR", "SL", "SN", "SH", "UN"})
_WHOLE_TAGS = frozenset({"W_URL", "W_EMAIL", "W_SERIAL"})  # kept whole: 2024-01-15, a@b.kr, https://...
_STRIP_TAGS = frozenset({"W_HASHTAG", "W_MENTION"})  # #당뇨 -> 당뇨
_CODE_TAGS = frozenset({"SL", "SN", "SH"})
_CODE_JOINERS = frozenset("-/._+·")
_NOUN_RUN_TAGS = frozenset({"XPN", "NNG", "NNP", "NR", "XR", "XSN"})
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")


def _norm(s: str) -> str:
    return _THOUSANDS.sub("", s.lower())


def _prep(text) -> str:
    """The text kiwi reads: NFKC (full-width ＬＤＬ -> LDL, ㎎ -> mg, m² -> m2, µ -> μ), lone surrogates
    replaced (kiwi takes Unicode text only)."""
    if text is None:
        return ""
    if not isinstance(text, str):
        text = str(text)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return unicodedata.normalize("NFKC", text)


class KoreanTokenizer:
    """``text -> list[str]``: lowercased content morphemes (``KEEP_TAGS``) plus two kinds of compounds,
    each emitted beside its parts:

    * codes: letters, digits and Greek letters written together, joined by nothing or by ``- / . _ + ·``
      (``LDL-C`` -> ``ldl-c``, ``ldl``; ``HbA1c`` -> ``hba1c``, ``hba``; ``γ-GTP`` -> ``γ-gtp``, ``gtp``;
      ``160mg`` -> ``160mg``, ``160``, ``mg``; ``T4`` -> ``t4``), so a query written either way shares
      tokens with the text. One-character pieces of a code are not tokens of their own (a lone ``C`` or
      ``1`` still is);
    * Korean noun compounds written without a space (``고혈압`` = 고/XPN + 혈압 -> ``고혈압``, ``혈압``;
      ``체질량지수`` -> ``체질량지수``, ``체``, ``질량``, ``지수``).

    A particle or ending never changes a token: tokens("당뇨병은") == tokens("당뇨병"). Numbers lose their
    thousands separators (``1,000`` -> ``1000``). One kiwi per process (``shared_kiwi``); calls are
    thread-safe.
    """

    name = TOKENIZER_NAME

    def __call__(self, text: str) -> list[str]:
        t = _prep(text)
        return self._from_kiwi(t, shared_kiwi().tokenize(t)) if t.strip() else []

    def tokenize_batch(self, texts: Iterable[str]) -> list[list[str]]:
        """Tokens of many texts at once (kiwi analyses an iterable of texts on its worker threads)."""
        prepped = [_prep(t) for t in texts]
        out: list[list[str]] = []
        for t, toks in zip(prepped, shared_kiwi().tokenize(prepped), strict=True):
            out.append(self._from_kiwi(t, toks))
        return out

    def info(self) -> dict:
        import kiwipiepy

        try:
            import kiwipiepy_model

            model = getattr(kiwipiepy_model, "__version__", None)
        except ImportError:  # pragma: no cover - the model ships with the package
            model = None
        return {
            "name": self.name,
            "kiwipiepy": kiwipiepy.__version__,
            "kiwipiepy_model": model,
            "model_type": getattr(shared_kiwi(), "model_type", None),
        }

    @staticmethod
    def _from_kiwi(text: str, toks) -> list[str]:
        items = [
            (t.tag.split("-")[0] if not t.tag.startswith("W_") else t.tag, t.form, t.start, t.end)
            for t in toks
        ]
        codes, quiet = _code_compounds(text, items)
        out: list[str] = []
        for k, (tag, form, _s, _e) in enumerate(items):
            if k in quiet:
                continue
            if tag in KEEP_TAGS:
                out.append(_norm(form))
            elif tag == "SW" and form.isalpha():  # Greek letters (γ, α, μ) kiwi files as symbols
                out.append(form.lower())
            elif tag in _WHOLE_TAGS:
                out.append(form.lower())
            elif tag in _STRIP_TAGS and len(form) > 1:
                out.append(_norm(form[1:]))
        out.extend(codes)
        out.extend(_noun_compounds(items))
        return [t for t in out if t]


def _is_code_piece(tag: str, form: str) -> bool:
    return tag in _CODE_TAGS or (tag == "SW" and form.isalpha())


def _code_compounds(text: str, items) -> tuple[list[str], set[int]]:
    """Runs of code pieces written together (no space; joiners only between two pieces): the compounds,
    and the positions of their one-character pieces, which are not tokens of their own (the ``c`` of
    ``LDL-C`` and of ``HbA1c``, the ``1`` of ``HbA1c`` would match each other and every ``C`` or ``1``)."""
    out: list[str] = []
    quiet: set[int] = set()
    i, n = 0, len(items)
    while i < n:
        tag, form, start, end = items[i]
        if not _is_code_piece(tag, form):
            i += 1
            continue
        pieces, run_end, j = [i], end, i + 1
        while j < n:
            t2, f2, s2, e2 = items[j]
            if s2 != run_end:
                break
            if _is_code_piece(t2, f2):
                pieces.append(j)
                run_end, j = e2, j + 1
                continue
            if f2 in _CODE_JOINERS and j + 1 < n:
                t3, f3, s3, e3 = items[j + 1]
                if s3 == e2 and _is_code_piece(t3, f3):
                    pieces.append(j + 1)
                    run_end, j = e3, j + 2
                    continue
            break
        if len(pieces) > 1:
            out.append(_norm(text[start:run_end]))
            quiet.update(k for k in pieces if len(items[k][1]) == 1)
        i = j
    return out, quiet


def _noun_compounds(items) -> list[str]:
    """Korean noun compounds: runs of noun-like morphemes written together (고+혈압, 체+질량+지수)."""
    out = []
    run: list[tuple[str, str]] = []
    run_end = None

    def flush():
        if len(run) > 1 and any(t in ("NNG", "NNP") for t, _ in run):
            out.append(_norm("".join(f for _, f in run)))

    for tag, form, start, end in items:
        noun_like = tag in _NOUN_RUN_TAGS and not (tag == "XSN" and form == "들")
        if noun_like and run and start == run_end:
            run.append((tag, form))
        else:
            flush()
            run = [(tag, form)] if noun_like else []
        run_end = end
    flush()
    return out


# ------------------------------------------------------------------------------------------ file helpers


def _lock_path(path: Path) -> Path:
    return path.parent / f".{path.name}.lock"


@contextlib.contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(_lock_path(path), "a+b") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _siblings(path: Path, kind: str) -> list[Path]:
    return sorted(path.parent.glob(f"{glob.escape(path.name)}.{kind}-*"), key=lambda p: p.stat().st_mtime)


def _recover(path: Path) -> None:
    """Under the writer lock: undo what a crashed write left. A crash between the two renames of a swap
    leaves no index but ``<path>.old-<pid>``: that old index is put back. Unfinished new folders
    (``.tmp-*``) and moved-away old ones (``.old-*``) are removed."""
    if not path.exists():
        olds = _siblings(path, "old")
        if olds:
            os.replace(olds[-1], path)
            atomic.fsync_dir(path.parent)
    for p in _siblings(path, "tmp") + _siblings(path, "old"):
        shutil.rmtree(p, ignore_errors=True)


def _fsync_tree(root: Path) -> None:
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        atomic.fsync_dir(Path(dirpath))


def _swap_in(tmp: Path, path: Path) -> None:
    """Rename ``tmp`` to ``path``; an existing ``path`` is moved away first and removed after (put back if
    the second rename fails)."""
    old = path.with_name(f"{path.name}.old-{os.getpid()}")
    had_old = path.exists()
    if had_old:
        os.replace(path, old)
    try:
        os.replace(tmp, path)
    except BaseException:
        if had_old:
            os.replace(old, path)
        raise
    atomic.fsync_dir(path.parent)
    if had_old:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def _writing(path: Path):
    """Lock, clean up after crashed writes, yield an empty ``<path>.tmp-<pid>``; on success fsync it and
    swap it in. On any error the temporary folder is removed and the index left as it was."""
    with _locked(path):
        _recover(path)
        tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        try:
            yield tmp
            _fsync_tree(tmp)
            _swap_in(tmp, path)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------------------------------------- the rows


def _utf8(s) -> bool:
    try:
        s.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def _source_rel(document_id: str) -> dict:
    return {"node_id": document_id}


def _row(r: dict) -> dict:
    """One input row (``chunk_id``, ``document_id``, ``text``, ``metadata`` dict or ``metadata_json``;
    optional ``relationships``/``relationships_json``, ``node_extra_json``, ``start_char_idx``,
    ``end_char_idx``) as a stored row without tokens. The relationships always name the document as the
    SOURCE (a node's ``ref_doc_id``)."""
    cid, doc = r.get("chunk_id"), r.get("document_id")
    if not isinstance(cid, str) or not cid:
        raise ValueError(f"chunk_id must be a non-empty string, got {cid!r}")
    if not isinstance(doc, str):
        raise ValueError(f"chunk {cid!r}: document_id must be a string, got {doc!r}")
    text = r.get("text")
    text = "" if text is None else text
    if not isinstance(text, str):
        raise ValueError(f"chunk {cid!r}: text must be a string, got {type(text).__name__}")
    if r.get("metadata_json") is not None:
        meta_json = r["metadata_json"]
        try:
            ok = isinstance(records.loads(meta_json), dict)
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise ValueError(f"chunk {cid!r}: metadata_json is not a JSON object")
    else:
        meta = r.get("metadata") or {}
        if not isinstance(meta, dict):
            raise ValueError(f"chunk {cid!r}: metadata must be a dict, got {type(meta).__name__}")
        meta_json = records.dumps(meta)
    if r.get("relationships_json") is not None:
        rels_json = r["relationships_json"]
        rels = records.loads(rels_json)
    else:
        rels = dict(r.get("relationships") or {})
        rels_json = None
    if not isinstance(rels, dict):
        raise ValueError(f"chunk {cid!r}: relationships must be a JSON object")
    if "1" not in rels:
        rels["1"] = _source_rel(doc)
        rels_json = None
    if rels_json is None:
        rels_json = records.dumps(rels)
    for name, v in (("chunk_id", cid), ("document_id", doc), ("text", text)):
        if not _utf8(v):
            raise ValueError(f"chunk {cid!r}: {name} has a lone surrogate (not valid Unicode text)")
    return {
        "chunk_id": cid,
        "document_id": doc,
        "text": text,
        "metadata_json": meta_json,
        "relationships_json": rels_json,
        "node_extra_json": r.get("node_extra_json"),
        "start_char_idx": r.get("start_char_idx"),
        "end_char_idx": r.get("end_char_idx"),
    }


def _tokenised_table(rows: list[dict], tokenizer) -> pa.Table:
    tokens = tokenizer.tokenize_batch([r["text"] for r in rows])
    cols = {n: [r[n] for r in rows] for n in _ROW_COLUMNS}
    cols["tokens"] = tokens
    return pa.Table.from_pydict(cols, schema=SCHEMA)


def _tables_of_rows(
    rows: Iterable[dict], tokenizer, batch_size: int, seen: set, progress=None
) -> Iterator[pa.Table]:
    buf: list[dict] = []
    for r in rows:
        row = _row(r)
        if row["chunk_id"] in seen:
            raise ValueError(f"chunk id {row['chunk_id']!r} given twice")
        seen.add(row["chunk_id"])
        buf.append(row)
        if len(buf) >= batch_size:
            yield _tokenised_table(buf, tokenizer)
            if progress is not None:
                progress.update(len(buf))
            buf = []
    if buf:
        yield _tokenised_table(buf, tokenizer)
        if progress is not None:
            progress.update(len(buf))


def _write_dir(tmp: Path, tables: Iterable[pa.Table], tokenizer, show_progress: bool, extra: dict) -> dict:
    """Write ``chunks.parquet`` from ``tables`` (streamed), the bm25s index over their tokens, then
    ``meta.json``. Token lists are held as lists of vocabulary ids (8 bytes a token), not strings."""
    import bm25s

    vocab: dict[str, int] = {}
    corpus: list[list[int]] = []
    docs: set[str] = set()
    n_tokens = 0
    with pq.ParquetWriter(tmp / CHUNKS_FILE, SCHEMA, compression="zstd") as w:
        for t in tables:
            if t.num_rows == 0:
                continue
            w.write_table(t)
            docs.update(t.column("document_id").to_pylist())
            for toks in t.column("tokens").to_pylist():
                corpus.append([vocab.setdefault(x, len(vocab)) for x in toks])
                n_tokens += len(toks)
    n_vocab = len(vocab)
    bm25_info = None
    if n_tokens:
        vocab.setdefault("", len(vocab))  # bm25s's empty token (queries without known tokens)
        bm = bm25s.BM25(k1=BM25_K1, b=BM25_B, method=BM25_METHOD)
        bm.index((corpus, vocab), show_progress=show_progress)
        bm.save(tmp / BM25_DIR, show_progress=False)
        bm25_info = {
            "library": "bm25s",
            "version": bm25s.__version__,
            "method": BM25_METHOD,
            "k1": BM25_K1,
            "b": BM25_B,
        }
    del corpus
    files = {str(p.relative_to(tmp)): p.stat().st_size for p in sorted(tmp.rglob("*")) if p.is_file()}
    meta = {
        "format": FORMAT,
        "tokenizer": tokenizer.info(),
        "bm25": bm25_info,
        "documents": len(docs),
        "chunks": pq.ParquetFile(tmp / CHUNKS_FILE).metadata.num_rows,
        "tokens": n_tokens,
        "vocabulary": n_vocab,
        "created_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "build_id": uuid.uuid4().hex,  # tells one version from the next (created_at has seconds only)
        "files": files,
        **extra,
    }
    atomic.write_json(tmp / META_FILE, meta)
    return meta


def _progress(show: bool, total: int | None, desc: str):
    if not show:
        return contextlib.nullcontext(None)
    from .display import progress

    return progress(total=total, desc=desc, unit="chunk")


# ------------------------------------------------------------------------------------------- the index


class _State:
    """One loaded version of the index. An update replaces the whole state at once, so a search running
    in another thread reads either the old version or the new one."""

    __slots__ = ("meta", "table", "bm25", "ids", "docs", "pos", "metas")

    def __init__(self, meta: dict, table: pa.Table, bm25):
        self.meta = meta
        self.table = table  # every column but tokens, in file order (= bm25 document order)
        self.bm25 = bm25  # None: no chunk has a token
        self.ids: list[str] = table.column("chunk_id").to_pylist()
        self.docs: list[str] = table.column("document_id").to_pylist()
        self.pos = {cid: i for i, cid in enumerate(self.ids)}
        self.metas: list[dict | None] = [None] * len(self.ids)  # parsed on first use by a filter

    def metadata(self, i: int) -> dict:
        m = self.metas[i]
        if m is None:
            m = records.loads(self.table.column("metadata_json")[i].as_py() or "{}")
            self.metas[i] = m
        return m

    def scores(self, tokens: Iterable[str]) -> np.ndarray | None:
        if self.bm25 is None:
            return None
        vocab = self.bm25.vocab_dict
        ids = [vocab[t] for t in dict.fromkeys(tokens) if t and t in vocab]
        if not ids:
            return None
        return self.bm25.get_scores_from_ids(ids)

    def rows(self, positions: list[int]) -> list[dict]:
        return self.table.take(pa.array(positions, type=pa.int64())).to_pylist()


def _corrupt(path: Path, why: str) -> SparseIndexError:
    return SparseIndexError(f"the sparse index at {path} is corrupt ({why}): {_MISSING_HINT} again")


def _checked_meta(path: Path, tokenizer: KoreanTokenizer, warn: bool = True) -> dict:
    """``meta.json`` of the index at ``path``, after checking its format, its tokenizer and the sizes of
    the files it names."""

    def corrupt(why: str) -> SparseIndexError:
        return _corrupt(path, why)

    try:
        meta = atomic.read_json(path / META_FILE)
    except ValueError as e:
        raise corrupt(f"meta.json unreadable: {e}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        fmt = meta.get("format") if isinstance(meta, dict) else None
        raise corrupt(f"format {fmt!r}, expected {FORMAT!r}")
    tk = meta.get("tokenizer") or {}
    if tk.get("name") != tokenizer.name:
        raise SparseIndexError(
            f"the sparse index at {path} was built with tokenizer {tk.get('name')!r}; this version "
            f"tokenises with {tokenizer.name!r}: {_MISSING_HINT} again"
        )
    import kiwipiepy

    if warn and tk.get("kiwipiepy") != kiwipiepy.__version__:
        warnings.warn(
            f"the sparse index at {path} was tokenised with kiwipiepy {tk.get('kiwipiepy')}, this "
            f"process has {kiwipiepy.__version__}: some query tokens may differ (rebuild in phase 03)",
            stacklevel=3,
        )
    for rel, size in (meta.get("files") or {}).items():
        got = (path / rel).stat().st_size
        if got != size:
            raise corrupt(f"{rel} has {got} bytes, meta.json says {size}")
    return meta


def _read_state(path: Path, tokenizer: KoreanTokenizer) -> _State:
    """Load and check one version of the index at ``path``."""
    import bm25s

    def corrupt(why: str) -> SparseIndexError:
        return _corrupt(path, why)

    meta = _checked_meta(path, tokenizer)
    try:
        table = pq.read_table(path / CHUNKS_FILE, columns=_ROW_COLUMNS)
    except FileNotFoundError:
        raise
    except (pa.ArrowException, OSError) as e:
        raise corrupt(f"{CHUNKS_FILE}: {e}") from None
    if table.num_rows != meta.get("chunks"):
        raise corrupt(f"{CHUNKS_FILE} has {table.num_rows} rows, meta.json says {meta.get('chunks')}")
    bm = None
    if meta.get("bm25"):
        try:
            bm = bm25s.BM25.load(path / BM25_DIR, mmap=False, load_vocab=True, show_progress=False)
        except FileNotFoundError:
            raise
        except (ValueError, OSError, KeyError) as e:
            raise corrupt(f"{BM25_DIR}/: {e}") from None
        if bm.scores.get("num_docs") != table.num_rows:
            raise corrupt(
                f"the BM25 index has {bm.scores.get('num_docs')} documents, {table.num_rows} chunks"
            )
    return _State(meta, table, bm)


class SparseIndex:
    """A BM25 index of chunks, persisted in a folder (see the module docstring). Make one with
    ``SparseIndex.build`` / ``build_from_export``, read one with ``SparseIndex.open``. Searching from
    several threads is safe, also while one of them updates the index."""

    def __init__(self, path: Path, state: _State, tokenizer: KoreanTokenizer):
        self.path = path
        self.tokenizer = tokenizer
        self._st = state

    @property
    def meta(self) -> dict:
        return self._st.meta

    # ---- making and opening

    @classmethod
    def build(
        cls,
        path: str | os.PathLike,
        rows: Iterable[dict],
        show_progress: bool = False,
        *,
        tokenizer: KoreanTokenizer | None = None,
        batch_size: int = 512,
        _extra: dict | None = None,
        _total: int | None = None,
    ) -> SparseIndex:
        """Tokenise ``rows`` (dicts with ``chunk_id``, ``document_id``, ``text``, ``metadata``; see ``_row``)
        and write a new index at ``path``, replacing any index there atomically. Chunk ids must be unique."""
        path = Path(path)
        tok = tokenizer or KoreanTokenizer()
        extra = _extra if _extra is not None else {}
        total = len(rows) if hasattr(rows, "__len__") else _total
        with _writing(path) as tmp, _progress(show_progress, total, "sparse index: tokenising") as bar:
            _write_dir(tmp, _tables_of_rows(rows, tok, batch_size, set(), bar), tok, show_progress, extra)
        return cls.open(path, tokenizer=tok)

    @classmethod
    def build_from_export(
        cls,
        path: str | os.PathLike,
        export_dir: str | os.PathLike,
        show_progress: bool = False,
        chunk_ids: set[str] | None = None,
        *,
        batch_size: int = 512,
    ) -> SparseIndex:
        """Build from an export folder, streaming its chunk shards. ``chunk_ids``: index only these (the
        chunks the loader put into Chroma); None indexes every chunk. A chunk id seen again later in the
        export is skipped (the first in export order keeps it, as the loader does); rows without an id
        too. The counts skipped are in ``meta["source"]``."""
        exp = export_format.open_export(export_dir)
        skipped = {"not_loaded": 0, "duplicate_id": 0, "no_id": 0}
        extra = {
            "source": {
                "export": str(Path(export_dir).resolve()),
                "index_id": exp.manifest.get("index_id"),
                "exported_at": exp.manifest.get("exported_at"),
                "restricted_to_chunk_ids": chunk_ids is not None,
                "skipped": skipped,
            },
        }
        total = len(chunk_ids) if chunk_ids is not None else exp.manifest.get("total_chunks")

        def rows():
            seen: set[str] = set()
            for batch in exp.iter_chunk_batches(columns=_EXPORT_COLUMNS, batch_size=4096):
                for r in batch.to_pylist():
                    cid = r["chunk_id"]
                    if not isinstance(cid, str) or not cid:
                        skipped["no_id"] += 1
                    elif chunk_ids is not None and cid not in chunk_ids:
                        skipped["not_loaded"] += 1
                    elif cid in seen:
                        skipped["duplicate_id"] += 1
                    else:
                        seen.add(cid)
                        yield r

        return cls.build(path, rows(), show_progress, batch_size=batch_size, _extra=extra, _total=total)

    @classmethod
    def open(cls, path: str | os.PathLike, *, tokenizer: KoreanTokenizer | None = None) -> SparseIndex:
        """Read the index at ``path``. Raises ``SparseIndexError`` naming the folder when it is missing,
        corrupt, or was made by another tokenizer."""
        path = Path(path)
        if not (path / META_FILE).exists() and _siblings(path, "old"):
            with _locked(path):  # a write crashed (or is finishing) between its two renames
                _recover(path)
        for attempt in range(2):
            try:
                return cls._load(path, tokenizer or KoreanTokenizer())
            except FileNotFoundError:
                if attempt or not (path / META_FILE).exists():
                    raise SparseIndexError(
                        f"no sparse index at {path} (meta.json or a file it names is missing): "
                        f"{_MISSING_HINT}"
                    ) from None
                time.sleep(0.2)  # swapped by a writer while being read: read the new one
        raise AssertionError("unreachable")

    @classmethod
    def _load(cls, path: Path, tokenizer: KoreanTokenizer) -> SparseIndex:
        return cls(path, _read_state(path, tokenizer), tokenizer)

    def _reload(self) -> None:
        self._st = _read_state(self.path, self.tokenizer)

    # ---- reading

    def __len__(self) -> int:
        return len(self._st.ids)

    def __contains__(self, chunk_id) -> bool:
        return chunk_id in self._st.pos

    def query_tokens(self, query: str) -> list[str]:
        """The query's tokens, each once, in order."""
        return list(dict.fromkeys(self.tokenizer(query)))

    def search(self, query: str, top_k: int = 10, filters=None) -> list[tuple[str, float]]:
        """The ``top_k`` best chunks for ``query`` as (chunk_id, BM25 score), best first (ties in index
        order). Chunks whose metadata fail ``filters`` (``MetadataFilters`` or a LlamaCloud
        ``search_filters`` dict) are left out before the cut; chunks sharing no token with the query
        (score 0) are never returned, so fewer than ``top_k`` may come back."""
        return self.search_tokens(self.query_tokens(query), top_k, filters)

    def search_tokens(self, tokens: Iterable[str], top_k: int = 10, filters=None) -> list[tuple[str, float]]:
        """``search`` for a query given as tokens (already tokenised)."""
        st = self._st
        return [(st.ids[i], s) for i, s in self._hits(st, tokens, top_k, filters)]

    def search_nodes(self, query: str, top_k: int = 10, filters=None) -> list[tuple[object, float]]:
        """``search``, with each chunk as a ``TextNode`` (read from the same version of the index)."""
        st = self._st
        hits = self._hits(st, self.query_tokens(query), top_k, filters)
        rows = st.rows([i for i, _ in hits])
        return [(export_format.row_to_llama_node(r), s) for r, (_, s) in zip(rows, hits, strict=True)]

    @staticmethod
    def _hits(st: _State, tokens, top_k, filters) -> list[tuple[int, float]]:
        keep = metadata_filters.predicate(filters) if filters else None  # raises on a bad operator first
        if top_k is None or top_k <= 0:
            return []
        scores = st.scores(tokens)
        if scores is None:
            return []
        cand = np.flatnonzero(scores > 0)
        order = cand[np.argsort(-scores[cand], kind="stable")]
        out: list[tuple[int, float]] = []
        for i in order.tolist():
            if keep is not None and not keep(st.metadata(i)):
                continue
            out.append((i, float(scores[i])))
            if len(out) >= top_k:
                break
        return out

    def node(self, chunk_id: str):
        """The chunk as a LlamaIndex ``TextNode`` (id, text, metadata, relationships with the document as
        SOURCE, so ``ref_doc_id`` is the document id), equal to the node Chroma serves for it."""
        return self.nodes([chunk_id])[0]

    def nodes(self, chunk_ids: Iterable[str]) -> list:
        st = self._st
        ids = list(chunk_ids)
        missing = [c for c in ids if c not in st.pos]
        if missing:
            raise KeyError(f"not in the sparse index at {self.path}: {missing[:5]!r}")
        return [export_format.row_to_llama_node(r) for r in st.rows([st.pos[c] for c in ids])]

    def document_ids(self) -> list[str]:
        return sorted(set(self._st.docs))

    def chunk_ids(self) -> list[str]:
        return list(self._st.ids)

    def stats(self) -> dict:
        st = self._st
        size = sum(p.stat().st_size for p in self.path.rglob("*") if p.is_file())
        return {
            "path": str(self.path),
            "documents": len(set(st.docs)),
            "chunks": len(st.ids),
            "vocabulary": st.meta.get("vocabulary", 0),
            "tokens": st.meta.get("tokens", 0),
            "bytes": size,
            "tokenizer": (st.meta.get("tokenizer") or {}).get("name"),
            "created_at": st.meta.get("created_at"),
        }

    # ---- updating

    def upsert_documents(
        self,
        rows: Iterable[dict],
        document_ids: Iterable[str] | None = None,
        show_progress: bool = False,
    ) -> dict:
        """Replace every chunk of each document the rows name (and of each id in ``document_ids``, which
        may name documents that now have no chunks) by the given rows; stored chunks keep their tokens
        (only the given rows are tokenised). Atomic like ``build``. Returns document counts
        ``{added, replaced, deleted}`` (deleted: named in ``document_ids``, present, and given no rows)
        and chunk counts ``chunks_added``, ``chunks_removed``."""
        new = [_row(r) for r in rows]
        seen: set[str] = set()
        for r in new:
            if r["chunk_id"] in seen:
                raise ValueError(f"chunk id {r['chunk_id']!r} given twice")
            seen.add(r["chunk_id"])
        given_docs = {r["document_id"] for r in new}
        targets = given_docs | set(document_ids or ())
        if not targets:
            return {"added": 0, "replaced": 0, "deleted": 0, "chunks_added": 0, "chunks_removed": 0}
        new_table = _tokenised_table(new, self.tokenizer) if new else None
        res = self._rewrite(targets, new_table, seen, show_progress)
        present = res.pop("present")
        res.update(
            added=len(given_docs - present),
            replaced=len(given_docs & present),
            deleted=len((targets - given_docs) & present),
            chunks_added=len(new),
        )
        return res

    def delete_documents(self, doc_ids: Iterable[str], show_progress: bool = False) -> dict:
        """Remove every chunk of these documents (ids not in the index are ignored). Atomic like
        ``build``. Returns the counts ``upsert_documents`` does (nothing added or replaced)."""
        targets = set(doc_ids)
        if not targets & set(self._st.docs) and not self._stale():
            return {"added": 0, "replaced": 0, "deleted": 0, "chunks_added": 0, "chunks_removed": 0}
        res = self._rewrite(targets, None, set(), show_progress)
        present = res.pop("present")
        res.update(added=0, replaced=0, deleted=len(targets & present), chunks_added=0)
        return res

    def _stale(self) -> bool:
        try:
            return atomic.read_json(self.path / META_FILE).get("build_id") != self.meta.get("build_id")
        except (OSError, ValueError):
            return True

    def _rewrite(
        self, targets: set[str], new_table: pa.Table | None, new_ids: set[str], show_progress
    ) -> dict:
        """Write the index on disk (read under the lock: another process may have changed it since this
        object was opened) minus the chunks of ``targets``, plus ``new_table``; then reload."""
        present: set[str] = set()
        removed = 0
        target_arr = pa.array(sorted(targets), type=pa.string())

        def tables():
            nonlocal removed
            with pq.ParquetFile(self.path / CHUNKS_FILE) as pf:
                for batch in pf.iter_batches(batch_size=4096):
                    t = pa.Table.from_batches([batch], schema=SCHEMA)
                    hit = pc.is_in(t.column("document_id"), value_set=target_arr)
                    present.update(pc.unique(t.column("document_id").filter(hit)).to_pylist())
                    removed += pc.sum(hit).as_py() or 0
                    kept = t.filter(pc.invert(hit))
                    if new_ids:
                        clash = set(kept.column("chunk_id").to_pylist()) & new_ids
                        if clash:
                            raise ValueError(
                                f"chunk ids already used by other documents in the sparse index: "
                                f"{sorted(clash)[:5]!r}"
                            )
                    yield kept
            if new_table is not None:
                yield new_table

        with _writing(self.path) as tmp:
            try:
                current = _checked_meta(self.path, self.tokenizer, warn=False)  # the index as it is now
            except FileNotFoundError:
                raise SparseIndexError(f"no sparse index at {self.path} any more: {_MISSING_HINT}") from None
            _write_dir(tmp, tables(), self.tokenizer, show_progress, _carried_meta(current))
        self._reload()
        return {"present": present, "chunks_removed": removed}

    # ---- checking

    def verify(
        self,
        expected_documents: int,
        expected_chunks: int,
        probes: int = 20,
        *,
        expected_chunk_ids: Iterable[str] | None = None,
        top: int = 10,
    ) -> list[dict]:
        """Check rows ``{check, ok, detail}``: the document and chunk counts equal the expected ones (with
        ``expected_chunk_ids``, the detail names the chunks missing or extra); the files agree with each
        other; and for ``probes`` chunks (a deterministic sample: the smallest blake2b of the chunk id),
        the chunk's text tokenised now has no token the index lacks, and a query of its 3 rarest tokens
        ranks it in the top ``top`` (ties count as in): the rows, the BM25 index and the tokenizer agree.
        A chunk that no 3 terms can single out (even its rarest are in more than ``top`` chunks: boilerplate,
        near-duplicates) passes when its BM25 score equals the one recomputed from its own tokens."""
        st = self._st
        rows = []
        n_docs, n_chunks = len(set(st.docs)), len(st.ids)
        rows.append(
            {
                "check": "documents in the sparse index",
                "ok": n_docs == expected_documents,
                "detail": f"{n_docs} documents, expected {expected_documents}",
            }
        )
        detail = f"{n_chunks} chunks, expected {expected_chunks}"
        ok = n_chunks == expected_chunks
        if expected_chunk_ids is not None:
            want = set(expected_chunk_ids)
            have = set(st.ids)
            missing, extra = sorted(want - have), sorted(have - want)
            ok = ok and not missing and not extra
            if missing:
                detail += f"; missing {len(missing)}: {', '.join(map(repr, missing[:10]))}"
            if extra:
                detail += f"; not expected {len(extra)}: {', '.join(map(repr, extra[:10]))}"
        rows.append({"check": "chunks in the sparse index", "ok": ok, "detail": detail})

        tok_col = pq.read_table(self.path / CHUNKS_FILE, columns=["tokens"]).column("tokens")
        lengths = pc.list_value_length(tok_col).to_numpy(zero_copy_only=False)
        n_tok = int(lengths.sum())
        agree = tok_col.length() == n_chunks and n_tok == st.meta.get("tokens")
        if st.bm25 is not None:
            agree = agree and st.bm25.scores["num_docs"] == n_chunks
        rows.append(
            {
                "check": "index files agree",
                "ok": bool(agree),
                "detail": f"{n_chunks} rows, {n_tok} tokens, "
                f"{st.bm25.scores['num_docs'] if st.bm25 is not None else 0} BM25 documents",
            }
        )

        probe_pos = [i for i in range(n_chunks) if lengths[i] > 0]
        probe_pos.sort(key=lambda i: hashlib.blake2b(st.ids[i].encode("utf-8"), digest_size=8).digest())
        probe_pos = probe_pos[: max(0, probes)]
        if not probe_pos or st.bm25 is None:
            texts = st.table.column("text")
            has_text = n_chunks > 0 and bool(pc.any(pc.match_substring_regex(texts, r"[\pL\pN]")).as_py())
            rows.append(
                {
                    "check": "term queries that must hit",
                    "ok": probes <= 0 or not has_text,  # words, yet no token at all: the tokenizer failed
                    "detail": "empty index: nothing to probe"
                    if not n_chunks
                    else "no chunk has tokens to probe"
                    + (": some chunks have words, so the tokenizer failed" if has_text else ""),
                }
            )
            return rows
        vocab = st.bm25.vocab_dict
        df = np.diff(np.asarray(st.bm25.scores["indptr"]))
        texts = [r["text"] for r in st.rows(probe_pos)]
        misses: list[str] = []
        vague = 0  # probes whose rarest terms are in more than `top` chunks (boilerplate, near-duplicates)
        avg_len = n_tok / n_chunks
        for pos, tk in zip(probe_pos, self.tokenizer.tokenize_batch(texts), strict=True):
            name = f"chunk {st.ids[pos]!r} (document {st.docs[pos]!r}"
            unknown = sorted({t for t in tk if t not in vocab})
            if unknown:  # the text does not tokenise as it did at build: another tokenizer, or rows moved
                misses.append(f"{name}): its text has tokens the index lacks {unknown[:5]!r}")
                continue
            query = sorted(set(tk), key=lambda t: (int(df[vocab[t]]), t))[:3]
            scores = st.scores(query)
            s = float(scores[pos]) if scores is not None else 0.0
            rank = int((scores > s).sum()) if scores is not None else n_chunks
            if s > 0 and rank < top:
                continue
            # Not in the top: a failure, unless the chunk cannot be singled out by these terms (each is in
            # more than `top` chunks) and its score is exactly what its own tokens give (BM25 recomputed).
            want = _bm25_score(query, tk, {t: int(df[vocab[t]]) for t in query}, n_chunks, avg_len)
            if min(int(df[vocab[t]]) for t in query) > top and math.isclose(s, want, rel_tol=1e-3):
                vague += 1
                continue
            why = "not found" if s <= 0 else f"ranked {rank + 1}"
            if s > 0 and not math.isclose(s, want, rel_tol=1e-3):
                why += f", score {s:.4g} where its tokens give {want:.4g}"
            misses.append(f"{name}, terms {query!r}): {why}")
        n_p = len(probe_pos)
        if misses:
            detail = f"{len(misses)} of {n_p} sampled chunks missed: " + "; ".join(misses[:10])
        else:
            detail = f"{n_p - vague}/{n_p} sampled chunks in the top {top} for their 3 rarest terms"
            if vague:
                detail += (
                    f"; {vague} not distinctive (even their rarest terms are in more than {top} chunks), "
                    "their scores equal to what their tokens give"
                )
        rows.append({"check": "term queries that must hit", "ok": not misses, "detail": detail})
        return rows


def _bm25_score(query: list[str], doc_tokens: list[str], df: dict, n_docs: int, avg_len: float) -> float:
    """BM25 (Lucene variant, as bm25s computes it) of a document given by its tokens, for ``query``."""
    tf = Counter(doc_tokens)
    norm = BM25_K1 * ((1 - BM25_B) + BM25_B * len(doc_tokens) / avg_len)
    return sum(
        math.log(1 + (n_docs - df[t] + 0.5) / (df[t] + 0.5)) * tf[t] / (norm + tf[t]) for t in query if tf[t]
    )


def _carried_meta(meta: dict) -> dict:
    """What an update keeps of the previous meta.json (where the chunks first came from)."""
    return {k: meta[k] for k in ("source",) if k in meta}


def build(path, rows, show_progress: bool = False, **kw) -> SparseIndex:
    return SparseIndex.build(path, rows, show_progress, **kw)


def build_from_export(path, export_dir, show_progress: bool = False, chunk_ids=None, **kw) -> SparseIndex:
    return SparseIndex.build_from_export(path, export_dir, show_progress, chunk_ids, **kw)


def open_index(path) -> SparseIndex:
    return SparseIndex.open(path)


# ---------------------------------------------------------------------------------------------- retrievers


try:  # llama-index is installed with the project; keep the import lazy-safe for the class statement
    from llama_index.core.retrievers import BaseRetriever as _BaseRetriever
except ImportError:  # pragma: no cover
    _BaseRetriever = object


class SparseRetriever(_BaseRetriever):
    """A LlamaIndex retriever over a ``SparseIndex``: ``NodeWithScore(TextNode, BM25 score)``, best first.
    ``filters``: a ``MetadataFilters`` (or LlamaCloud ``search_filters`` dict) applied before the cut."""

    def __init__(
        self,
        index: SparseIndex | str | os.PathLike,
        similarity_top_k: int = 10,
        filters=None,
        callback_manager=None,
        verbose: bool = False,
        nodes_from=None,
    ):
        """``nodes_from(chunk_ids) -> nodes``: where the returned nodes come from (the Chroma collection, so
        a chunk found by both sides of a hybrid search is the very same node); default: the index's own."""
        self.nodes_from = nodes_from
        if not isinstance(index, SparseIndex):
            index = SparseIndex.open(index)
        if not isinstance(similarity_top_k, int) or similarity_top_k < 1:
            raise ValueError(f"similarity_top_k must be a positive integer, got {similarity_top_k!r}")
        metadata_filters.predicate(filters)  # an unknown operator fails here, not at the first query
        self.index = index
        self.similarity_top_k = similarity_top_k
        self.filters = filters
        super().__init__(callback_manager=callback_manager, verbose=verbose)

    def _retrieve(self, query_bundle):
        from llama_index.core.schema import NodeWithScore

        if self.nodes_from is not None:
            found = self.index.search(query_bundle.query_str, self.similarity_top_k, self.filters)
            nodes = self.nodes_from([cid for cid, _ in found])
            return [NodeWithScore(node=n, score=s) for n, (_, s) in zip(nodes, found, strict=True)]
        hits = self.index.search_nodes(query_bundle.query_str, self.similarity_top_k, self.filters)
        return [NodeWithScore(node=n, score=s) for n, s in hits]


def _same_chunk_same_node(results: dict) -> dict:
    """Within one fusion, make every result for a (node id, document) carry the same node object (the first seen:
    the dense one), so LlamaIndex's fusion, which recognises a node by ``node.hash`` (text + metadata),
    merges a chunk both arms found even where their metadata are written differently (Chroma's node JSON
    vs the flat metadata the sparse index may hold)."""
    first: dict = {}
    for nodes_with_scores in results.values():
        for nws in nodes_with_scores:
            key = (nws.node.node_id, nws.node.ref_doc_id)  # two documents may share a chunk id
            nws.node = first.setdefault(key, nws.node)
    return results


def _fusion_class():
    from llama_index.core.retrievers import QueryFusionRetriever

    class HybridFusionRetriever(QueryFusionRetriever):
        """LlamaIndex's ``QueryFusionRetriever``, unchanged but for ``_same_chunk_same_node`` applied to
        the retrievers' results before they are fused."""

        def _run_sync_queries(self, queries):
            return _same_chunk_same_node(super()._run_sync_queries(queries))

        def _run_nested_async_queries(self, queries):
            return _same_chunk_same_node(super()._run_nested_async_queries(queries))

        async def _run_async_queries(self, queries):
            return _same_chunk_same_node(await super()._run_async_queries(queries))

    return HybridFusionRetriever


def hybrid_retriever(dense_retriever, sparse_retriever, alpha: float, top_k: int):
    """Dense + sparse retrieval weighted like LlamaCloud's ``alpha`` (1: dense only, 0: sparse only).

    alpha 1 returns ``dense_retriever`` itself and alpha 0 ``sparse_retriever`` itself (their results
    exactly, so give them ``similarity_top_k=top_k``); in between, LlamaIndex's ``QueryFusionRetriever``
    (relative-score fusion: each list min-max scaled to [0, 1], weighted alpha and 1 - alpha, summed per
    node) with one query (no LLM writes extra queries; a ``MockLLM`` is passed so it never looks for a
    default one) and ``top_k`` results. A chunk found by both is one result (matched by node id; see
    ``_same_chunk_same_node``), carrying the dense retriever's node."""
    if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not math.isfinite(alpha):
        raise ValueError(f"alpha must be a number from 0 (sparse only) to 1 (dense only), got {alpha!r}")
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be from 0 (sparse only) to 1 (dense only), got {alpha!r}")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"top_k must be a positive integer, got {top_k!r}")
    if alpha == 1:
        return dense_retriever
    if alpha == 0:
        return sparse_retriever
    from llama_index.core.llms import MockLLM

    return _fusion_class()(
        [dense_retriever, sparse_retriever],
        llm=MockLLM(),
        mode="relative_score",
        retriever_weights=[float(alpha), 1.0 - float(alpha)],
        num_queries=1,
        similarity_top_k=top_k,
        use_async=False,
    )
