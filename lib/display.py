"""What a notebook cell shows: tables, check lists, Plotly figures that survive HTML export offline.

Tables are written as plain HTML for readers who are not engineers (``table_html``): nested values as small
nested tables (a dict as key/value rows, a list of dicts as rows, a list of scalars as one line, a string
holding a JSON object parsed first), numbers rounded to what matters (``format_number``: latencies to
0.1 ms, ratios to 3 decimals, never ``-0``), long text cut with an explicit "…". A long or wide table can
show a few rows and columns and keep the whole table folded (``fold_rows``, ``columns``), and the whole
table can go to a CSV beside the page (``csv``).

Figures are published as the Plotly mimetype (JupyterLab renders it with the bundled jupyterlab-plotly
extension); the phase pages (``runbook.report.pages``) draw each one with the run folder's single offline copy
of plotly.js.
"""

from __future__ import annotations

import ast
import html as _html
import json
import math
import numbers
import re
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.io as pio

from .errors import RunbookError

pio.renderers.default = "notebook"  # for a bare fig.show(): inlines plotly.js, works offline


class CheckFailed(RunbookError):
    """A verification or gate failed; the message names what and where."""


PLOTLY_MIME = "application/vnd.plotly.v1+json"


def show_figure(fig) -> None:
    from IPython.display import display

    title = fig.layout.title.text or "figure"
    import json

    # plotly's own encoder turns numpy arrays and datetimes into plain JSON
    display({PLOTLY_MIME: json.loads(fig.to_json()), "text/plain": f"<Plotly figure: {title}>"}, raw=True)


# --- numbers and text ------------------------------------------------------------------------------
TEXT_LIMIT = 1000  # characters of one text in a table cell; longer ones end in "…"
NESTED_TEXT_LIMIT = 300  # the same inside a nested table or list
NESTED_ROWS = 12  # rows of a nested table (items of a nested list: 4x) before "… and N more"
NESTED_DEPTH = 3  # nested tables inside nested tables; deeper values are shown as one line of text
NONE = "—"  # a missing value (None, NaN)
EMPTY = "(none)"  # an empty dict or list

_MS_KEY = re.compile(r"(^|[\s_(])ms($|[\s_)])")
_ID_KEY = re.compile(r"(^|[\s_.(])(pids?|ports?|years?|ids?)\)?$")


def clip(text: str, limit: int = TEXT_LIMIT) -> str:
    """``text`` cut to ``limit`` characters, the cut marked with "…"."""
    text = str(text)
    return text if len(text) <= limit else text[: max(0, limit - 1)].rstrip() + "…"


def _decimals(magnitude: float, key: str = "") -> int:
    """Decimals worth showing: 0.1 ms for latencies, about 3 significant digits otherwise (3 decimals
    for ratios such as recall or MRR, none from 1,000 up)."""
    if _MS_KEY.search(str(key).lower()):
        return 1
    if magnitude == 0 or not math.isfinite(magnitude):
        return 0
    if magnitude < 0.01:
        return min(6, 2 - math.floor(math.log10(magnitude)))
    if magnitude < 10:
        return 3
    if magnitude < 100:
        return 2
    if magnitude < 1000:
        return 1
    return 0


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, (bool, np.bool_))


def _is_float(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_)) and not _is_int(v)


def _given_decimals(x: float) -> int:
    """Decimals a float carries (0.25: 2); many for a value nobody rounded."""
    s = repr(float(x))
    if "e" in s or "." not in s:
        return 0 if "e" not in s or "e+" in s else 99
    return len(s.split(".")[1].rstrip("0"))


def _wanted(magnitude: float, given: int, key: str) -> int:
    """``_decimals``, but a value the code rounded to one or two decimals keeps them (figures meant to add
    up, such as GB used + free + reserved = total); latencies always get 0.1 ms."""
    d = _decimals(magnitude, key)
    return d if _MS_KEY.search(str(key).lower()) or given > 2 else max(d, given)


