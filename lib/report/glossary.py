"""Plain-language explanations of the words the report uses, on ``glossary.html``.

Pages link a term as ``glossary.html#<anchor(term)>``: ``anchor("MRR")`` is ``mrr`` and
``anchor("hit@k")`` is ``hit-at-k``.
"""

from __future__ import annotations

import html
import re
from pathlib import Path

from .. import atomic
from .pages import FILE_MODE, ensure_assets, page

TERMS: dict[str, str] = {
    "HNSW": (
        "Hierarchical Navigable Small World: the kind of search index Chroma builds over the vectors. "
        "It finds the nearest vectors quickly by walking a graph instead of comparing a question with every "
        "chunk, at the price of occasionally missing one."
    ),
    "ef_search": (
        "How many candidates the HNSW index looks at for each question. Higher finds the true nearest "
        "chunks more reliably but takes longer."
    ),
    "RBO (rank-biased overlap)": (
        "How similar two ranked result lists are, from 0 (nothing in common) to 1 (the same list), with the "
        "top positions counting most. Used to compare the local answers with the cloud's."
    ),
    "MRR (mean reciprocal rank)": (
        "How high the right document appears in the results, averaged over the labelled questions: 1 means "
        "it is always first, 0.5 means on average second. Higher is better."
    ),
    "hit@k": (
        "The share of labelled questions for which the right document is among the top k results "
        "(for example hit@5: in the first five). Higher is better."
    ),
    "recall@k (of the cloud's top k)": (
        "Of the k results the cloud returns for a question, the share that the local index also returns in "
        "its top k. It measures agreement with the cloud, not correctness."
    ),
    "Jaccard": (
        "The overlap of two result sets: the results both share divided by all distinct results of either, "
        "from 0 (none shared) to 1 (identical sets). Order does not matter."
    ),
    "Kendall tau": (
        "For the results two lists share, whether they are in the same order: 1 is the same order, 0 no "
        "relation, -1 the reverse order."
    ),
    "RSS (resident memory)": (
        "The memory a process actually occupies in RAM (resident set size). It shows what the local index "
        "and the service cost in memory on the server."
    ),
    "p50 / p95 / p99 latency": (
        "Response times: p50 is the typical (median) time, p95 the time 95 in 100 questions stay under, "
        "p99 the time 99 in 100 stay under. The high percentiles show the slow cases users notice."
    ),
    "chunk": (
        "A piece of a document (a few paragraphs) stored and searched on its own. Answers are built from "
        "the chunks a search returns."
    ),
    "embedding": (
        "A list of numbers (a vector) that represents the meaning of a text, computed by an embedding "
        "model. Texts with similar meaning get nearby vectors, which is what the search uses."
    ),
    "dimension": (
        "How many numbers one embedding has (for example 384 or 1536). The questions and the stored chunks "
        "must be embedded by the same model with the same dimension."
    ),
    "collection": (
        "Chroma's name for one searchable set of chunks with their embeddings and metadata (like a table in "
        "a database). The migration loads the export into a new collection."
    ),
    "hybrid retrieval": (
        "Searching two ways at once, by meaning (embeddings) and by shared words (BM25), and merging the "
        "two result lists into one."
    ),
    "alpha": (
        "In hybrid retrieval, the weight of the meaning-based search against the keyword search: 1 is "
        "embeddings only, 0 keywords only, 0.3 mostly keywords."
    ),
    "BM25": (
        "A classic keyword-matching score: a chunk ranks higher the more of the question's words it "
        "contains, rare words counting more. It needs no embedding model."
    ),
    "sparse index": (
        "The keyword index (BM25) kept beside the Chroma collection for hybrid retrieval; it is updated "
        "and backed up together with the collection."
    ),
    "reranking": (
        "A second, slower model that re-orders the first results of a search by how well each answers the "
        "question, to put the best ones first."
    ),
    "cutover": (
        "The moment the RAG service is switched from the cloud index to the local one, checked by test "
        "questions right after the switch and undone automatically if they fail."
    ),
    "rollback": (
        "Switching the RAG service back to the cloud index (the configuration from before the cutover). "
        "The cloud index is kept until the local one has proven itself."
    ),
    "dry run": (
        "A run that checks and shows what it would do without creating, changing or switching anything."
    ),
    "rehearsal": (
        "A run against a local LlamaCloud-compatible server filled with a demo corpus instead of the "
        "production index, to practise the whole migration safely. Its numbers describe the rehearsal, "
        "not production."
    ),
    "injected latency": (
        "In a rehearsal, a delay added on purpose to every answer of the local stand-in for LlamaCloud, so "
        "that its response times resemble a cloud service's network round trip."
    ),
    "hand-off": (
        "The small record each phase leaves for the next (what it produced, verified and where), so a later "
        "phase continues from checked facts instead of assumptions."
    ),
    "manifest": (
        "The run's record (manifest.json): parameters, software versions, code version, each phase's "
        "status and timing, and fingerprints of the files involved."
    ),
    "sha256": (
        "A fingerprint of a file's exact content: any change to the file gives a different sha256. It "
        "proves that the data checked is the data loaded."
    ),
    "export shard": (
        "One of the files the export from LlamaCloud is split into, each holding a batch of chunks with "
        "its own fingerprint, so a large export is written and verified piece by piece."
    ),
}


def anchor(term: str) -> str:
    """The id of a term on glossary.html: lower case, words joined by ``-``, ``@`` read as "at", anything
    in parentheses left out ("MRR (mean reciprocal rank)" -> ``mrr``)."""
    t = re.sub(r"\([^)]*\)", " ", term).replace("@", " at ").lower()
    return re.sub(r"[^0-9a-z]+", "-", t).strip("-") or "term"


def anchor_for(word: str) -> str | None:
    """The glossary anchor for a word as it appears in a table or sentence, or None: ``hit@5`` ->
    ``hit-at-k``, ``recall@10`` -> ``recall-at-k``, ``p95`` -> ``p50-p95-p99-latency``, ``MRR`` -> ``mrr``."""
    w = word.strip()
    w = re.sub(r"@\d+\b", "@k", w)
    if re.fullmatch(r"p(50|95|99)(\s*latency)?", w, re.IGNORECASE):
        return anchor("p50 / p95 / p99 latency")
    known = {anchor(t) for t in TERMS}
    a = anchor(w)
    return a if a in known else None


def write_glossary(run_dir: Path) -> Path:
    """``glossary.html`` in the run folder (mode 0644): every term of ``TERMS`` with an anchor."""
    run_dir = Path(run_dir)
    ensure_assets(run_dir)
    items = []
    for term in sorted(TERMS, key=str.lower):
        items.append(f'<dt id="{anchor(term)}">{html.escape(term)}</dt>\n<dd>{html.escape(TERMS[term])}</dd>')
    body = (
        "<h1>Glossary</h1>\n<p>The words the report uses, in plain language.</p>\n"
        '<dl class="glossary">\n' + "\n".join(items) + "\n</dl>"
    )
    out = run_dir / "glossary.html"
    atomic.write_text(out, page("Glossary", body, nav=None), mode=FILE_MODE)
    return out
