"""Report pages: the shared assets of a run folder, the one page shell, and phase pages from notebooks.

Every page lives at the top of the run folder (``outputs/<run id>/<page>.html``) and refers only to
``assets/report.css`` and, when it draws figures, ``assets/plotly.min.js`` (one copy per run folder instead
of 4.8 MB of plotly.js inlined in every page). Nothing refers to a CDN: the pages open offline.
"""

from __future__ import annotations

import copy
import html
import json
import re
from pathlib import Path

from .. import atomic

PLOTLY_MIME = "application/vnd.plotly.v1+json"  # what display.show_figure publishes
WIDGET_VIEW_MIME = "application/vnd.jupyter.widget-view+json"
PAPERMILL_ERROR_TAG = "papermill-error-cell-tag"
FILE_MODE = 0o644
ASSETS = "assets"

FOLD_ROWS = 12  # a table with more body rows than this is folded ...
FOLD_COLS = 8  # ... and so is one with more columns than this
PREVIEW_ROWS = 10  # a folded long table shows this many rows above the fold

PHASE_NAMES = {
    "00_preflight": "Preflight",
    "01_extract": "Extract from LlamaCloud",
    "02_init_chroma": "Create the Chroma collection",
    "03_migrate": "Load and verify",
    "04_rag_service": "RAG service switch",
    "05_ab_compare": "A/B compare (cloud vs local)",
    "06_cutover": "Cutover",
    "07_update_vectors": "Update vectors",
    "08_monitor": "Monitoring",
}

STATUS_CLASS = {
    "PASS": "pass",
    "FAIL": "fail",
    "DRY RUN": "dry-run",
    "AWAITING APPROVAL": "awaiting-approval",
    "INTERRUPTED": "interrupted",
    "NOT RUN": "not-run",
}

REPORT_CSS = """\
/* The runbook report: one stylesheet for every page of a run folder. */
:root { --fg: #1f2328; --muted: #59636e; --line: #d0d7de; --zebra: #f6f8fa; --link: #0b57d0; }
* { box-sizing: border-box; }
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, "Noto Sans", "Noto Sans KR",
       "Apple SD Gothic Neo", "Malgun Gothic", Arial, sans-serif;
       color: var(--fg); line-height: 1.5; margin: 0 auto; padding: 0 1.2em 3em; max-width: 1100px; }
a { color: var(--link); }
h1, h2, h3 { line-height: 1.25; }
h1 { font-size: 1.7em; margin-top: .6em; }
h2 { font-size: 1.35em; margin-top: 1.6em; border-bottom: 1px solid var(--line); padding-bottom: .2em; }
code, pre { font-family: ui-monospace, "SFMono-Regular", Menlo, Consolas, monospace; font-size: .9em; }
pre { white-space: pre-wrap; word-break: break-word; background: var(--zebra); padding: .6em .8em;
      border-radius: 4px; overflow-x: auto; }
.anchor-link { display: none; }

/* navigation */
nav.topnav, nav.bottomnav { display: flex; flex-wrap: wrap; gap: .4em 1.2em; align-items: center;
      padding: .6em 0; border-bottom: 1px solid var(--line); margin-bottom: 1em; font-size: .95em; }
nav.bottomnav { border-bottom: 0; border-top: 1px solid var(--line); margin: 2em 0 0; }
nav a { text-decoration: none; }
nav a:hover { text-decoration: underline; }
nav .prev { margin-right: auto; }
nav .next { margin-left: auto; }

/* the rehearsal (or other context) banner */
.banner { padding: .7em 1em; margin: .8em 0; border-radius: 6px; font-weight: 600;
          background: #ddeeff; border: 2px solid #1f6feb; color: #0a3069; }

/* the verdict box: the page's answer first */
.verdict { padding: 1em 1.2em; margin: 1em 0 1.5em; border-radius: 8px; border: 3px solid; }
.verdict .status { font-size: 1.8em; font-weight: 800; letter-spacing: .04em; display: block; }
.verdict .reason { font-size: 1.1em; white-space: pre-line; margin: .3em 0 0; }
.verdict .todo { margin: .6em 0 0; white-space: pre-line; }
.verdict.pass { background: #dafbe1; border-color: #1a7f37; color: #0f3d1f; }
.verdict.fail, .verdict.interrupted { background: #ffebe9; border-color: #cf222e; color: #5c0a10; }
.verdict.dry-run, .verdict.awaiting-approval { background: #fff8c5; border-color: #bf8700; color: #4d2d00; }
.verdict.unknown, .verdict.not-run { background: #f6f8fa; border-color: #59636e; }

/* a verdict in a table cell (summary and index pages: <td class="status pass">) */
td.status { font-weight: 700; white-space: nowrap; }
td.status.pass { background: #dafbe1; color: #0f3d1f; }
td.status.fail, td.status.interrupted { background: #ffebe9; color: #5c0a10; }
td.status.dry-run, td.status.awaiting-approval { background: #fff8c5; color: #4d2d00; }
td.status.not-run { background: #f6f8fa; color: var(--muted); }

/* tables (pandas Styler output and markdown tables) */
table { border-collapse: collapse; margin: .8em 0; font-size: .92em; }
th, td { border: 1px solid var(--line); padding: .3em .6em; vertical-align: top; text-align: left; }
thead th, tr:first-child > th { background: #eaeef2; }
tbody tr:nth-child(even) > td { background-color: var(--zebra); }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
caption { caption-side: top; text-align: left; font-weight: 600; padding: .2em 0; color: var(--muted); }
.output_html, .table-fold { overflow-x: auto; }
.table-note { color: var(--muted); font-size: .9em; margin: .8em 0 0; }

/* folded content */
details { margin: .6em 0; border: 1px solid var(--line); border-radius: 6px; padding: .3em .8em; }
details > summary { cursor: pointer; font-weight: 600; color: var(--link); padding: .2em 0; }
details[open] > summary { margin-bottom: .4em; }

/* errors */
.error { background: #ffebe9; border-left: 6px solid #cf222e; padding: .6em 1em; margin: .8em 0;
         white-space: pre-wrap; word-break: break-word; }
details.traceback pre { font-size: .8em; }

/* figures */
.figure { width: 100%; margin: .8em 0; }
.figure-missing { color: var(--muted); font-style: italic; }

/* glossary */
dl.glossary dt { font-weight: 700; margin-top: 1em; scroll-margin-top: 1em; }
dl.glossary dd { margin: .2em 0 0 1.4em; }
dl.glossary dt:target, dl.glossary dt:target + dd { background: #fff8c5; }
"""