def format_number(v, key: str = "", decimals: int | None = None, strip: bool = True) -> str:
    """A number as a reader wants it: thousands separated (not in ids, pids, ports), floats rounded by
    ``_decimals`` (or to ``decimals``), trailing zeros dropped (``strip``), never "-0"."""
    if _is_int(v):
        return str(int(v)) if _ID_KEY.search(str(key).lower()) else f"{int(v):,}"
    v = float(v)
    if math.isnan(v):
        return NONE
    if math.isinf(v):
        return "∞" if v > 0 else "-∞"
    d = _wanted(abs(v), _given_decimals(v), key) if decimals is None else decimals
    r = round(v, d)
    if r == 0:
        r = 0.0  # -0.0 and tiny negatives read as 0
    s = f"{r:,.{d}f}"
    if strip and "." in s and not _MS_KEY.search(str(key).lower()):  # latencies keep their 0.1 ms
        s = s.rstrip("0").rstrip(".")
    return s


def column_decimals(values, key: str = "") -> int:
    """One number of decimals for a column of floats: what its largest value needs (``_decimals``), and
    no more than its values use (an alpha column reads 0.2, not 0.200)."""
    finite = [float(x) for x in values if x is not None and _is_float(x) and math.isfinite(float(x))]
    if not finite:
        return 0
    most = _wanted(max(abs(x) for x in finite), max(_given_decimals(x) for x in finite), key)
    for d in range(most + 1):
        if all(abs(round(x, d) - round(x, most)) < 10 ** -(most + 1) for x in finite):
            return d
    return most


def _parsed(v):
    """A string holding a JSON object or list (or the repr of a dict or list) as that object."""
    if not isinstance(v, str):
        return v
    s = v.strip()
    if len(s) < 2 or len(s) > 100_000 or (s[0], s[-1]) not in (("{", "}"), ("[", "]")):
        return v
    for parse in (json.loads, ast.literal_eval):
        try:
            out = parse(s)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            continue
        if isinstance(out, (dict, list)):
            return out
    return v


def _missing(v) -> bool:
    if v is None or v is pd.NaT or v is pd.NA:
        return True
    return _is_float(v) and math.isnan(float(v))


def _scalar_text(v, key: str = "") -> str:
    if _missing(v):
        return NONE
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v))
    if isinstance(v, numbers.Real):
        return format_number(v, key)
    return str(v)


def plain_text(v, key: str = "") -> str:
    """A value as one line of text (check messages, the console): a dict as its pairs joined by "; "."""
    v = _parsed(v)
    if isinstance(v, dict):
        return "; ".join(f"{k}: {plain_text(x, str(k))}" for k, x in v.items()) if v else EMPTY
    if isinstance(v, (list, tuple, set)):
        return ", ".join(plain_text(x, key) for x in v) if v else EMPTY
    return _scalar_text(v, key)


def _esc(text: str) -> str:
    return _html.escape(text).replace("\n", "<br>")


# --- HTML ------------------------------------------------------------------------------------------
STYLE = (  # !important: the notebook page's own table rules (right-aligned, centred) are more specific
    "<style>"
    "table.rb-table{border-collapse:collapse;margin:.4em 0 1em 0!important}"
    "table.rb-table caption{caption-side:top;text-align:left!important;font-weight:600;padding:.2em 0}"
    "table.rb-table td,table.rb-table th{text-align:left!important;vertical-align:top!important}"
    "table.rb-table td.rb-num{text-align:right!important;font-variant-numeric:tabular-nums;white-space:nowrap}"
    "table.rb-nested{margin:0!important;font-size:95%;border-collapse:collapse}"
    "table.rb-nested th,table.rb-nested td{padding:.05em .6em .05em 0!important;border:none;background:none}"
    "table.rb-nested td{overflow-wrap:anywhere}"
    "details.rb-fold{margin:.3em 0 1em}details.rb-fold summary{cursor:pointer;color:#0b5394}"
    "</style>"
)


