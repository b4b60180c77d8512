"""The report pages: one offline page shell, phase pages from executed notebooks, the glossary."""

from __future__ import annotations

import json
import re

import nbformat
import pandas as pd
import plotly.express as px
import pytest
from bs4 import BeautifulSoup
from papermill.execute import ERROR_ANCHOR_MSG, ERROR_MARKER_TAG, ERROR_MESSAGE_TEMPLATE
from plotly.offline import get_plotlyjs

from runbook.display import PLOTLY_MIME
from runbook.report import glossary, pages

KOREAN = "공복혈당"
NAV = {
    "prev": ("04_rag_service.html", "Phase 04 · RAG service switch"),
    "next": ("06_cutover.html", "Cutover"),
}


def _styler_html(df: pd.DataFrame, caption: str = "") -> str:
    styler = df.style.hide(axis="index").format(escape="html")  # as display.table shows a table
    if caption:
        styler = styler.set_caption(caption)
    return styler.to_html()


def _html_output(text: str) -> dict:
    return nbformat.v4.new_output("display_data", data={"text/html": text, "text/plain": "<table>"})


def _figure_notebook(path):
    fig = px.bar(x=["cloud", "local"], y=[0.91, 0.93], title=f"{KOREAN} hit@5 per arm")
    long = pd.DataFrame({"question": [f"row-{i}" for i in range(20)], "hit": [i % 2 for i in range(20)]})
    long["latency ms"] = [1234.5 + i for i in range(20)]
    wide = pd.DataFrame({f"col{j}": [f"w{i}-{j}" for i in range(3)] for j in range(10)})
    small = pd.DataFrame({"item": ["queries", KOREAN], "value": ["145", "ok"]})
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_markdown_cell(
            f"# 05 · Cloud vs local\n\n**Purpose.** Compare {KOREAN} answers.\n\n- first point\n- second point\n\n"
            "| a | b |\n|---|---|\n| 1 | 2 |\n"
        ),
        nbformat.v4.new_code_cell("show_figure(fig)"),
        nbformat.v4.new_code_cell("table(long); table(wide); table(small)"),
    ]
    nb.cells[1].outputs = [
        nbformat.v4.new_output(
            "display_data",
            data={PLOTLY_MIME: json.loads(fig.to_json()), "text/plain": "<Plotly figure>"},
        ),
        nbformat.v4.new_output("stream", name="stderr", text="Batches: 100%|##########| chatter-on-stderr\n"),
    ]
    nb.cells[2].outputs = [
        _html_output(_styler_html(long, caption="per query")),
        _html_output(_styler_html(wide)),
        _html_output(_styler_html(small, caption="small one")),
    ]
    nbformat.write(nb, path)
    return path


ANSI_TB = [
    "\x1b[0;31m---------------------------------------------------------------------------\x1b[0m",
    "\x1b[0;31mCheckFailed\x1b[0m                               Traceback (most recent call last)",
    "Cell \x1b[0;32mIn[7], line 3\x1b[0m\n\x1b[1;32m----> 3\x1b[0m checks(rows)",
    "\x1b[0;31mCheckFailed\x1b[0m: 2 check(s) failed:\n- recall: 0.31 < 0.4\n- latency: p95 120 ms > 99 ms",
]


def _error_notebook(path, evalue="2 check(s) failed:\n- recall: 0.31 < 0.4\n- latency: p95 120 ms > 99 ms"):
    nb = nbformat.v4.new_notebook()
    banner = nbformat.v4.new_markdown_cell(ERROR_MESSAGE_TEMPLATE % "7")
    banner.metadata["tags"] = [ERROR_MARKER_TAG]
    anchor = nbformat.v4.new_markdown_cell(ERROR_ANCHOR_MSG)
    anchor.metadata["tags"] = [ERROR_MARKER_TAG]
    failing = nbformat.v4.new_code_cell("checks(rows)")
    failing.outputs = [
        nbformat.v4.new_output("error", ename="CheckFailed", evalue=evalue, traceback=ANSI_TB),
    ]
    nb.cells = [banner, nbformat.v4.new_markdown_cell("# 03 · Load and verify"), anchor, failing]
    nbformat.write(nb, path)
    return path


def _refs(text: str) -> list[str]:
    return re.findall(r"""\b(?:src|href)\s*=\s*["']?([^"'\s>]+)""", text, re.IGNORECASE)


def _in_details(tag) -> bool:
    return tag.find_parent("details") is not None


