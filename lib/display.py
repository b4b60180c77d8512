"""What a notebook cell shows: tables, check lists, Plotly figures that survive HTML export offline.

Figures are published as the Plotly mimetype (JupyterLab renders it with the bundled jupyterlab-plotly
extension). nbconvert drops that mimetype, so ``report.render_html`` turns each one into a ``text/html``
figure with plotly.js inlined once per page: the code-hidden HTML then opens without a network.
"""

from __future__ import annotations

import pandas as pd
import plotly.io as pio

pio.renderers.default = "notebook"  # for a bare fig.show(): inlines plotly.js, works offline


class CheckFailed(AssertionError):
    """A verification or gate failed; the message names what and where."""


PLOTLY_MIME = "application/vnd.plotly.v1+json"


def show_figure(fig) -> None:
    from IPython.display import display

    title = fig.layout.title.text or "figure"
    import json

    # plotly's own encoder turns numpy arrays and datetimes into plain JSON
    display({PLOTLY_MIME: json.loads(fig.to_json()), "text/plain": f"<Plotly figure: {title}>"}, raw=True)


def plotly_outputs_to_html(nb) -> int:
    """Give every Plotly output of a notebook a ``text/html`` rendering (plotly.js inlined once)."""
    import plotly.graph_objects as go

    first = True
    n = 0
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            data = out.get("data") or {}
            if PLOTLY_MIME in data and "text/html" not in data:
                fig = go.Figure(data[PLOTLY_MIME])
                data["text/html"] = fig.to_html(
                    full_html=False, include_plotlyjs=first, config={"displaylogo": False}
                )
                first = False
                n += 1
    return n


def table(data, title: str | None = None) -> None:
    """Show a table from a dict (key/value rows), a list of dicts or a DataFrame, without the row index.
    It displays itself, so it works inside ``if`` blocks too (where a cell's last value is not shown)."""
    if isinstance(data, pd.DataFrame):
        df = data
    elif isinstance(data, dict):
        df = pd.DataFrame({"item": list(data.keys()), "value": [_fmt(v) for v in data.values()]})
    else:
        df = pd.DataFrame(list(data))
    styler = df.style.hide(axis="index").format(escape="html")  # ids like <id>@<doc> are text, not tags
    if title:
        styler = styler.set_caption(title)
    _show(styler, df)


def _show(styler, df) -> None:
    try:
        from IPython import get_ipython
        from IPython.display import display

        if get_ipython() is not None:
            display(styler)
            return
    except ImportError:
        pass
    print(df.to_string(index=False))


def _fmt(v):
    if isinstance(v, float):
        return f"{v:,.4g}"
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    if isinstance(v, (list, dict)):
        return str(v)
    return v


def checks(rows: list[dict], fail: bool = True, show: bool = True):
    """Show a check list (``check``, ``ok``, ``detail``) coloured green/red; raise if any failed (``fail``)."""
    df = pd.DataFrame(rows, columns=["check", "ok", "detail"])
    styled = df.style.hide(axis="index").map(
        lambda v: (
            "background-color:#d4edda" if v is True else ("background-color:#f8d7da" if v is False else "")
        ),
        subset=["ok"],
    )
    if show:
        _show(styled, df)
    failed = df[~df["ok"].astype(bool)]
    if fail and len(failed):
        lines = "\n".join(f"- {r.check}: {r.detail}" for r in failed.itertuples())
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