def cell_html(v, key: str = "", depth: int = 0) -> str:
    """The HTML of one table cell: a dict as a nested key/value table, a list of dicts as a nested table,
    a list of scalars as one comma-separated line, a JSON string as what it holds, long text cut with "…"."""
    v = _parsed(v)
    limit = TEXT_LIMIT if depth == 0 else NESTED_TEXT_LIMIT
    if isinstance(v, dict):
        if not v:
            return EMPTY
        if depth >= NESTED_DEPTH:
            return _esc(clip(plain_text(v, key), limit))
        return _kv_html(v, depth + 1)
    if isinstance(v, (list, tuple, set)):
        items = list(v)
        if not items:
            return EMPTY
        if all(isinstance(_parsed(x), dict) for x in items) and depth < NESTED_DEPTH:
            return _records_html([_parsed(x) for x in items], depth + 1)
        if any(isinstance(_parsed(x), (dict, list, tuple, set)) for x in items):
            shown = [cell_html(x, key, depth + 1) for x in items[:NESTED_ROWS]]
            more = f"<br>… and {len(items) - NESTED_ROWS} more" if len(items) > NESTED_ROWS else ""
            return "<br>".join(shown) + more
        shown = [_scalar_text(x, key) for x in items[: 4 * NESTED_ROWS]]
        text = ", ".join(shown) + (f", … ({len(items)} in all)" if len(items) > len(shown) else "")
        return _esc(clip(text, limit))
    return _esc(clip(_scalar_text(v, key), limit))


def _more_row(n: int, span: int) -> str:
    return f'<tr><td colspan="{span}">… and {n} more</td></tr>' if n > 0 else ""


def _kv_html(d: dict, depth: int) -> str:
    items = list(d.items())
    rows = "".join(
        f"<tr><th>{_esc(str(k))}</th><td>{cell_html(x, str(k), depth)}</td></tr>"
        for k, x in items[: 3 * NESTED_ROWS]
    )
    return (
        f'<table class="rb-nested"><tbody>{rows}{_more_row(len(items) - 3 * NESTED_ROWS, 2)}</tbody></table>'
    )


def _records_html(rows: list[dict], depth: int) -> str:
    cols = list(dict.fromkeys(k for r in rows for k in r))
    head = "".join(f"<th>{_esc(str(c))}</th>" for c in cols)
    body = "".join(
        "<tr>" + "".join(f"<td>{cell_html(r.get(c), str(c), depth)}</td>" for c in cols) + "</tr>"
        for r in rows[:NESTED_ROWS]
    )
    more = _more_row(len(rows) - NESTED_ROWS, len(cols))
    return f'<table class="rb-nested"><thead><tr>{head}</tr></thead><tbody>{body}{more}</tbody></table>'


def _frame(data) -> pd.DataFrame:
    """A dict (key/value rows), a list of dicts or scalars, a Series or a DataFrame as a DataFrame."""
    if isinstance(data, pd.DataFrame):
        return data
    if isinstance(data, pd.Series):
        return data.reset_index()
    if isinstance(data, dict):
        return pd.DataFrame(
            {"item": [str(k) for k in data], "value": pd.Series(list(data.values()), dtype=object)}
        )
    rows = list(data)
    if rows and not all(isinstance(r, dict) for r in rows):
        return pd.DataFrame({"value": pd.Series(rows, dtype=object)})
    return pd.DataFrame(rows)