def test_figure_page_uses_the_shared_plotly_script_and_the_shell(tmp_path):
    nb = _figure_notebook(tmp_path / "05_ab_compare.ipynb")
    out = pages.render_phase_page(
        nb, run_dir=tmp_path, title=pages.phase_title("05_ab_compare"), nav=NAV, verdict=None
    )
    assert out == tmp_path / "05_ab_compare.html"
    text = out.read_text(encoding="utf-8")

    js = tmp_path / "assets" / "plotly.min.js"
    assert js.read_text(encoding="utf-8") == get_plotlyjs()
    assert [p.name for p in tmp_path.rglob("plotly*.js")] == ["plotly.min.js"]
    assert text.count('<script src="assets/plotly.min.js"></script>') == 1
    assert "Plotly.newPlot(" in text and 'id="figure-1"' in text
    assert "displaylogo" in text and PLOTLY_MIME not in text
    assert len(text.encode("utf-8")) < 200_000  # plotly.js (4.8 MB) is not inlined
    assert "function(t,e){" not in text[:5000]  # no minified library in the page head

    refs = _refs(text)
    assert refs and not [r for r in refs if re.match(r"(?i)^(https?:)?//", r)]
    assert "cdn" not in text.lower() and "mathjax" not in text.lower() and "require.js" not in text.lower()
    assert "assets/report.css" in refs

    assert "<title>Phase 05 · A/B compare (cloud vs local)</title>" in text
    for href in ("04_rag_service.html", "06_cutover.html", "summary.html", "index.html", "glossary.html"):
        assert href in refs
    assert "chatter-on-stderr" not in text  # stderr stays in the .ipynb
    assert KOREAN in text and f"{KOREAN} hit@5 per arm" in text  # figure title not \u-escaped
    assert "In&nbsp;[" not in text and "show_figure(fig)" not in text  # code and prompts hidden

    soup = BeautifulSoup(text, "html.parser")
    assert "Cloud vs local" in soup.find("main").find("h1").get_text()
    assert [li.get_text() for li in soup.find_all("li")] == ["first point", "second point"]
    assert soup.find("strong", string="Purpose.")

    # the 20-row table: folded, its first 10 rows visible above the fold
    last = [td for td in soup.find_all("td") if td.get_text() == "row-19"]
    assert last and all(_in_details(td) for td in last)
    first = [td for td in soup.find_all("td") if td.get_text() == "row-0"]
    assert any(not _in_details(td) for td in first) and any(_in_details(td) for td in first)
    assert not any(td.get_text() == "row-15" and not _in_details(td) for td in soup.find_all("td"))
    summaries = [s.get_text() for s in soup.find_all("summary")]
    assert "Show all 20 rows × 3 columns" in summaries
    assert "Show all 3 rows × 10 columns" in summaries  # wide: folded too
    assert all(_in_details(td) for td in soup.find_all("td") if td.get_text() == "w2-9")
    assert not any(_in_details(td) for td in soup.find_all("td") if td.get_text() == KOREAN)  # small: not
    assert "num" in soup.find("td", string="1253.500000").get("class", [])  # numbers right-aligned
    assert len(soup.find_all(id=re.compile("_row0_col0$"))) <= 3  # the preview copies no ids

    for p in (out, js, tmp_path / "assets" / "report.css"):
        assert p.stat().st_mode & 0o777 == 0o644


def test_a_page_without_figures_loads_no_script(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell(f"# 02 · {KOREAN}")]
    nbformat.write(nb, tmp_path / "02_init_chroma.ipynb")
    out = pages.render_phase_page(
        tmp_path / "02_init_chroma.ipynb", run_dir=tmp_path, title="Phase 02", nav=NAV, verdict=None
    )
    text = out.read_text(encoding="utf-8")
    assert "<script" not in text and 'class="verdict' not in text
    assert f"02 · {KOREAN}" in text


