"""Property: the text re-embedding sends for a chunk is LlamaIndex's own, ``TextNode.get_content(EMBED)``.

``export_format.embed_text`` computes it from the export row without building a ``TextNode`` (the node's
validation was most of the re-embedding plan's CPU per chunk) and builds the node only where the row holds
what TextNode would validate, coerce or refuse. Hypothesis draws odd metadata, texts, templates, separators
and exclusions; the answer, or the error, must be the node's. Examples are derandomised: CI sees the same
cases every run."""

from hypothesis import given, settings
from hypothesis import strategies as st
from llama_index.core.schema import MetadataMode

from runbook import export_format, records
from runbook.rehearsal import corpus

from .test_odd_records_property import KEYS, METADATA, TEXTS

TEXT_TEMPLATES = st.sampled_from(
    [
        None,
        "{metadata_str}\n\n{content}",
        "{content}",
        "",
        "{content} <- {metadata_str}",
        "[{metadata_str}]\n{content}  ",
        "{{literal}} {content} {metadata_str}",
        "{missing} {content}",
        "{0}",
        "{content",
        "{content!r}",
        "{metadata_str:>200}",
        5,
        ["{content}"],
    ]
)
METADATA_TEMPLATES = st.sampled_from(
    [None, "{key}: {value}", "{key}={value}", "{value}", "", "  {key}  ", "{key!r}", "{nope}", "{value", 3]
)
SEPARATORS = st.sampled_from([None, "\n", ", ", "", " ", "\u2028", "구분", 0])


@st.composite
def rows(draw):
    meta = draw(METADATA)
    keys = list(meta)
    excluded = draw(
        st.one_of(
            st.none(),
            st.lists(st.sampled_from(keys) if keys else KEYS, max_size=4),
            st.lists(KEYS, max_size=3),
            st.sampled_from(["file_name", ["a", 1], [None], {"a": 1}]),
        )
    )
    node = {"id_": "c", "text": draw(TEXTS), "metadata": meta}
    for name, value in (
        ("excluded_embed_metadata_keys", excluded),
        ("text_template", draw(TEXT_TEMPLATES)),
        ("metadata_template", draw(METADATA_TEMPLATES)),
        ("metadata_seperator", draw(SEPARATORS)),
    ):
        if value is not None or draw(st.booleans()):
            node[name] = value  # absent, or present (a present null is what some servers send)
    return export_format.node_to_row("d", 0, node)


def llama_index_says(row: dict):
    """The reference: LlamaIndex's node built from the row (as before this change), or the error's type."""
    try:
        text = export_format.row_to_llama_node(row).get_content(metadata_mode=MetadataMode.EMBED)
    except Exception as e:  # noqa: BLE001 - the error is part of the answer
        return type(e).__name__
    if not records.is_utf8(text):
        text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text


def runbook_says(row: dict):
    try:
        return export_format.embed_text(row)
    except Exception as e:  # noqa: BLE001
        return type(e).__name__


@settings(max_examples=400, derandomize=True, deadline=None)
@given(row=rows())
def test_the_text_to_embed_is_llama_indexs_own(row):
    assert runbook_says(row) == llama_index_says(row)


def test_the_served_shapes_take_the_direct_way_and_agree():
    """Without this the property above would pass with the direct way never taken."""
    syn = corpus.synthetic("synthetic:200:1536:20:realistic:openai")
    served = [
        export_format.node_to_row(syn.doc_id(d), k, c)
        for d in range(10)
        for k, c in enumerate(syn.get_chunks(syn.doc_id(d), False))
    ]
    hostile = corpus.build_hostile_corpus()
    for doc in hostile.documents_page(0, 10_000)[0]:
        chunks = hostile.get_chunks(doc["id"], False) or []
        served += [export_format.node_to_row(doc["id"], k, c) for k, c in enumerate(chunks)]
    direct = [export_format._embed_text_direct(r) for r in served]
    assert sum(t is not None for t in direct) == len(served)
    for row, text in zip(served, direct, strict=True):
        assert text == export_format.row_to_llama_node(row).get_content(metadata_mode=MetadataMode.EMBED)
    assert any("\n\n" in t and t != r["text"] for t, r in zip(direct, served, strict=True))  # metadata shown