def _cells(df: pd.DataFrame, kv: bool) -> list[list[tuple[str, bool]]]:
    """Each cell's HTML and whether it is a number (right-aligned). Float columns share their decimals;
    in a key/value table each value is formatted for its own key."""
    cols = list(df.columns)
    shared = {
        c: column_decimals(df[c].tolist(), str(c))
        for c in cols
        if not kv and pd.api.types.is_float_dtype(df[c].dtype)
    }
    out = []
    for row in df.itertuples(index=False, name=None):
        cells = []
        for c, v in zip(cols, row, strict=True):
            key = str(row[0]) if kv and c == "value" else str(c)
            num = isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_)) and not _missing(v)
            num = num and not kv  # a key/value table mixes text and numbers in one column: all left
            if c in shared and num:
                cells.append((_esc(format_number(v, key, shared[c], strip=False)), True))
            else:
                cells.append((cell_html(v, key), num))
        out.append(cells)
    return out


def _grid_html(df: pd.DataFrame, caption: str | None, kv: bool, cell_style=None) -> str:
    cols = [str(c) for c in df.columns]
    cap = f"<caption>{_esc(caption)}</caption>" if caption else ""
    head = "<thead><tr>" + "".join(f"<th>{_esc(c)}</th>" for c in cols) + "</tr></thead>"
    body = []
    for i, cells in enumerate(_cells(df, kv)):
        tds = []
        for j, (h, num) in enumerate(cells):
            style = cell_style(df.iloc[i, j], cols[j]) if cell_style else ""
            attrs = (' class="rb-num"' if num else "") + (f' style="{style}"' if style else "")
            tds.append(f"<td{attrs}>{h}</td>")
        body.append("<tr>" + "".join(tds) + "</tr>")
    if not body:
        body.append(f'<tr><td colspan="{max(1, len(cols))}">{EMPTY}</td></tr>')
    return f'<table class="rb-table">{cap}{head}<tbody>{"".join(body)}</tbody></table>'


def table_html(
    data,
    title: str | None = None,
    *,
    fold_rows: int | None = None,
    columns: list | None = None,
    csv_name: str = "",
) -> str:
    """The HTML ``table`` shows. ``fold_rows``: only the first rows shown, the whole table folded below
    (``<details>``); ``columns``: only these columns shown, the whole table folded below; ``csv_name``:
    a link to the CSV of the whole table (a file name beside the page)."""
    df = _frame(data)
    kv = not isinstance(data, pd.DataFrame) and isinstance(data, dict)
    n = len(df)
    shown_cols = [c for c in (columns or []) if c in df.columns] or list(df.columns)
    narrowed = len(shown_cols) < len(df.columns)
    folded = bool(fold_rows) and n > fold_rows
    if not (folded or narrowed):
        parts = [_grid_html(df, title, kv)]
    else:
        head = df.head(fold_rows) if folded else df
        note = f"{len(head)} of {n} rows" + (
            f", {len(shown_cols)} of {len(df.columns)} columns" if narrowed else ""
        )
        caption = f"{title} ({note})" if title else note
        summary = f"All {n} rows" + (f" and {len(df.columns)} columns" if narrowed else "")
        parts = [
            _grid_html(head[shown_cols], caption, kv),
            f'<details class="rb-fold"><summary>{summary}</summary>{_grid_html(df, None, kv)}</details>',
        ]
    if csv_name:
        parts.append(
            f"<p>The whole table as CSV (UTF-8, {n} rows, {len(df.columns)} columns): "
            f'<a href="{_html.escape(csv_name)}">{_esc(csv_name)}</a></p>'
        )
    return STYLE + "".join(parts)


def csv_path(run_dir: str, stem: str, name: str) -> str:
    """Where ``table(..., csv=)`` writes a table beside a phase's page: ``<run_dir>/<stem>_<name>.csv``,
    or "" (no CSV) when there is no run folder."""
    if not run_dir:
        return ""
    safe = re.sub(r"[^\w.-]+", "_", f"{stem}_{name}").strip("_")
    return str(Path(run_dir) / f"{safe}.csv")


def _csv_cell(v):
    if isinstance(v, (dict, list, tuple, set)):
        return json.dumps(list(v) if isinstance(v, (tuple, set)) else v, ensure_ascii=False, default=str)
    return v