# ------------------------------------------------------------------------------------------- assets


SHARED_ASSETS = ".assets"  # beside the run folders: one stored plotly.js that run folders hard-link


def ensure_assets(run_dir: Path, plotly: bool = False) -> None:
    """Write ``assets/report.css`` into a run folder and, for a folder with figures (``plotly``),
    ``assets/plotly.min.js`` from the installed plotly package (offline). A file already holding the same
    content is left alone.

    plotly.js is 4.7 MB: each run folder holds it whole (a folder is copied and read on its own), but as a
    hard link to one stored copy beside the run folders (``<outputs>/.assets/``) where the filesystem
    allows, so hourly monitoring runs do not cost 4.7 MB each."""
    run_dir = Path(run_dir)
    assets = run_dir / ASSETS
    if not assets.is_dir():
        assets.mkdir(parents=True, exist_ok=True)
        assets.chmod(0o755)
    _write_if_changed(assets / "report.css", REPORT_CSS.encode("utf-8"))
    if plotly:
        _place_plotly(assets / "plotly.min.js", run_dir.parent / SHARED_ASSETS)


def _place_plotly(target: Path, store: Path) -> None:
    import hashlib
    import os

    data = _plotly_js()
    if target.is_file() and target.stat().st_size == len(data) and target.read_bytes() == data:
        return
    shared = store / f"plotly-{hashlib.sha256(data).hexdigest()[:16]}.min.js"
    try:
        store.mkdir(exist_ok=True)
        _write_if_changed(shared, data)
        tmp = target.with_name(f".{target.name}.link")
        tmp.unlink(missing_ok=True)
        os.link(shared, tmp)
        os.replace(tmp, target)
    except OSError:  # no hard links here (another filesystem, a read-only store): a copy of its own
        _write_if_changed(target, data)


_PLOTLY_JS: bytes | None = None


def _plotly_js() -> bytes:
    global _PLOTLY_JS
    if _PLOTLY_JS is None:
        from plotly.offline import get_plotlyjs

        _PLOTLY_JS = get_plotlyjs().encode("utf-8")
    return _PLOTLY_JS


