"""Metadata filters as a predicate over a chunk's metadata dict: one implementation of LlamaCloud's filter
semantics for everything local (the cloud emulator, the sparse index, the hybrid retriever).

A filter is given either as a LlamaIndex ``MetadataFilters`` (nested ``MetadataFilters`` allowed) or as the
plain dict LlamaCloud takes as ``search_filters``::

    {"filters": [{"key": "topic", "value": "당뇨", "operator": "=="}, {"filters": [...], "condition": "or"}],
     "condition": "and"}

Semantics (those of ``cloud_emulator.make_predicate``): a missing key reads as ``None``; comparisons that
Python cannot make (``None > 3``, ``"a" < 1``) are false, never an error; ``and`` needs every part,
``or`` any part, ``not`` no part (an empty ``and`` is true, an empty ``or`` false, an empty ``not`` true).
An operator that is not LlamaIndex's raises ``ValueError`` naming it when the predicate is made, before any
metadata is read. An operator of ``None`` (LlamaCloud's schema allows it) means ``==``.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum

__all__ = ["OPERATORS", "predicate", "to_search_filters"]

_OPS: dict[str, Callable] = {
    "==": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
    ">": lambda a, b: a is not None and a > b,
    "<": lambda a, b: a is not None and a < b,
    ">=": lambda a, b: a is not None and a >= b,
    "<=": lambda a, b: a is not None and a <= b,
    "in": lambda a, b: a in (b or []),
    "nin": lambda a, b: a not in (b or []),
    "any": lambda a, b: isinstance(a, list) and any(x in a for x in (b or [])),
    "all": lambda a, b: isinstance(a, list) and all(x in a for x in (b or [])),
    "contains": lambda a, b: isinstance(a, list) and b in a,
    "text_match": lambda a, b: isinstance(a, str) and str(b) in a,
    "text_match_insensitive": lambda a, b: isinstance(a, str) and str(b).lower() in a.lower(),
    "is_empty": lambda a, b: a in (None, "", []),
}
OPERATORS = tuple(_OPS)
CONDITIONS = ("and", "or", "not")


def _safe(fn, a, b) -> bool:
    try:
        return bool(fn(a, b))
    except TypeError:
        return False


def _plain(v):
    """An enum member (FilterOperator, FilterCondition) as its value; anything else unchanged."""
    return v.value if isinstance(v, Enum) else v


def to_search_filters(filters) -> dict | None:
    """LlamaCloud's ``search_filters`` dict for ``filters`` (a ``MetadataFilters``, or such a dict already,
    returned as a normalised copy); ``None`` for no filters. Operators and conditions become plain strings,
    so the result is JSON-serialisable."""
    if filters is None:
        return None
    if isinstance(filters, dict):
        parts = filters.get("filters")
        condition = filters.get("condition")
    elif hasattr(filters, "filters"):
        parts = filters.filters
        condition = getattr(filters, "condition", None)
    else:
        raise TypeError(
            f"filters must be a MetadataFilters, a search_filters dict or None, not {type(filters).__name__}"
        )
    out = []
    for f in parts or []:
        if (isinstance(f, dict) and "filters" in f) or hasattr(f, "filters"):
            out.append(to_search_filters(f))
        elif isinstance(f, dict):
            out.append(
                {"key": f.get("key"), "value": f.get("value"), "operator": _op_name(f.get("operator"))}
            )
        else:  # MetadataFilter, or the deprecated ExactMatchFilter (no operator: equality)
            out.append({"key": f.key, "value": f.value, "operator": _op_name(getattr(f, "operator", None))})
    return {"filters": out, "condition": _condition_name(condition)}


def _op_name(op) -> str:
    op = _plain(op)
    if op is None:
        return "=="
    if not isinstance(op, str) or op not in _OPS:
        raise ValueError(f"unsupported filter operator {op!r} (LlamaIndex's are: {', '.join(OPERATORS)})")
    return op


def _condition_name(condition) -> str:
    c = _plain(condition)
    if c is None:
        return "and"
    if not isinstance(c, str) or c.lower() not in CONDITIONS:
        raise ValueError(f"unsupported filter condition {c!r} (choose one of: {', '.join(CONDITIONS)})")
    return c.lower()


def predicate(filters) -> Callable[[dict], bool]:
    """A function ``metadata dict -> bool`` for ``filters`` (``None``, a ``MetadataFilters`` or a
    ``search_filters`` dict). Raises ``ValueError`` for an unknown operator or condition."""
    if not filters:
        return lambda meta: True
    return _compile(to_search_filters(filters))


def _compile(sf: dict) -> Callable[[dict], bool]:
    parts = []
    for f in sf["filters"]:
        if "filters" in f:
            parts.append(_compile(f))
            continue
        key, value, fn = f["key"], f["value"], _OPS[f["operator"]]
        parts.append(lambda meta, key=key, value=value, fn=fn: _safe(fn, meta.get(key), value))
    condition = sf["condition"]
    if condition == "or":
        return lambda meta: any(p(meta) for p in parts)
    if condition == "not":
        return lambda meta: not any(p(meta) for p in parts)
    return lambda meta: all(p(meta) for p in parts)