def write_csv(data, path: str | Path) -> Path:
    """The whole table as CSV (UTF-8, every value as it is; nested values as JSON), mode 0644."""
    from . import atomic

    df = _frame(data).copy()
    for c in df.columns:
        if df[c].dtype == object:
            df[c] = df[c].map(_csv_cell)
    path = Path(path)
    atomic.write_text(path, df.to_csv(index=False, lineterminator="\n"), mode=0o644)
    return path


def _plain_frame(df: pd.DataFrame) -> str:
    return df.map(plain_text).to_string(index=False) if len(df.columns) else "(empty table)"


def table(
    data,
    title: str | None = None,
    *,
    fold_rows: int | None = None,
    columns: list | None = None,
    csv: str | Path = "",
) -> None:
    """Show a table from a dict (key/value rows), a list of dicts or a DataFrame, without the row index
    (``table_html``). ``fold_rows`` / ``columns``: a short table, the whole one folded below it; ``csv``:
    also write the whole table to this path (``csv_path``; "" writes nothing) and link it by file name.
    It displays itself, so it works inside ``if`` blocks too (where a cell's last value is not shown)."""
    name = write_csv(data, csv).name if csv else ""
    page = table_html(data, title, fold_rows=fold_rows, columns=columns, csv_name=name)
    _show(page, ((title + "\n") if title else "") + _plain_frame(_frame(data)))


def _show(page: str, text: str) -> None:
    try:
        from IPython import get_ipython
        from IPython.display import display

        if get_ipython() is not None:
            display({"text/html": page, "text/plain": text}, raw=True)
            return
    except ImportError:
        pass
    print(text)


def _ok_style(v, col: str) -> str:
    if col != "ok":
        return ""
    if v is True or v is np.True_:
        return "background-color:#d4edda"
    if v is False or v is np.False_:
        return "background-color:#f8d7da"
    return ""


def checks_html(rows: list[dict]) -> str:
    """The HTML ``checks`` shows: one row a check, ``ok`` green or red, nested details as tables."""
    df = pd.DataFrame(rows, columns=["check", "ok", "detail"])
    return STYLE + _grid_html(df, None, False, cell_style=_ok_style)


def checks(rows: list[dict], fail: bool = True, show: bool = True):
    """Show a check list (``check``, ``ok``, ``detail``) coloured green/red; raise if any failed (``fail``)."""
    df = pd.DataFrame(rows, columns=["check", "ok", "detail"])
    if show:
        _show(checks_html(rows), _plain_frame(df))
    failed = df[~df["ok"].astype(bool)]
    if fail and len(failed):
        lines = "\n".join(f"- {r.check}: {plain_text(r.detail)}" for r in failed.itertuples())
        raise CheckFailed(f"{len(failed)} check(s) failed:\n{lines}")


def progress(*args, **kwargs):
    """A progress bar: a widget in JupyterLab, plain text under papermill (RUNBOOK_HEADLESS, set by the runner)."""
    import os

    if os.environ.get("RUNBOOK_HEADLESS"):
        from tqdm import tqdm
    else:
        from tqdm.auto import tqdm
    return tqdm(*args, **kwargs)


def banner(text: str, colour: str = "#fff3cd", border: str = "#856404") -> None:
    """A coloured box across the page (DRY RUN, awaiting approval, an unverified switch...)."""
    import html

    from IPython.display import HTML, display

    display(
        HTML(
            f'<div style="background:{colour};border:2px solid {border};padding:.6em 1em;'
            f'font-size:1.15em;font-weight:bold">{html.escape(text)}</div>'
        )
    )


def dry_run_banner(dry_run: bool, what: str = "") -> None:
    """Every page of a dry run says so at the top: nothing under the base path is created or changed."""
    if dry_run:
        banner("DRY RUN — nothing is written or switched" + (f": {what}" if what else "."))
