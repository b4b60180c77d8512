"""The Korean demo index (``demo-ko``): Dr.Welno's kind of content for rehearsing retrieval parity.

Korean health-checkup and medical knowledge text (``lib/data/demo_topics_ko.yaml``: checkup items, lab
values and ranges, conditions, lifestyle guidance) with the English terms and codes Korean medical writing
mixes in (HbA1c, LDL-C, γ-GTP, drug names, numbers with units). The same 50 topics, document ids, file
names and metadata as the English ``demo`` corpus; a labelled Korean question set
(``lib/data/demo_questions_ko.yaml``) of keyword-heavy questions and paraphrases.

The pipeline's preset is hybrid and reranked, as a LlamaCloud index's can be: the rehearsal server then
fuses its dense and sparse results and reranks them (``runbook.rehearsal.cloud_ranking``, an imitation).
The vectors are the offline model's, all-MiniLM-L6-v2, which was trained on English: dense retrieval alone
does poorly on Korean text, and phase 05 shows by how much.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from ..paths import PACKAGE_DATA
from . import corpus as corpus_mod

TOPICS = PACKAGE_DATA / "demo_topics_ko.yaml"
QUESTIONS = PACKAGE_DATA / "demo_questions_ko.yaml"
CHUNK_SIZE, CHUNK_OVERLAP = 160, 24  # tokens (cl100k): a Korean syllable is about one token
# a hybrid, reranked preset (LlamaCloud's documented defaults for the top-k's and rerank_top_n)
PRESET = {
    "dense_similarity_top_k": 30,
    "sparse_similarity_top_k": 30,
    "alpha": 0.5,
    "enable_reranking": True,
    "rerank_top_n": 6,
}
SECTIONS = (
    ("test", "검사 방법"),
    ("range", "참고치와 판정 기준"),
    ("risks", "위험 요인"),
    ("advice", "예방과 생활 습관"),
    ("followup", "추적 관리"),
    ("detail", "자세히 알아보기"),
)


def topics() -> list[dict]:
    return yaml.safe_load(TOPICS.read_text(encoding="utf-8"))


def document_text(t: dict) -> tuple[str, list[int]]:
    """A guide page in Korean: title, a lead paragraph, then one section per field (pages start every
    second section)."""
    lead = f"{t['ko']}은(는) 건강검진 '{t['cat']}' 영역의 항목입니다. {t['advice']}"
    blocks = [f"# {t['ko']} ({t['en']})\n{lead}\n\n"]
    for key, head in SECTIONS:
        value = t.get(key)
        if not value:
            continue
        body = ", ".join(value) + " 등이 위험 요인입니다." if isinstance(value, list) else value
        blocks.append(f"## {head}\n{body}\n\n")
    pages, pos = [], 0
    for k, block in enumerate(blocks):
        if k % 2 == 0:
            pages.append(pos)
        pos += len(block)
    return "".join(blocks).rstrip() + "\n", pages


def build(embed_cache: str | Path | None = None) -> corpus_mod.StaticCorpus:
    return corpus_mod.build_topic_corpus(
        topics(),
        document_text,
        CHUNK_SIZE,
        CHUNK_OVERLAP,
        embed_cache,
        preset=PRESET,
        file_suffix="_안내.pdf",
    )


def questions() -> list[dict]:
    """The labelled Korean question set, with each question's expected document id."""
    ids = {t["slug"]: corpus_mod.demo_document_id(i, t) for i, t in enumerate(topics())}
    out = []
    for q in yaml.safe_load(QUESTIONS.read_text(encoding="utf-8")):
        if q["slug"] not in ids:
            raise ValueError(f"{QUESTIONS}: question {q['id']} names an unknown topic {q['slug']!r}")
        out.append(
            {
                "id": q["id"],
                "question": q["question"],
                "expected_document_ids": [ids[q["slug"]]],
                "topic": q["slug"],
                "kind": q.get("kind", ""),
            }
        )
    return out