def _write_if_changed(path: Path, data: bytes) -> None:
    try:
        if path.stat().st_size == len(data) and path.read_bytes() == data:
            if path.stat().st_mode & 0o777 != FILE_MODE:
                path.chmod(FILE_MODE)
            return
    except FileNotFoundError:
        pass
    atomic.write_bytes(path, data, mode=FILE_MODE)


# ---------------------------------------------------------------------------------------- the shell


def page(
    title: str,
    body_html: str,
    *,
    nav: dict | None,
    verdict: dict | None = None,
    banner: str = "",
    scripts: bool = False,
) -> str:
    """The one page shell of the report.

    ``nav`` = ``{"prev": (href, label) | None, "next": (href, label) | None}`` (or None): the bar always
    links ``summary.html``, ``index.html`` and ``glossary.html`` too. ``banner`` is plain text (a
    rehearsal notice). ``verdict`` = ``{"status": "PASS" | "FAIL" | "DRY RUN" | "AWAITING APPROVAL" |
    "INTERRUPTED" | "NOT RUN", "reason": str, "todo": str (optional)}`` becomes a coloured box above the
    body (``STATUS_CLASS`` names its CSS class; ``td class="status <class>"`` colours a table cell alike).
    ``scripts`` loads ``assets/plotly.min.js`` (pages with figures). ``body_html`` is inserted as is.
    """
    head_script = f'<script src="{ASSETS}/plotly.min.js"></script>\n' if scripts else ""
    banner_html = f'<div class="banner">{html.escape(banner)}</div>\n' if banner else ""
    return (
        "<!doctype html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{html.escape(title)}</title>\n"
        f'<link rel="stylesheet" href="{ASSETS}/report.css">\n'
        f"{head_script}</head>\n<body>\n"
        f"{_nav_html(nav, 'topnav')}\n"
        f"{banner_html}"
        f"{verdict_html(verdict) if verdict else ''}"
        f"<main>\n{body_html}\n</main>\n"
        f"{_nav_html(nav, 'bottomnav')}\n"
        "</body>\n</html>\n"
    )


def _nav_html(nav: dict | None, cls: str) -> str:
    nav = nav or {}
    parts = []
    prev, nxt = nav.get("prev"), nav.get("next")
    if prev:
        parts.append(f'<a class="prev" rel="prev" href="{_local_href(prev[0])}">← {html.escape(prev[1])}</a>')
    for href, label in (
        ("summary.html", "Summary"),
        ("index.html", "All phases"),
        ("glossary.html", "Glossary"),
    ):
        parts.append(f'<a href="{href}">{label}</a>')
    if nxt:
        parts.append(f'<a class="next" rel="next" href="{_local_href(nxt[0])}">{html.escape(nxt[1])} →</a>')
    return f'<nav class="{cls}">' + " ".join(parts) + "</nav>"


def _local_href(href: str) -> str:
    if re.match(r"^\s*(?:[a-z][a-z0-9+.-]*:|//)", href, re.IGNORECASE):
        raise ValueError(f"report pages link only to files of the run folder, not {href!r}")
    return html.escape(href, quote=True)


def verdict_html(verdict: dict) -> str:
    """The coloured verdict box: the status word, the reason and "What to do first: …" when known."""
    status = str(verdict.get("status", "")).strip().upper()
    cls = STATUS_CLASS.get(status, "unknown")
    reason = str(verdict.get("reason") or "")
    todo = str(verdict.get("todo") or "")
    out = [f'<div class="verdict {cls}" role="status">', f'<span class="status">{html.escape(status)}</span>']
    if reason:
        out.append(f'<p class="reason">{html.escape(reason)}</p>')
    if todo:
        out.append(f'<p class="todo"><b>What to do first:</b> {html.escape(todo)}</p>')
    out.append("</div>\n")
    return "\n".join(out)


# ------------------------------------------------------------------------------------- phase pages


def phase_title(stem: str) -> str:
    """``05_ab_compare`` -> ``Phase 05 · A/B compare (cloud vs local)``. A numbered stem without a
    readable name keeps its own words (``09_new_step`` -> ``Phase 09 · new step``); anything else is
    returned as it is."""
    m = re.match(r"^(\d\d)_(.+)$", stem)
    if not m:
        return stem
    name = PHASE_NAMES.get(stem) or m.group(2).replace("_", " ")
    return f"Phase {m.group(1)} · {name}"


