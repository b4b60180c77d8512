"""metadata_filters: LlamaCloud's filter semantics as one predicate, from MetadataFilters or the plain dict."""

import json

import pytest
from llama_index.core.vector_stores.types import (
    ExactMatchFilter,
    FilterCondition,
    FilterOperator,
    MetadataFilter,
    MetadataFilters,
)

from runbook import metadata_filters
from runbook.metadata_filters import predicate, to_search_filters
from runbook.rehearsal import cloud_emulator

DOCS = [
    {
        "id": "a",
        "topic": "당뇨",
        "year": 2021,
        "score": 0.5,
        "tags": ["혈당", "인슐린"],
        "title": "HbA1c 관리",
    },
    {"id": "b", "topic": "고혈압", "year": 2023, "score": 0.9, "tags": ["혈압"], "title": "혈압 측정"},
    {"id": "c", "topic": "당뇨", "year": 2024, "tags": [], "title": "당뇨 식단"},
    {"id": "d", "year": "2022", "tags": None, "title": ""},  # no topic; year as text; tags null
    {"id": "e", "topic": "간", "score": None, "title": "γ-GTP 수치"},  # no year, no tags
]


def ids(flt) -> list[str]:
    keep = predicate(flt)
    return [d["id"] for d in DOCS if keep(d)]


def mf(key, value, op, **kw) -> MetadataFilters:
    return MetadataFilters(filters=[MetadataFilter(key=key, value=value, operator=op)], **kw)


@pytest.mark.parametrize(
    "key,value,op,want",
    [
        ("topic", "당뇨", "==", ["a", "c"]),
        ("topic", "당뇨", "!=", ["b", "d", "e"]),  # a missing key is not equal
        ("year", 2022, ">", ["b", "c"]),  # "2022" > 2022 cannot be compared: false; missing: false
        ("year", 2023, "<", ["a"]),
        ("year", 2023, ">=", ["b", "c"]),
        ("year", 2023, "<=", ["a", "b"]),
        ("score", 0.5, ">", ["b"]),  # None > 0.5: false
        ("topic", ["당뇨", "간"], "in", ["a", "c", "e"]),
        ("topic", ["당뇨", "간"], "nin", ["b", "d"]),  # missing key: None is not in the list
        ("tags", ["혈압", "인슐린"], "any", ["a", "b"]),
        ("tags", ["혈당", "인슐린"], "all", ["a"]),
        ("tags", "혈압", "contains", ["b"]),
        ("title", "GTP", "text_match", ["e"]),
        ("title", "gtp", "text_match", []),
        ("title", "hba1C", "text_match_insensitive", ["a"]),
        ("tags", None, "is_empty", ["c", "d", "e"]),  # [], None, missing
        ("title", None, "is_empty", ["d"]),
    ],
)
def test_each_operator_from_metadata_filters_and_dict(key, value, op, want):
    flt = mf(key, value, FilterOperator(op))
    assert ids(flt) == want
    as_dict = {"filters": [{"key": key, "value": value, "operator": op}], "condition": "and"}
    assert ids(as_dict) == want
    assert to_search_filters(flt) == as_dict
    # the same answers as the cloud emulator's predicate (the implementation this one replaces)
    emu = cloud_emulator.make_predicate(as_dict)
    assert [d["id"] for d in DOCS if emu(d)] == want


def test_every_llamaindex_operator_is_known():
    assert {op.value for op in FilterOperator} == set(metadata_filters.OPERATORS)


def test_and_or_not_and_nesting():
    both = MetadataFilters(
        filters=[
            MetadataFilter(key="topic", value="당뇨"),
            MetadataFilter(key="year", value=2022, operator=FilterOperator.GT),
        ],
        condition=FilterCondition.AND,
    )
    assert ids(both) == ["c"]
    either = both.model_copy(update={"condition": FilterCondition.OR})
    assert ids(either) == ["a", "b", "c"]
    neither = both.model_copy(update={"condition": FilterCondition.NOT})
    assert ids(neither) == ["d", "e"]
    nested = MetadataFilters(
        filters=[
            MetadataFilter(key="title", value="", operator=FilterOperator.NE),
            MetadataFilters(
                filters=[
                    MetadataFilter(key="topic", value="고혈압"),
                    MetadataFilter(key="topic", value="간"),
                ],
                condition=FilterCondition.OR,
            ),
        ]
    )
    assert ids(nested) == ["b", "e"]
    d = to_search_filters(nested)
    assert d == {
        "filters": [
            {"key": "title", "value": "", "operator": "!="},
            {
                "filters": [
                    {"key": "topic", "value": "고혈압", "operator": "=="},
                    {"key": "topic", "value": "간", "operator": "=="},
                ],
                "condition": "or",
            },
        ],
        "condition": "and",
    }
    json.dumps(d)  # plain JSON, ready for LlamaCloud's search_filters
    assert ids(d) == ids(nested)
    # three levels, with "not" inside
    deep = MetadataFilters(
        filters=[nested, MetadataFilters(filters=[MetadataFilter(key="id", value="e")], condition="not")]
    )
    assert ids(deep) == ["b"]
    assert ids(to_search_filters(deep)) == ["b"]


def test_empty_and_none():
    assert ids(None) == [d["id"] for d in DOCS]
    assert ids({}) == [d["id"] for d in DOCS]
    assert ids(MetadataFilters(filters=[])) == [d["id"] for d in DOCS]
    assert ids({"filters": [], "condition": "or"}) == []  # nothing matches an empty "or"
    assert ids(MetadataFilters(filters=[], condition="not")) == [d["id"] for d in DOCS]
    assert to_search_filters(None) is None


def test_missing_keys_and_defaults():
    # the dict's condition and operator may be left out (LlamaCloud's schema: both optional)
    assert ids({"filters": [{"key": "topic", "value": "간"}]}) == ["e"]
    assert ids({"filters": [{"key": "topic", "value": "간", "operator": None}], "condition": None}) == ["e"]
    assert ids({"filters": [{"key": "nope", "value": None}]}) == [d["id"] for d in DOCS]  # None == None
    assert ids(mf("nope", 1, FilterOperator.NE)) == [d["id"] for d in DOCS]
    assert ids(mf("nope", [1], FilterOperator.ANY)) == []
    # the deprecated ExactMatchFilter (no operator) is equality
    assert ids(MetadataFilters(filters=[ExactMatchFilter(key="topic", value="고혈압")])) == ["b"]


def test_unknown_operator_raises_naming_it():
    with pytest.raises(ValueError, match="'~='"):
        predicate({"filters": [{"key": "a", "value": 1, "operator": "~="}]})
    with pytest.raises(ValueError, match="'regex'"):  # nested too, when the predicate is made
        predicate({"filters": [{"filters": [{"key": "a", "value": 1, "operator": "regex"}]}]})
    with pytest.raises(ValueError, match="'xor'"):
        predicate({"filters": [{"key": "a", "value": 1}], "condition": "xor"})
    with pytest.raises(TypeError):
        predicate(["topic", "==", "x"])


def test_korean_and_odd_values():
    docs = [{"질환": "당뇨", "n": 1}, {"질환": "당뇨병", "n": True}, {"질환": None}]
    keep = predicate(mf("질환", "당뇨", FilterOperator.TEXT_MATCH))
    assert [keep(d) for d in docs] == [True, True, False]
    keep = predicate({"filters": [{"key": "n", "value": "1", "operator": ">="}]})
    assert [keep(d) for d in docs] == [False, False, False]  # text vs number: not comparable, false
