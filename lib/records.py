"""What happens to odd records: the one place that decides, for verify (which lists it) and load (which does it).

The policy (also in the README and on the pages of phases 01 and 03):

- **Kept exactly**: any non-empty id (Unicode, ``/``, ``%``, ``#``, spaces, any length), texts (Korean in NFC or
  NFD, NUL characters, very long texts, empty texts with ``empty_texts: load``), vectors of the collection's
  dimension with finite values (any norm: cosine space normalises them), every metadata value in the node
  JSON (``_node_content``) that LlamaIndex reads back -- including null, NaN, Infinity, huge integers.
- **Converted reversibly** (Chroma's flat metadata, used for filters): a value Chroma cannot store exactly
  (null, NaN/Infinity, -0.0, an integer beyond 64 bits, an object, any list, a string with a lone surrogate)
  and a string that itself starts with the marker ``json:`` are stored as ``json:`` + canonical JSON. A float
  Chroma's JSON parser returns one step off (``chroma_stored_float``) keeps its key as the nearest float Chroma
  returns unchanged, so numeric filters still see the record, and its exact value goes beside it as ``json:`` +
  its shortest text under ``meta_json:["<key>"]`` (``exact_key``: the source key as ASCII JSON), which
  ``from_flat`` prefers (with no such float within ``NEAREST_STEPS``, never seen, the key holds the text).
  Lists are never stored as Chroma arrays: chromadb 1.5.9 keeps the arrays of a deleted collection and
  attaches them to records of a later collection that reuses their internal ids.
  Every string that starts with the marker is decoded, so the marker is unambiguous and every value
  round-trips. A key Chroma reserves (``""``, ``#…``, ``$…``, ``chroma:document``), a key LlamaIndex writes itself
  (``_node_content``, ``_node_type``, ``document_id``, ``doc_id``, ``ref_doc_id``), a key that is not valid UTF-8,
  a key that looks like an escaped one and a key of the ``exact_key`` form are stored as ``meta_`` + the key
  (``meta_json:`` + JSON when the key itself could not be stored): an injective renaming, so ``$where`` and a
  real ``meta_where`` never collide.
  A chunk id used by more than one document (``duplicate_chunk_ids: qualify``): the first in export order
  keeps it, each later one is stored as ``<chunk id>@<document id>``; LlamaIndex still reads the original id.
- **Skipped** (listed): empty or whitespace-only texts with ``empty_texts: skip``.
- **Refused** (listed with what to do): a vector that is missing, has NaN/Infinity, is all zeros or has
  another dimension (phase 01 re-embeds these with ``reembed_bad_vectors: true``, the default); an empty id;
  a duplicate id with ``duplicate_chunk_ids: refuse``, or one whose qualified id is taken too; a text or id
  with a lone surrogate (refused at export: Parquet and Chroma hold UTF-8 only).
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import orjson

from .errors import RunbookError

MARKER = "json:"
KEY_PREFIX = "meta_"
LLAMAINDEX_KEYS = ("_node_content", "_node_type", "document_id", "doc_id", "ref_doc_id")
INT64 = (-(2**63), 2**63 - 1)
EMPTY_TEXT_POLICIES = ("load", "skip")
DUPLICATE_ID_POLICIES = ("qualify", "refuse")
FLOAT_CHANGED = "float Chroma would change in its last digit"
# How to_flat lays out Chroma's flat metadata: 2 since a float Chroma would change keeps a number under its
# key and its exact value beside it (1: the exact value as text under the key). A load is resumed only in
# the format it began with.
FLAT_FORMAT = 2


class PolicyError(RunbookError, ValueError):
    pass


# ----------------------------------------------------------------------------- JSON that loses nothing
def is_utf8(s: str) -> bool:
    try:
        s.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def _has_nonfinite(obj) -> bool:
    if isinstance(obj, float):
        return not math.isfinite(obj)
    if isinstance(obj, dict):
        return any(_has_nonfinite(v) for v in obj.values())
    if isinstance(obj, list | tuple):
        return any(_has_nonfinite(v) for v in obj)
    return False


def dumps(obj, sort_keys: bool = True, finite: bool = False) -> str:
    """Canonical JSON (sorted keys, compact, UTF-8 as it is) that keeps every value: NaN and Infinity as
    Python's ``json`` writes them, integers of any size, lone surrogates as ``\\ud800`` escapes.

    ``finite``: the caller knows ``obj`` holds no NaN or infinity (built from values :func:`loads_checked`
    read with orjson, which refuses both), so the walk that looks for them is skipped: it was the loader's
    largest cost per record."""
    try:
        opt = orjson.OPT_NON_STR_KEYS | (orjson.OPT_SORT_KEYS if sort_keys else 0)
        out = orjson.dumps(obj, option=opt)
        if b"null" not in out or finite or not _has_nonfinite(obj):  # orjson writes NaN as null
            return out.decode("utf-8")
    except (orjson.JSONEncodeError, TypeError):
        pass
    s = json.dumps(obj, sort_keys=sort_keys, separators=(",", ":"), ensure_ascii=False, allow_nan=True)
    return s if is_utf8(s) else json.dumps(obj, sort_keys=sort_keys, separators=(",", ":"), allow_nan=True)


# an integer token of 19 digits or more (orjson reads it as a float beyond 64 bits), not a float's fraction or
# mantissa (a served vector's 0.00012345678901234567 is read exactly by orjson). A regex over a whole response
# costs more than parsing it, so a run of 19 digits is first looked for by byte translation (C speed)
_LONG_INT = re.compile(rb"(?<![0-9.])[0-9]{19,}(?![0-9.eE])")
_DIGITS_TO_0 = bytes(0x30 if 0x30 <= i <= 0x39 else 0x78 for i in range(256))
_RUN = b"0" * 19


def _has_long_int(b: bytes) -> bool:
    return _RUN in b.translate(_DIGITS_TO_0) and _LONG_INT.search(b) is not None


def loads(s: str):
    """The inverse of ``dumps``: orjson where it is exact, Python's json for NaN/Infinity tokens and for
    integers of 19 digits or more (orjson does not read those beyond 64 bits exactly)."""
    return loads_checked(s)[0]


def loads_checked(s: str | bytes) -> tuple[object, bool]:
    """(``loads(s)``, whether the value is surely finite). orjson refuses NaN, Infinity and numbers that
    overflow a double, so what it read holds none; what Python's json read may. ``s`` may be a response's
    body as bytes (UTF-8, as Python's json reads it: invalid bytes are an error, never replaced)."""
    if not _has_long_int(s if isinstance(s, bytes | bytearray) else s.encode("utf-8", "surrogatepass")):
        try:
            return orjson.loads(s), True
        except orjson.JSONDecodeError:
            pass
    return json.loads(s), False


def same(a, b) -> bool:
    """Deep equality where NaN equals NaN, a bool is not an int and 1 is not 1.0."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


# ----------------------------------------------------------------------------- flat metadata for Chroma
def value_kind(v) -> str | None:
    """Why Chroma cannot store this metadata value exactly (None if it can)."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return None if INT64[0] <= v <= INT64[1] else "integer beyond 64 bits"
    if isinstance(v, float):
        if not math.isfinite(v):
            return "NaN or Infinity"
        if v == 0:
            return "negative zero" if math.copysign(1.0, v) < 0 else None  # Chroma returns 0.0
        return None if chroma_stored_float(v) == v else FLOAT_CHANGED
    if isinstance(v, str):
        if v.startswith(MARKER):
            return "string starting with the marker 'json:'"
        return None if is_utf8(v) else "string with a lone surrogate"
    if isinstance(v, dict):
        return "nested object"
    if isinstance(v, list):
        if not v:
            return "empty list"
        kinds = {type(x) for x in v}
        if len(kinds) > 1 or not kinds <= {str, int, float, bool}:
            return "list of mixed or nested values"
        # chromadb 1.5.9 keeps the array metadata of a deleted collection and attaches it to a record of a
        # later collection that reuses the internal id (seen with PersistentClient): lists never go in as arrays
        return "list"
    return f"value of type {type(v).__name__}"


# Powers of ten as Rust's f64 literals (each correctly rounded, as Python's float() of the same text).
_POW10 = tuple(float(f"1e{i}") for i in range(309))


def chroma_stored_float(x: float) -> float:
    """The float chromadb 1.5.9 returns for a finite float metadata value ``x``.

    Chroma writes each record's metadata as JSON (the shortest text that reads back as ``x``, as Python's
    ``repr``) and parses it again with serde_json's default, "best effort" parser (no ``float_roundtrip``):
    the digits as an integer, multiplied or divided once by a power of ten. That is off by one unit in the
    last place for about one arbitrary 17-digit float in five (``123456789.12345679``, ``2.2e177``); short
    decimals (``0.1``, ``36.6``, ``1e-3``) come back exactly. A ``chroma run`` server parses twice (the
    request, then its log); a float that survives once survives both. Measured against chromadb, embedded
    and over HTTP (``tests/test_records.py``)."""
    if not math.isfinite(x) or x == 0:
        return x
    mantissa, _, exp = float.__repr__(abs(x)).partition("e")  # numpy's floats repr as 'np.float64(…)'
    whole, _, frac = mantissa.partition(".")
    f, e = float(int(whole + frac)), (int(exp) if exp else 0) - len(frac)
    while e <= -len(_POW10):  # serde_json's loop for exponents below -308 (a finite float's are at most 292)
        if f == 0.0:
            break
        f, e = f / 1e308, e + 308
    else:
        f = f * _POW10[e] if e >= 0 else f / _POW10[-e]
    return math.copysign(f, x)


NEAREST_STEPS = 64  # how far (in floats) to look for one Chroma stores exactly; never more than 37 in 400,000


def nearest_stored_float(x: float) -> float | None:
    """The float nearest ``x`` that chromadb 1.5.9 returns unchanged (``x`` itself if it does), looking at
    most ``NEAREST_STEPS`` floats either way; None if there is none that near. Toward zero first on a tie, so
    ``-x`` gets the negation. 93% of the floats Chroma changes have one a single step away."""
    if chroma_stored_float(x) == x:
        return x
    toward, away = x, x
    for _ in range(NEAREST_STEPS):
        toward, away = math.nextafter(toward, 0.0), math.nextafter(away, math.copysign(math.inf, x))
        for c in (toward, away):
            if c != 0 and math.isfinite(c) and chroma_stored_float(c) == c:
                return c
    return None


def exact_key(k: str) -> str:
    """Where the exact value of source key ``k`` is kept when Chroma would change its float (``k`` itself
    holds the nearest float Chroma keeps, for filters): ``meta_json:`` + a JSON list of the key, a form
    ``encode_key`` never produces (a source key of that form is escaped)."""
    return KEY_PREFIX + MARKER + json.dumps([k])


def _exact_of(e: str) -> str | None:
    """The source key whose exact value ``e`` holds, or None if ``e`` is no ``exact_key``."""
    if not e.startswith(KEY_PREFIX + MARKER + "["):
        return None
    try:
        k = json.loads(e[len(KEY_PREFIX + MARKER) :])
    except (ValueError, RecursionError):
        return None
    return (
        k[0]
        if isinstance(k, list) and len(k) == 1 and isinstance(k[0], str) and exact_key(k[0]) == e
        else None
    )


def encode_value(v, kind: str | None = None):
    """``v`` as Chroma can store it exactly (``kind``: ``value_kind(v)`` when the caller has it)."""
    kind = value_kind(v) if kind is None else kind
    return v if kind is None else MARKER + dumps(v)


def decode_value(v):
    """Undo ``encode_value``: every string that starts with the marker was encoded."""
    if isinstance(v, str) and v.startswith(MARKER):
        return loads(v[len(MARKER) :])
    return v


def _reserved(k: str) -> bool:
    # Chroma rejects "", "#…", "$…", chroma:document and stores other "chroma:…" keys without returning them;
    # an exact_key form is the runbook's own
    return (
        k == ""
        or k[0] in "#$"
        or k.startswith("chroma:")
        or k in LLAMAINDEX_KEYS
        or not is_utf8(k)
        or _exact_of(k) is not None
    )


def _form(k: str) -> str:
    return k if is_utf8(k) and not k.startswith(MARKER) else MARKER + json.dumps(k)


def _unescape_once(e: str) -> str | None:
    """The key ``e`` would be the escape of (ignoring whether that key needs escaping), or None."""
    if not e.startswith(KEY_PREFIX):
        return None
    rest = e[len(KEY_PREFIX) :]
    if not rest.startswith(MARKER):
        return rest
    try:
        k = json.loads(rest[len(MARKER) :])
    except (ValueError, RecursionError):  # a key of 100,000 '[' is a key, not an escape
        return None
    return k if isinstance(k, str) and KEY_PREFIX + _form(k) == e else None


def _needs_escape(k: str) -> bool:
    """A key is escaped when Chroma or LlamaIndex reserve it, or when it looks like the escape of a key that is
    escaped: peeled iteratively (a key of many ``meta_`` prefixes needs no recursion)."""
    chain = [k]
    while (inner := _unescape_once(chain[-1])) is not None:
        chain.append(inner)
    needs = _reserved(chain[-1])
    for outer, inner in zip(reversed(chain[:-1]), reversed(chain[1:]), strict=True):
        # outer is the escape of inner exactly when inner needs escaping; then outer must be escaped too
        needs = needs and KEY_PREFIX + _form(inner) == outer
        needs = _reserved(outer) or needs
    return needs


def _escaped_from(e: str) -> str | None:
    """The key that ``e`` is the escaped form of, or None if ``e`` is no escaped form."""
    k = _unescape_once(e)
    return k if k is not None and _needs_escape(k) else None


@functools.lru_cache(maxsize=65536)  # a pure function of the key; keys repeat record after record
def key_kind(k: str) -> str | None:
    if k in LLAMAINDEX_KEYS:
        return "key LlamaIndex writes itself"
    if _exact_of(k) is not None:
        return "key that looks like an exact-value key"
    if _reserved(k):
        return "key Chroma reserves"
    if _escaped_from(k) is not None:
        return "key that looks like an escaped one"
    return None


@functools.lru_cache(maxsize=65536)  # a pure function of the key; keys repeat record after record
def encode_key(k: str) -> str:
    return KEY_PREFIX + _form(k) if _needs_escape(k) else k


@functools.lru_cache(maxsize=65536)  # a pure function of the key; keys repeat record after record
def decode_key(e: str) -> str:
    k = _escaped_from(e)
    return e if k is None else k


def to_flat(metadata: dict, own: dict | None = None) -> tuple[dict, list[tuple[str, str]]]:
    """The source's metadata as Chroma flat metadata, and the (key, kind) of each conversion. ``own`` are
    the values LlamaIndex writes under its own keys: a source key of that name holding the same value
    (LlamaCloud's ``document_id`` usually does) needs no escape -- the one value serves both."""
    out, conv = {}, []
    for k, v in metadata.items():
        if own is not None and k in LLAMAINDEX_KEYS and same(v, own.get(k)):
            continue
        kk, vk = key_kind(k), value_kind(v)
        if kk:
            conv.append((k, kk))
        if vk:
            conv.append((k, vk))
        if vk == FLOAT_CHANGED and (near := nearest_stored_float(v)) is not None:
            out[encode_key(k)] = near  # a number still, so numeric filters see the record
            out[exact_key(k)] = MARKER + dumps(v)
        else:
            out[encode_key(k)] = encode_value(v, vk)
    return out, conv


def from_flat(flat: dict) -> dict:
    """Undo ``to_flat``: an exact value (``exact_key``) wins over the nearest float kept for filters;
    LlamaIndex's own keys are the source's only where the node JSON's metadata has them and no escaped copy
    exists (the value was shared)."""
    out, exact = {}, {}
    for k, v in flat.items():
        if (src := _exact_of(k)) is not None:
            exact[src] = decode_value(v)
        elif k not in LLAMAINDEX_KEYS:
            out[decode_key(k)] = decode_value(v)
    out.update(exact)
    node_md = {}
    if isinstance(flat.get("_node_content"), str):
        node_md = (loads(flat["_node_content"]) or {}).get("metadata") or {}
    for k in LLAMAINDEX_KEYS:
        if k in flat and k in node_md and k not in out:
            out[k] = flat[k]
    return out


TREATMENT = {
    "null": "stored as 'json:null' (reversible)",
    "NaN or Infinity": "stored as 'json:NaN' / 'json:Infinity' (Chroma would store null)",
    "negative zero": "stored as 'json:-0.0' (Chroma would return 0.0)",
    FLOAT_CHANGED: "the key keeps the nearest float Chroma returns unchanged (one step off for 93%; numeric "
    "filters see the record), the exact value is stored as 'json:' + its shortest text under "
    'meta_json:["<key>"] (the source key as ASCII JSON), which the undo prefers; with no such float within 64 '
    "steps (never seen) the key holds the text",
    "integer beyond 64 bits": "stored as 'json:<digits>' (Chroma would round it to a float)",
    "string starting with the marker 'json:'": "stored as 'json:' + the JSON string, so it is not decoded",
    "string with a lone surrogate": "stored as 'json:' + JSON with \\u escapes",
    "nested object": "stored as 'json:' + canonical JSON",
    "empty list": "stored as 'json:[]'",
    "list of mixed or nested values": "stored as 'json:' + canonical JSON",
    "list": "stored as 'json:' + JSON, not as a Chroma array (Chroma 1.5.9 leaks arrays of deleted collections)",
    "key Chroma reserves": "key stored as 'meta_' + key (injective: never collides)",
    "key LlamaIndex writes itself": "its value differs from LlamaIndex's: stored as 'meta_' + key (LlamaIndex's "
    "value keeps the name)",
    "key that looks like an escaped one": "key stored as 'meta_' + key, so it is not mistaken for an escape",
    "key that looks like an exact-value key": "key stored as 'meta_' + key, so it is not mistaken for where the "
    "runbook keeps a float's exact value",
}


# ----------------------------------------------------------------------------- record-level decisions
@dataclass
class Policy:
    empty_texts: str = "load"
    duplicate_chunk_ids: str = "qualify"

    def __post_init__(self):
        if self.empty_texts not in EMPTY_TEXT_POLICIES:
            raise PolicyError(
                f"empty_texts: {self.empty_texts!r}; choose one of {', '.join(EMPTY_TEXT_POLICIES)}"
            )
        if self.duplicate_chunk_ids not in DUPLICATE_ID_POLICIES:
            raise PolicyError(
                f"duplicate_chunk_ids: {self.duplicate_chunk_ids!r}; choose one of "
                + ", ".join(DUPLICATE_ID_POLICIES)
            )


def _h(s: str) -> int:
    return int.from_bytes(
        hashlib.blake2b(s.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little"
    )


class IdIndex:
    """Every chunk id of an export, as 64-bit hashes (8 bytes per chunk), and the ids used by more than one
    chunk with the document that keeps each (the first in export order)."""

    def __init__(self, pairs: Iterable[tuple[str, str]] | Callable[[], Iterable[tuple[str, str]]]):
        """``pairs``: (chunk id, document id) in export order, or a function that yields them again
        (read twice only when some id is duplicated, so memory stays 8 bytes per chunk)."""
        again = pairs if callable(pairs) else (lambda p=list(pairs): p)
        order = np.sort(np.fromiter((_h(cid) for cid, _ in again()), dtype=np.uint64))
        dup_h = set(order[1:][order[1:] == order[:-1]].tolist()) if len(order) > 1 else set()
        self.positions: dict[str, list[tuple[int, str]]] = {}  # duplicated id -> [(position, document)]
        if dup_h:
            for pos, (cid, doc) in enumerate(again()):
                if _h(cid) in dup_h:
                    self.positions.setdefault(cid, []).append((pos, doc))
            self.positions = {c: p for c, p in self.positions.items() if len(p) > 1}
        self.keeper: dict[str, int] = {
            c: p[0][0] for c, p in self.positions.items()
        }  # id -> position keeping it
        self._sorted = order
        # every later use of a duplicated id, decided once (linear in the duplicates): a repeat inside one
        # document, or a qualified id <id>@<document> -- unless that is taken by an id or another qualified id
        self.repeat: set[int] = set()
        self.qualified: dict[int, str] = {}
        self.collided: dict[int, str] = {}
        assigned: set[str] = set()
        for cid, occ in self.positions.items():
            docs = {occ[0][1]}
            for pos, doc in occ[1:]:
                if doc in docs:
                    self.repeat.add(pos)
                    continue
                docs.add(doc)
                q = f"{cid}@{doc}"
                if q in assigned or self.taken(q):
                    self.collided[pos] = q
                else:
                    assigned.add(q)
                    self.qualified[pos] = q

    def taken(self, cid: str) -> bool:
        h = np.uint64(_h(cid))
        i = int(np.searchsorted(self._sorted, h))
        return i < len(self._sorted) and self._sorted[i] == h

    @classmethod
    def of_export(cls, exp) -> IdIndex:
        def pairs():
            for batch in exp.iter_chunk_batches(columns=["chunk_id", "document_id"], batch_size=65536):
                yield from zip(
                    batch.column("chunk_id").to_pylist(), batch.column("document_id").to_pylist(), strict=True
                )

        return cls(pairs)


@dataclass
class Decision:
    action: str  # load | skip | refuse
    chroma_id: str
    notes: list[tuple[str, str]] = field(default_factory=list)  # (class, treatment)


def decide(row: dict, pos: int, vector_problem: str | None, ids: IdIndex, policy: Policy) -> Decision:
    """What happens to one export row at position ``pos`` (export order) when it is loaded."""
    cid = row["chunk_id"]
    notes: list[tuple[str, str]] = []
    if not cid:
        return Decision(
            "refuse", cid, [("empty id", "refused: Chroma needs an id; fix the chunk at the source")]
        )
    if vector_problem:
        advice = (
            "refused: run phase 01 again (its re-embedding step fills missing vectors)"
            if vector_problem == "missing"
            else "refused: run phase 01 with reembed_bad_vectors: true to re-embed it"
        )
        return Decision("refuse", cid, [(f"vector {vector_problem}", advice)])
    chroma_id = cid
    if pos in ids.repeat:
        return Decision(
            "refuse",
            cid,
            [
                (
                    "chunk served twice in one document",
                    "refused: the first copy in export order takes the id (whatever happens to it); export "
                    "again, and report it if the source repeats it",
                )
            ],
        )
    if cid in ids.keeper and ids.keeper[cid] != pos:
        if policy.duplicate_chunk_ids == "refuse":
            return Decision(
                "refuse",
                cid,
                [("chunk id used by another document", "refused (duplicate_chunk_ids: refuse)")],
            )
        if pos in ids.collided:
            return Decision(
                "refuse",
                cid,
                [
                    (
                        "chunk id used by another document",
                        f"refused: the qualified id {ids.collided[pos]!r} is taken too",
                    )
                ],
            )
        chroma_id = ids.qualified[pos]
        notes.append(
            ("chunk id used by another document", f"stored as {chroma_id!r}; LlamaIndex reads {cid!r}")
        )
    text = row.get("text") or ""
    if not text.strip():
        if policy.empty_texts == "skip":
            return Decision("skip", chroma_id, [("empty text", "skipped (empty_texts: skip)")])
        notes.append(("empty text", "loaded exactly (empty_texts: load); text search cannot find it"))
    if "\x00" in text:
        notes.append(("NUL in text", "loaded exactly; Chroma's $contains filter does not see text after it"))
    return Decision("load", chroma_id, notes)


_NUMPY_OF = {
    "float": np.float32,
    "double": np.float64,
    "halffloat": np.float16,
    "int32": np.int32,
    "int64": np.int64,
}


def as_numpy(arr, dtype) -> np.ndarray:
    """A primitive Arrow array as numpy, a view of its memory when it has no nulls. Arrow's own conversion goes
    through its pandas bridge and imports pandas on first use: 0.6 s of CPU in a fresh process, such as the
    loader's second process, beside Chroma indexing."""
    own = _NUMPY_OF.get(str(arr.type))
    if own is None or arr.null_count:
        return np.asarray(arr, dtype=dtype)
    if len(arr) == 0:
        return np.zeros(0, dtype=dtype)
    view = np.frombuffer(arr.buffers()[1], dtype=own, count=arr.offset + len(arr))[arr.offset :]
    return view.astype(dtype, copy=False)


def vector_problems(emb_column, dim: int) -> list[str | None]:
    """Per row of an Arrow list<float32> column: why the vector cannot be loaded, or None."""
    n = len(emb_column)
    out: list[str | None] = [None] * n
    if emb_column.null_count == 0:  # the usual case; converting is_valid() would import pandas (0.6 s, cold)
        valid = np.ones(n, dtype=bool)
    else:
        valid = np.asarray(emb_column.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
    lengths = np.zeros(n, dtype=np.int64)
    if valid.all():  # the usual case: no copy (filtering a list array copies its values: 21% of re-embedding)
        lengths[:] = as_numpy(emb_column.value_lengths(), np.int64)
    elif valid.any():
        lengths[valid] = as_numpy(emb_column.filter(emb_column.is_valid()).value_lengths(), np.int64)
    good_len = valid & (lengths == dim)
    for i in np.nonzero(~valid)[0]:
        out[i] = "missing"
    for i in np.nonzero(valid & ~good_len)[0]:
        out[i] = f"of dimension {lengths[i]} (the collection's is {dim})"
    if good_len.any():
        mat = vector_matrix(emb_column if good_len.all() else emb_column.filter(good_len), dim)
        idx = np.nonzero(good_len)[0]
        finite = np.isfinite(mat).all(axis=1)
        nonzero = (mat != 0).any(axis=1)  # a bool matrix, not a float copy of every vector
        with np.errstate(over="ignore", under="ignore", invalid="ignore"):
            sq = np.einsum("ij,ij->i", mat, mat)  # float32, as Chroma's cosine computes it
        scale = finite & nonzero & (~np.isfinite(sq) | (sq < np.finfo(np.float32).tiny))
        for j in np.nonzero(~finite)[0]:
            out[idx[j]] = "with NaN or Infinity"
        for j in np.nonzero(finite & ~nonzero)[0]:
            out[idx[j]] = "of zeros (no direction for cosine)"
        for j in np.nonzero(scale)[0]:
            out[idx[j]] = "too large or too small for float32 cosine (its squared norm overflows)"
    return out


def vector_matrix(column, dim: int, rows=None) -> np.ndarray:
    """An Arrow list<float32> column of one dimension as an (n, dim) float32 matrix, ``rows`` only (increasing
    positions) when given. It reads the column's memory in place when it can: with every row (the usual
    batch) no vector is copied (the copies were a shard of vectors each at the peak of phase 03)."""
    if rows is not None and len(rows) != len(column):
        column = column.take(rows)
    flat = as_numpy(column.flatten(), np.float32)
    return flat.reshape(len(column), dim)


class Tally:
    """Counts every chunk by what happened to it, and lists the odd ones (the first ``max_listed``)."""

    def __init__(self, max_listed: int = 500, state: dict | None = None):
        state = state or {}
        self.max_listed = max_listed
        self.counts: dict[str, int] = dict(state.get("counts", {}))
        self.classes: dict[str, int] = dict(state.get("classes", {}))
        self.metadata: dict[str, int] = dict(state.get("metadata", {}))
        self.listed: list[dict] = list(state.get("listed", []))

    def add(self, row: dict, d: Decision, conversions: list[tuple[str, str]] = ()):
        if d.action == "load":
            outcome = (
                "loaded, converted" if (conversions or d.chroma_id != row["chunk_id"]) else "loaded exactly"
            )
        else:
            outcome = "skipped" if d.action == "skip" else "refused"
        self.counts[outcome] = self.counts.get(outcome, 0) + 1
        for key, kind in conversions:
            label = json.dumps([key, kind])  # JSON: the tally lives in the load's checkpoint
            self.metadata[label] = self.metadata.get(label, 0) + 1
        for cls, treatment in d.notes:
            self.classes[cls] = self.classes.get(cls, 0) + 1
            if len(self.listed) < self.max_listed:
                self.listed.append(
                    {
                        "document": row["document_id"],
                        "chunk": row["chunk_id"],
                        "what": cls,
                        "treatment": treatment,
                    }
                )

    def merge(self, state: dict) -> None:
        """Add another tally's ``state()`` (of the chunks that follow these) to this one."""
        for mine, theirs in (
            (self.counts, state["counts"]),
            (self.classes, state["classes"]),
            (self.metadata, state["metadata"]),
        ):
            for k, n in theirs.items():
                mine[k] = mine.get(k, 0) + n
        self.listed.extend(state["listed"][: max(0, self.max_listed - len(self.listed))])

    def state(self) -> dict:
        return {
            "counts": self.counts,
            "classes": self.classes,
            "metadata": self.metadata,
            "listed": self.listed,
        }

    def total(self) -> int:
        return sum(self.counts.values())

    def expected_in_collection(self) -> int:
        return self.counts.get("loaded exactly", 0) + self.counts.get("loaded, converted", 0)

    def metadata_rows(self) -> list[dict]:
        out = []
        for label, n in sorted(self.metadata.items()):
            key, kind = json.loads(label)
            out.append({"key": key, "kind": kind, "chunks": n, "treatment": TREATMENT.get(kind, "")})
        return out


def reconciliation(
    manifest: dict, tally: Tally, chunkless_documents: list[str], forecast: bool = False
) -> list[dict]:
    """Every chunk and document of the export (and what phase 01 refused of the source) accounted for; the last
    row says whether it adds up. ``forecast``: phase 01's view of what phase 03 will do."""
    refused_export = [x for x in manifest.get("refused", []) if x.get("chunk_id") is not None]
    refused_docs = len(manifest.get("refused_documents", []))
    lost_all = {x["document_id"] for x in refused_export} & set(chunkless_documents)
    exported = manifest["total_chunks"]
    replaced = manifest.get("replaced_vectors_count", len(manifest.get("replaced_vectors", [])))
    c = tally.counts
    will = "will be " if forecast else ""
    rows = [
        {
            "item": "chunks the source served (exported + refused at export)",
            "count": exported + len(refused_export),
        },
        {"item": "  refused at export (no file can hold them)", "count": len(refused_export)},
        {"item": "  exported", "count": exported},
        {
            "item": "    of which the vector was re-embedded in phase 01 (the source's was unusable)",
            "count": replaced,
        },
        {"item": f"    {will}loaded exactly as exported", "count": c.get("loaded exactly", 0)},
        {"item": f"    {will}loaded, converted reversibly", "count": c.get("loaded, converted", 0)},
        {"item": f"    {will}skipped (policy)", "count": c.get("skipped", 0)},
        {"item": f"    {will}refused at load", "count": c.get("refused", 0)},
        {"item": "documents the source listed", "count": manifest["total_documents"] + refused_docs},
        {"item": "  refused at export (id not valid Unicode)", "count": refused_docs},
        {"item": "  exported, every chunk refused at export", "count": len(lost_all)},
        {
            "item": "  exported without chunks at the source (nothing to load)",
            "count": len(chunkless_documents) - len(lost_all),
        },
    ]
    adds_up = tally.total() == exported
    rows.append({"item": "exported chunks = loaded + skipped + refused", "count": "yes" if adds_up else "NO"})
    return rows


def export_listing(manifest: dict, documents, cap: int = 400) -> tuple[list[dict], list[str]]:
    """What phase 01 did to the source's records (refused at export, vectors re-embedded, documents without
    chunks), as rows for the pages of phases 01 and 03; and the ids of the exported documents without chunks."""
    rows = [
        {
            "document": x["document_id"],
            "chunk": x["chunk_id"],
            "what": x["problem"],
            "treatment": "refused at export: " + x["what to do"],
        }
        for x in manifest.get("refused", [])[:cap]
    ]
    rows += [
        {
            "document": x["document_id"],
            "chunk": x["chunk_id"],
            "what": f"served vector: {x['served']}",
            "treatment": "re-embedded with the pipeline's model in phase 01 (reembed_bad_vectors: true)",
        }
        for x in manifest.get("replaced_vectors", [])[:cap]
    ]
    chunkless = [d["document_id"] for d in documents if d["chunk_count"] == 0]
    lost = {x["document_id"] for x in manifest.get("refused", []) if x.get("chunk_id") is not None}
    rows += [
        {
            "document": d,
            "chunk": None,
            "what": "document without chunks at the source",
            "treatment": "kept in the export; nothing to load into Chroma",
        }
        for d in chunkless
        if d not in lost
    ][:cap]
    return rows, chunkless


def policy_rows() -> list[dict]:
    """The policy table for a page: plain text (no Markdown)."""

    def plain(s: str) -> str:
        return s.replace("**", "").replace("`", "")

    return [{"class": plain(a), "treatment (default)": plain(b), "parameter": plain(c)} for a, b, c in POLICY]


# The policy as the pages show it (README "What happens to odd records" holds the same table; a test compares).
POLICY: list[tuple[str, str, str]] = [
    (
        "ids: any Unicode, `/ % # ?`, spaces, dots, control characters, very long",
        "kept exactly (percent-encoded in URL paths)",
        "",
    ),
    (
        "a chunk id used by two documents",
        "the first in export order keeps it, each later one is stored as `<id>@<document id>`; LlamaIndex still reads the original id from the node",
        "`duplicate_chunk_ids: refuse`",
    ),
    ("one id twice in the same document, an empty id", "refused, listed", ""),
    (
        "metadata values Chroma stores as they are (strings, bools, 64-bit ints, floats Chroma's JSON parser reads back exactly: `0.1`, `36.6`, most short decimals)",
        "kept exactly",
        "",
    ),
    (
        "null, NaN/Infinity, -0.0, integers beyond 64 bits, objects, **any list**, strings with a lone surrogate, strings that start with `json:`",
        "stored as `json:` + canonical JSON in Chroma's flat metadata; every string that starts with the marker is decoded, so the marker is unambiguous and every value round-trips (`records.from_flat`)",
        "",
    ),
    (
        "floats Chroma would return one step off (about one arbitrary 17-digit float in five, e.g. `123456789.12345679`)",
        'the key keeps the nearest float Chroma returns unchanged (one step off for 93% of them), so numeric filters still find the record; the exact value is stored beside it as `json:` + its text under `meta_json:["<key>"]` (the source key as ASCII JSON), which `records.from_flat` prefers',
        "",
    ),
    (
        'keys Chroma reserves (`""`, `#…`, `$…`, `chroma:…`: Chroma stores those without returning them), keys LlamaIndex writes itself with a different value (`document_id`, `_node_content`, …), keys that look escaped or like `meta_json:["<key>"]`',
        "stored as `meta_` + key, an injective renaming (`$where` and a real `meta_where` never collide)",
        "",
    ),
    (
        "everything in the node JSON LlamaIndex reads (`_node_content`)",
        "kept exactly, NaN and big integers included",
        "",
    ),
    (
        "empty or whitespace-only texts",
        "loaded exactly, listed (text search cannot find them)",
        "`empty_texts: skip`",
    ),
    (
        "a NUL character in a text",
        "loaded exactly, listed: Chroma's `$contains` does not see the text after it",
        "",
    ),
    (
        "a text or id with a lone surrogate (not valid Unicode)",
        "refused at export (no UTF-8 file holds it), named in the manifest",
        "",
    ),
    (
        "vectors: NaN/Infinity, all zeros, another dimension, a norm float32 cosine cannot square, missing",
        "re-embedded in phase 01 with the pipeline's model and listed (`replaced_vectors` in the manifest)",
        "`reembed_bad_vectors: false` → refused at load, listed",
    ),
    (
        "vectors not of unit length; identical vectors",
        "kept (cosine space normalises; ties count in self-retrieval)",
        "",
    ),
    ("documents without chunks", "kept in the export, listed, nothing to load", ""),
]