def render_phase_page(
    nb_path: Path,
    *,
    run_dir: Path,
    title: str,
    nav: dict,
    verdict: dict | None,
    banner: str = "",
) -> Path:
    """Code-hidden HTML of an executed notebook, written beside it as ``<stem>.html`` (mode 0644).

    What the reader sees: markdown and outputs without code or prompts (nbconvert's ``basic`` template:
    no MathJax, require.js or mermaid from a CDN); no stderr streams or progress-bar widgets (they stay in
    the .ipynb); Plotly figures drawn by the run folder's one ``assets/plotly.min.js``; an error as
    the error's kind and message with its traceback folded, ANSI colour codes removed, and papermill's "An Exception
    was encountered" cells dropped; tables of more than 12 rows or 8 columns folded into ``<details>``
    (a long table keeps its first 10 rows visible above the fold).

    ``verdict`` None on a notebook that stopped on an error: the verdict is derived from that error
    (``derive_verdict``).
    """
    import nbformat
    from nbconvert import HTMLExporter

    nb_path = Path(nb_path)
    nb = nbformat.read(nb_path, as_version=4)
    first_error = _prepare(nb)
    n_figures = _plotly_outputs_to_divs(nb)
    ensure_assets(run_dir, plotly=n_figures > 0)
    if verdict is None and first_error is not None:
        verdict = derive_verdict(first_error.get("ename", ""), first_error.get("evalue", ""))
    exporter = HTMLExporter(
        template_name="basic", exclude_input=True, exclude_input_prompt=True, exclude_output_prompt=True
    )
    body, _ = exporter.from_notebook_node(nb)
    body = postprocess_body(body)
    text = page(title, body, nav=nav, verdict=verdict, banner=banner, scripts=n_figures > 0)
    out = nb_path.with_suffix(".html")
    atomic.write_text(out, text, mode=FILE_MODE)
    return out


def _prepare(nb) -> dict | None:
    """Drop what the reader does not need and turn error outputs into readable HTML, in place.
    Returns the first error output (before rendering) or None."""
    import nbformat

    first_error = None
    cells = []
    for cell in nb.cells:
        if _is_papermill_banner(cell):
            continue
        outputs = []
        for o in cell.get("outputs", []):
            kind = o.get("output_type")
            if kind == "stream" and o.get("name") == "stderr":
                continue  # progress bars and library chatter stay in the .ipynb
            data = o.get("data") or {}
            if WIDGET_VIEW_MIME in data:
                continue  # a progress-bar widget: nothing to show without a widget manager (from a CDN)
            if kind == "error":
                if o.get("ename") == "SystemExit" and str(o.get("evalue", "")) in ("", "0"):
                    continue  # papermill does not count a clean exit as an error either
                if first_error is None:
                    first_error = dict(o)
                o = nbformat.v4.new_output("display_data", data={"text/html": error_html(o)})
            outputs.append(o)
        if "outputs" in cell:
            cell["outputs"] = outputs
        cells.append(cell)
    nb.cells = cells
    nb.metadata.pop("widgets", None)  # widget state is only for a widget manager
    return first_error


def _is_papermill_banner(cell) -> bool:
    if PAPERMILL_ERROR_TAG in (cell.get("metadata", {}).get("tags") or []):
        return True
    if cell.get("cell_type") in ("markdown", "raw"):
        src = cell.get("source") or ""
        return "An Exception was encountered at" in src or 'id="papermill-error-cell"' in src
    return False


_ANSI = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)|[@-Z\\-_])")


def strip_ansi(text: str) -> str:
    return _ANSI.sub("", text)


def error_html(output: dict) -> str:
    """An error output as the reader sees it: the error's kind and message, the traceback folded, no ANSI codes."""
    ename = strip_ansi(str(output.get("ename") or "Error"))
    evalue = strip_ansi(str(output.get("evalue") or ""))
    tb = output.get("traceback") or []
    tb_text = strip_ansi("\n".join(tb) if isinstance(tb, list) else str(tb))
    out = f'<div class="error"><b>{html.escape(ename)}</b>: {html.escape(evalue)}</div>'
    if tb_text.strip():
        out += (
            '\n<details class="traceback"><summary>Technical details (traceback)</summary>'
            f"<pre>{html.escape(tb_text)}</pre></details>"
        )
    return out