def test_error_page_shows_the_error_and_a_verdict_not_the_traceback(tmp_path):
    nb = _error_notebook(tmp_path / "03_migrate.ipynb")
    out = pages.render_phase_page(
        nb, run_dir=tmp_path, title=pages.phase_title("03_migrate"), nav=NAV, verdict=None, banner="REHEARSAL"
    )
    text = out.read_text(encoding="utf-8")
    assert "\x1b[" not in text and "[0;31m" not in text
    assert "An Exception was encountered" not in text and "papermill-error-cell" not in text
    soup = BeautifulSoup(text, "html.parser")

    err = soup.find("div", class_="error")
    assert err.find("b").get_text() == "CheckFailed"
    assert (
        err.get_text()
        == "CheckFailed: 2 check(s) failed:\n- recall: 0.31 < 0.4\n- latency: p95 120 ms > 99 ms"
    )
    tb = err.find_next_sibling("details")
    assert tb.find("summary").get_text() == "Technical details (traceback)"
    assert "Traceback (most recent call last)" in tb.find("pre").get_text()
    assert not [el for el in soup.find_all("pre") if "Traceback" in el.get_text() and not _in_details(el)]

    box = soup.find("div", class_="verdict")
    assert "fail" in box["class"]
    assert box.find(class_="status").get_text() == "FAIL"
    assert box.find(class_="reason").get_text() == "2 check(s) failed"
    assert "- recall: 0.31 < 0.4" in box.find(class_="todo").get_text()
    assert box.find(class_="todo").get_text().startswith("What to do first:")
    # order: banner, verdict, then the notebook's first element
    assert text.index('class="banner"') < text.index('class="verdict') < text.index("<h1")


def test_a_given_verdict_wins_over_the_derived_one(tmp_path):
    nb = _error_notebook(tmp_path / "06_cutover.ipynb")
    v = {"status": "INTERRUPTED", "reason": "stopped by Ctrl-C", "todo": "run phase 06 again"}
    text = pages.render_phase_page(nb, run_dir=tmp_path, title="t", nav=NAV, verdict=v).read_text("utf-8")
    assert 'class="verdict interrupted"' in text and "stopped by Ctrl-C" in text
    assert "What to do first:</b> run phase 06 again" in text


@pytest.mark.parametrize(
    ("ename", "evalue", "expected"),
    [
        (
            "MissingHandoffError",
            "no hand-off from phase 02_init_chroma under /x/state/handoff: run phase 02_init_chroma first "
            "(python -m runbook run <params> --only 02)",
            {
                "status": "FAIL",
                "reason": "no hand-off from phase 02_init_chroma under /x/state/handoff",
                "todo": "run phase 02_init_chroma first (python -m runbook run <params> --only 02)",
            },
        ),
        (
            "ParameterError",
            "approval is set by the runner; remove it from the params file",
            {
                "status": "FAIL",
                "reason": "approval is set by the runner",
                "todo": "remove it from the params file",
            },
        ),
        (
            "DiskFull",
            "/data: 2 GB free, 9 GB needed\nfree 7 GB or set base_path to a larger disk",
            {
                "status": "FAIL",
                "reason": "/data: 2 GB free, 9 GB needed",
                "todo": "free 7 GB or set base_path to a larger disk",
            },
        ),
        (
            "CheckFailed",
            "1 check(s) failed:\n- recall: 0.31 < 0.4",
            {"status": "FAIL", "reason": "1 check(s) failed", "todo": "- recall: 0.31 < 0.4"},
        ),
        ("KeyboardInterrupt", "", {"status": "INTERRUPTED", "reason": "KeyboardInterrupt", "todo": ""}),
        ("ValueError", "\x1b[1mbad value\x1b[0m", {"status": "FAIL", "reason": "bad value", "todo": ""}),
    ],
)
def test_derive_verdict(ename, evalue, expected):
    assert pages.derive_verdict(ename, evalue) == expected


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        ("PASS", "pass"),
        ("FAIL", "fail"),
        ("DRY RUN", "dry-run"),
        ("AWAITING APPROVAL", "awaiting-approval"),
        ("INTERRUPTED", "interrupted"),
        ("NOT RUN", "not-run"),
    ],
)
def test_page_shell(status, cls):
    text = pages.page(
        "Run <x> & co",
        "<p id=body>body</p>",
        nav={"prev": None, "next": ("01_extract.html", "Phase 01")},
        verdict={"status": status, "reason": "because <b>", "todo": ""},
        banner="REHEARSAL — source is the local server at http://127.0.0.1:1, not the production index",
        scripts=True,
    )
    assert text.startswith("<!doctype html>") and '<meta charset="utf-8">' in text
    assert "<title>Run &lt;x&gt; &amp; co</title>" in text
    assert f'class="verdict {cls}"' in text and "because &lt;b&gt;" in text and "What to do first" not in text
    assert text.index('class="verdict') < text.index("<p id=body>")
    assert text.index('class="banner"') < text.index('class="verdict')
    refs = _refs(text)
    assert not [r for r in refs if "//" in r]  # the banner's address is text, not a link
    assert {
        "assets/report.css",
        "assets/plotly.min.js",
        "summary.html",
        "index.html",
        "glossary.html",
    } <= set(refs)
    assert 'rel="prev"' not in text and 'href="01_extract.html"' in text
    assert f".verdict.{cls}" in pages.REPORT_CSS or f".verdict.{cls}," in pages.REPORT_CSS


