"""What a notebook cell shows: tables, check lists, Plotly figures that survive HTML export offline.

Plotly's default mimetype renderer is dropped by nbconvert, so every figure is published as a bundle:
the Plotly mimetype (for JupyterLab) and ``text/html`` with plotly.js inlined once per kernel (for the
code-hidden HTML report, which then opens without a network).
"""

from __future__ import annotations

import pandas as pd
import plotly.io as pio

pio.renderers.default = "notebook"  # for a bare fig.show(): inlines plotly.js, works offline

_plotlyjs_sent = False


class CheckFailed(AssertionError):
    """A verification or gate failed; the message names what and where."""


def show_figure(fig) -> None:
    global _plotlyjs_sent
    from IPython.display import display

    html = fig.to_html(full_html=False, include_plotlyjs=not _plotlyjs_sent, config={"displaylogo": False})
    _plotlyjs_sent = True
    display({"application/vnd.plotly.v1+json": fig.to_plotly_json(), "text/html": html}, raw=True)


def table(data, title: str | None = None) -> pd.DataFrame:
    """A DataFrame from a dict (key/value rows) or a list of dicts; returned so the cell shows it."""
    if isinstance(data, pd.DataFrame):
        df = data
    elif isinstance(data, dict):
        df = pd.DataFrame({"item": list(data.keys()), "value": [_fmt(v) for v in data.values()]})
    else:
        df = pd.DataFrame(list(data))
    if title:
        df.attrs["title"] = title
    return df


def _fmt(v):
    if isinstance(v, float):
        return f"{v:,.4g}"
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    if isinstance(v, (list, dict)):
        return str(v)
    return v


def checks(rows: list[dict], fail: bool = True):
    """Show a check list (``check``, ``ok``, ``detail``) coloured green/red; raise if any failed (``fail``)."""
    df = pd.DataFrame(rows, columns=["check", "ok", "detail"])
    styled = df.style.map(
        lambda v: "background-color:#d4edda" if v is True else ("background-color:#f8d7da" if v is False else ""),
        subset=["ok"],
    )
    try:
        from IPython.display import display

        display(styled)
    except Exception:  # noqa: BLE001 - outside IPython the DataFrame is enough
        print(df.to_string())
    failed = df[~df["ok"].astype(bool)]
    if fail and len(failed):
        lines = "\n".join(f"- {r.check}: {r.detail}" for r in failed.itertuples())
        raise CheckFailed(f"{len(failed)} check(s) failed:\n{lines}")