_FIX_VERBS = (
    "run|re-run|rerun|set|unset|free|stop|remove|check|delete|start|restart|install|add|use|pass|give|"
    "fix|wait|approve|create|increase|lower|raise|move|export|edit|open|ask|make|choose|copy|point|rename|"
    "reduce|retry|try"
)
_FIX = re.compile(rf"(?:^|(?<=[:;.!?—])[ \t]+|\n[ \t]*)(?P<todo>(?:{_FIX_VERBS})\b[^\n]*)", re.IGNORECASE)


def derive_verdict(ename: str, evalue: str) -> dict:
    """A FAIL verdict from the error a notebook stopped on (INTERRUPTED for a KeyboardInterrupt).

    The library's messages name the fix after a colon, a semicolon or a full stop, or on a line of its
    own ("no hand-off from phase 02 …: run phase 02 first (…)"). So:

    - ``todo`` is the first clause that starts with an imperative verb (run, set, free, stop, remove,
      check, …) after ``:``/``;``/``.``/``—`` or at the start of a line, up to the end of that line;
      without one, the rest of the message after its first line (a check list); else empty;
    - ``reason`` is the first line of the message, without the fix when the fix sat on that line (and
      without a trailing colon); the exception's name when the message is empty.
    """
    ename = strip_ansi(str(ename or ""))
    text = strip_ansi(str(evalue or "")).strip()
    first, _, rest = text.partition("\n")
    first, rest = first.strip(), rest.strip()
    todo = ""
    reason = first
    m = _FIX.search(text)
    if m:
        todo = m.group("todo").strip()
        if m.start("todo") < len(first) and m.start("todo") > 0:
            reason = first[: m.start("todo")].rstrip().rstrip(":;—").rstrip()
    elif rest:
        todo = rest
    reason = reason.rstrip(":").rstrip() or ename or "the notebook stopped on an error"
    status = "INTERRUPTED" if ename == "KeyboardInterrupt" else "FAIL"
    return {"status": status, "reason": reason, "todo": todo}


def _plotly_outputs_to_divs(nb) -> int:
    """Every Plotly output becomes a ``<div>`` and an inline ``Plotly.newPlot`` call (the script comes
    once, from ``assets/plotly.min.js``). Returns how many figures the notebook has."""
    n = 0
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            data = out.get("data") or {}
            if PLOTLY_MIME not in data:
                continue
            fig = data[PLOTLY_MIME]
            if isinstance(fig, str):
                fig = json.loads(fig)
            n += 1
            out["data"] = {"text/html": figure_html(fig, f"figure-{n}")}
    return n


def figure_html(fig: dict, div_id: str) -> str:
    """A ``<div>`` and the script that draws ``fig`` (Plotly's JSON: ``data``, ``layout``) into it."""
    layout = fig.get("layout") or {}
    height = layout.get("height")
    height_css = f"{int(height)}px" if isinstance(height, (int, float)) and height > 0 else "450px"
    data_js, layout_js = _js_json(fig.get("data") or []), _js_json(layout)
    return (
        f'<div id="{div_id}" class="figure plotly-graph-div" style="height:{height_css};width:100%"></div>\n'
        "<script>(function(){"
        f'var el=document.getElementById("{div_id}");'
        "if(!window.Plotly){el.className+=' figure-missing';el.style.height='auto';"
        "el.textContent='This figure needs assets/plotly.min.js beside this page.';return;}"
        f'Plotly.newPlot(el,{data_js},{layout_js},{{"displaylogo":false,"responsive":true}});'
        "})();</script>"
    )


def _js_json(obj) -> str:
    """JSON that is safe inside a ``<script>`` element (no ``</script>`` or ``<!--`` can appear)."""
    text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False, default=str)
    return (
        text.replace("<", "\\u003c")
        .replace(">", "\\u003e")
        .replace("&", "\\u0026")
        .replace("\u2028", "\\u2028")
        .replace("\u2029", "\\u2029")
    )


# ------------------------------------------------------------------------------------------- tables

