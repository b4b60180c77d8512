"""Plotly figures that stakeholders read in the HTML report (rendered offline via ``display``)."""

from __future__ import annotations

import json
import os

import pandas as pd
import plotly.express as px

from . import export_format


def export_frame(
    export_dir: str | os.PathLike, with_tokens: bool = True, max_rows: int = 200_000
) -> pd.DataFrame:
    """Per-chunk statistics of an export (document, text length, tokens), capped at ``max_rows`` rows."""
    exp = export_format.open_export(export_dir)
    tok = None
    if with_tokens:
        from llama_index.core.utils import get_tokenizer

        tok = get_tokenizer()
    rows = []
    for batch in exp.iter_chunk_batches(columns=["document_id", "text", "metadata_json"]):
        for r in batch.to_pylist():
            meta = json.loads(r["metadata_json"])
            rows.append(
                {
                    "document_id": r["document_id"],
                    "file_name": meta.get("file_name", ""),
                    "chars": len(r["text"]),
                    "tokens": len(tok(r["text"])) if tok else None,
                }
            )
            if len(rows) >= max_rows:
                return pd.DataFrame(rows)
    return pd.DataFrame(rows)


def export_figures(df: pd.DataFrame) -> list:
    per_doc = df.groupby("document_id").size().rename("chunks").reset_index()
    figs = [
        px.histogram(
            per_doc, x="chunks", title="Chunks per document", labels={"chunks": "chunks in a document"}
        ),
        px.histogram(df, x="chars", nbins=40, title="Chunk text length (characters)"),
    ]
    if df["tokens"].notna().any():
        figs.append(px.histogram(df, x="tokens", nbins=40, title="Tokens per chunk (cl100k)"))
    for f in figs:
        f.update_layout(height=320, bargap=0.05, yaxis_title="count")
    return figs