def test_nav_refuses_links_out_of_the_run_folder():
    with pytest.raises(ValueError, match="run folder"):
        pages.page("t", "", nav={"prev": ("https://cdn.example.com/x.html", "x"), "next": None})


def test_ensure_assets_writes_once_and_repairs(tmp_path):
    pages.ensure_assets(tmp_path)
    css = tmp_path / "assets" / "report.css"
    before = (css.stat().st_ino, css.stat().st_mtime_ns)
    pages.ensure_assets(tmp_path)
    assert (css.stat().st_ino, css.stat().st_mtime_ns) == before  # unchanged content is not rewritten
    css.write_text("tampered", encoding="utf-8")
    pages.ensure_assets(tmp_path)
    assert css.read_text(encoding="utf-8") == pages.REPORT_CSS
    assert css.stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize(
    ("stem", "title"),
    [
        ("05_ab_compare", "Phase 05 · A/B compare (cloud vs local)"),
        ("00_preflight", "Phase 00 · Preflight"),
        ("08_monitor", "Phase 08 · Monitoring"),
        ("09_new_step", "Phase 09 · new step"),
        ("summary", "summary"),
    ],
)
def test_phase_title(stem, title):
    assert pages.phase_title(stem) == title


def test_glossary_page(tmp_path):
    out = glossary.write_glossary(tmp_path)
    assert out == tmp_path / "glossary.html" and out.stat().st_mode & 0o777 == 0o644
    text = out.read_text(encoding="utf-8")
    soup = BeautifulSoup(text, "html.parser")
    ids = [dt["id"] for dt in soup.find_all("dt")]
    assert len(ids) == len(set(ids)) == len(glossary.TERMS)
    for a in ("mrr", "rbo", "hit-at-k", "recall-at-k", "hnsw", "ef-search", "jaccard", "kendall-tau", "rss"):
        assert a in ids
    for a in ("chunk", "embedding", "collection", "bm25", "reranking", "cutover", "rollback", "dry-run"):
        assert a in ids
    for a in ("rehearsal", "hand-off", "manifest", "sha256", "export-shard", "alpha", "hybrid-retrieval"):
        assert a in ids
    assert soup.find("dt", id="mrr").find_next_sibling("dd").get_text().strip()
    assert "<title>Glossary</title>" in text and (tmp_path / "assets" / "report.css").exists()
    assert "<script" not in text
    assert glossary.anchor("MRR (mean reciprocal rank)") == glossary.anchor("MRR") == "mrr"
    assert glossary.anchor_for("hit@5") == "hit-at-k" and glossary.anchor_for("p95") == "p50-p95-p99-latency"
    assert glossary.anchor_for("recall@10") == "recall-at-k" and glossary.anchor_for("banana") is None


def test_plotly_js_only_where_figures_are_and_one_stored_copy_for_all_runs(tmp_path):
    runs = tmp_path / "outputs"
    first, second, plain = runs / "r1", runs / "r2", runs / "r3"
    for d in (first, second, plain):
        d.mkdir(parents=True)
    pages.ensure_assets(plain)
    assert not (plain / "assets" / "plotly.min.js").exists()  # a run without figures does not carry it
    pages.ensure_assets(first, plotly=True)
    pages.ensure_assets(second, plotly=True)
    a, b = first / "assets" / "plotly.min.js", second / "assets" / "plotly.min.js"
    assert (
        a.read_bytes() == b.read_bytes() and b"Plotly" in a.read_bytes()[:2000] or b"plotly" in a.read_bytes()
    )
    assert a.stat().st_ino == b.stat().st_ino  # one copy on disk, linked into each run folder
    stored = list((runs / pages.SHARED_ASSETS).glob("plotly-*.min.js"))
    assert len(stored) == 1 and stored[0].stat().st_ino == a.stat().st_ino
    a.unlink()
    a.write_text("tampered", encoding="utf-8")  # a replaced copy is put back
    pages.ensure_assets(first, plotly=True)
    assert a.read_bytes() == b.read_bytes()