_NUMBER = re.compile(
    r"^[\s\u00a0]*[-+−]?(?:\d{1,3}(?:,\d{3})+|\d+)?(?:\.\d+)?(?:e[-+]?\d+)?"
    r"\s*(?:%|ms|s|x|×|[kMG]i?B|B|KB|MB|GB|TB|bytes)?[\s\u00a0]*$",
    re.IGNORECASE,
)


def _is_number(text: str) -> bool:
    t = text.strip()
    return bool(t) and any(c.isdigit() for c in t) and bool(_NUMBER.match(t))


def postprocess_body(body: str) -> str:
    """Structural touches on the rendered body: numbers right-aligned (``td.num``), long or wide tables
    folded into ``<details>``."""
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(body, "html.parser")
    for td in soup.find_all(["td", "th"]):
        if td.find(["table", "div", "pre"]) is None and _is_number(td.get_text()):
            td["class"] = [*td.get("class", []), "num"]
    for table in soup.find_all("table"):
        if table.find_parent("table") is not None:
            continue
        _fold_table(soup, table)
    return str(soup)


def _table_shape(table) -> tuple[list, int]:
    """(body rows, columns) of a table, not looking into nested tables."""
    rows = [tr for tr in table.find_all("tr") if tr.find_parent("table") is table]
    body = [tr for tr in rows if tr.find_parent("thead") is None and tr.find(["td"], recursive=False)]
    if not body:
        body = [tr for tr in rows if tr.find_parent("thead") is None]
    cols = 0
    for tr in rows:
        n = 0
        for cell in tr.find_all(["td", "th"], recursive=False):
            try:
                n += max(1, int(cell.get("colspan", 1)))
            except ValueError:
                n += 1
        cols = max(cols, n)
    return body, cols


def _fold_table(soup, table) -> None:
    body_rows, n_cols = _table_shape(table)
    n_rows = len(body_rows)
    long, wide = n_rows > FOLD_ROWS, n_cols > FOLD_COLS
    if not (long or wide):
        return
    shape = f"{n_rows} rows × {n_cols} columns"
    caption = table.find("caption")
    cap_text = caption.get_text(" ", strip=True) if caption is not None else ""
    wrap = soup.new_tag("div", attrs={"class": "table-fold"})
    table.replace_with(wrap)
    note = soup.new_tag("p", attrs={"class": "table-note"})
    what = f"“{cap_text}”: " if cap_text else "This table has "
    if long:
        note.string = (
            f"{what}{shape}; the first {PREVIEW_ROWS} rows are shown, the full table is folded below."
        )
    else:
        note.string = f"{what}{shape}; it is folded below to keep the page readable."
    wrap.append(note)
    if long:
        wrap.append(_preview(soup, table, body_rows[PREVIEW_ROWS:]))
    details = soup.new_tag("details", attrs={"class": "table-fold"})
    summary = soup.new_tag("summary")
    summary.string = f"Show all {shape}"
    details.append(summary)
    details.append(table)
    wrap.append(details)


def _preview(soup, table, hidden_rows):
    """A copy of ``table`` without ``hidden_rows``; ids are removed (the full table keeps them) and the
    Styler's per-id colours are copied onto the cells as inline styles."""
    id_styles = _styles_by_id(soup)
    # mark the rows to drop on the original, copy, then unmark
    for tr in hidden_rows:
        tr["data-fold-hidden"] = "1"
    preview = copy.copy(table)
    for tr in hidden_rows:
        del tr["data-fold-hidden"]
    for tr in preview.find_all("tr", attrs={"data-fold-hidden": "1"}):
        tr.decompose()
    for el in [preview, *preview.find_all(True)]:
        el_id = el.get("id")
        if el_id is None:
            continue
        if el_id in id_styles:
            el["style"] = (el.get("style", "") + ";" + id_styles[el_id]).strip(";")
        del el["id"]
    preview["class"] = [*preview.get("class", []), "table-preview"]
    return preview


_CSS_RULE = re.compile(r"([^{}]+)\{([^{}]*)\}")


def _styles_by_id(soup) -> dict[str, str]:
    out: dict[str, str] = {}
    for style in soup.find_all("style"):
        for selectors, decls in _CSS_RULE.findall(style.get_text()):
            decls = " ".join(decls.split())
            for sel in selectors.split(","):
                m = re.fullmatch(r"\s*#([\w-]+)\s*", sel)
                if m and decls:
                    out[m.group(1)] = (out.get(m.group(1), "") + " " + decls).strip()
    return out
