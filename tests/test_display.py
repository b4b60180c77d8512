"""What the pages show: nested values as tables, numbers rounded to what matters, long tables folded and
written to a CSV beside the page. The HTML helpers are pure functions; ``table`` and ``checks`` display
what they return."""

from __future__ import annotations

import json
import re
import stat

import pandas as pd
import pytest

from runbook import display


def _text(page: str) -> str:
    """What a reader sees: the HTML without its style block and tags."""
    page = re.sub(r"<style>.*?</style>", "", page, flags=re.S)
    return re.sub(r"<[^>]+>", " ", page)


def test_a_nested_dict_is_a_nested_table_not_a_python_repr():
    page = display.table_html(
        {
            "cloud preset": {"alpha": 0.5, "enable_reranking": True, "search_filters": None},
            "layout": [{"folder": "base", "mode": "0o755"}, {"folder": "backup/", "mode": "0o700"}],
            "computed_with": ["huggingface:a", "openai:b"],
            "error kinds": {},
        },
        "hand-off",
    )
    assert "{'" not in page and "{" not in _text(page) and "}" not in _text(page)
    assert "[" not in _text(page)
    assert page.count('<table class="rb-nested">') == 2
    # the dict as key/value rows, the list of dicts as a table with a header, the list of scalars as one line
    assert "<th>alpha</th><td>0.5</td>" in page and "<th>enable_reranking</th><td>True</td>" in page
    assert "<th>folder</th><th>mode</th>" in page and "<td>backup/</td>" in page
    assert "huggingface:a, openai:b" in page
    assert "<td>(none)</td>" in page  # an empty dict


def test_a_string_holding_a_json_object_is_shown_as_a_table():
    page = display.table_html({"entries": '{"USE_LOCAL_VECTOR_DB": "true", "RAG_TOP_K": 5}'})
    assert "<th>USE_LOCAL_VECTOR_DB</th><td>true</td>" in page and "<th>RAG_TOP_K</th><td>5</td>" in page
    assert "{" not in _text(page) and "&quot;" not in page
    # so is the repr of a dict a hand-off stored as text; other text stays text
    assert "<th>count</th><td>255</td>" in display.table_html({"detail": "{'count': 255, 'ok': True}"})
    assert "[1] 고혈압: {x}" in display.table_html({"answer": "[1] 고혈압: {x}"})


def test_check_details_are_rendered_like_table_cells():
    page = display.checks_html(
        [
            {"check": "untouched", "ok": True, "detail": {"count": 255, "sample": 20}},
            {"check": "empty results", "ok": False, "detail": "3 (gate <= 0)"},
        ]
    )
    assert "<th>count</th><td>255</td>" in page and "{" not in _text(page)
    assert "3 (gate &lt;= 0)" in page  # text is escaped, not taken for a tag
    assert 'style="background-color:#f8d7da">False' in page
    with pytest.raises(display.CheckFailed, match=r"- empty results: 3 \(gate <= 0\)"):
        display.checks([{"check": "empty results", "ok": False, "detail": "3 (gate <= 0)"}], show=False)
    with pytest.raises(display.CheckFailed, match="count: 255; sample: 20"):
        display.checks([{"check": "x", "ok": False, "detail": {"count": 255, "sample": 20}}], show=False)


@pytest.mark.parametrize(
    "value, key, shown",
    [
        (-0.0, "", "0"),
        (-0.0000000001, "score delta", "0"),
        (-0.0, "p95 ms", "0.0"),
        (612.0, "local_runs_ms", "612.0"),
        (0.958620689, "hit@5 (labels)", "0.959"),
        (0.9999998807907104, "min", "1"),
        (97.5234, "cloud latency p50 ms", "97.5"),
        (0.4, "p50 ms", "0.4"),
        (50.0, "local latency p50 ms", "50.0"),
        (19.8712, "projected use %", "19.87"),
        (270.553, "total GB", "270.6"),
        (1287.1234, "service RSS MB", "1,287"),
        (1287.1, "service RSS MB", "1,287.1"),
        (161.61, "reserved GB (root only)", "161.61"),
        (0.000412, "estimated cost $", "0.000412"),
        (12345, "records", "12,345"),
        (11355, "metrics pid", "11355"),
        (8000, "chroma_port", "8000"),
        (float("nan"), "x", "—"),
    ],
)
def test_numbers_are_rounded_to_what_matters(value, key, shown):
    assert display.format_number(value, key) == shown


def test_a_dataframe_float_column_shares_its_decimals_and_never_shows_minus_zero():
    df = pd.DataFrame(
        {
            "id": ["k001", "k002"],
            "cloud_ms": [88.427712, 116.51449],
            "recall@5 of cloud": [0.6, 0.8333333],
            "alpha": [0.0, 0.2],
            "score_delta_mean": [-0.0, 0.1234567],
            "local_runs_ms": [[52.921, 39.86], [37.72, 29.9231]],
        }
    )
    page = display.table_html(df)
    assert "0.000000" not in page and "-0" not in page and "88.427712" not in page
    assert '<td class="rb-num">88.4</td>' in page and '<td class="rb-num">116.5</td>' in page
    assert '<td class="rb-num">0.600</td>' in page and '<td class="rb-num">0.833</td>' in page
    assert '<td class="rb-num">0.0</td>' in page and '<td class="rb-num">0.2</td>' in page
    assert '<td class="rb-num">0.000</td>' in page and '<td class="rb-num">0.123</td>' in page
    assert "<td>52.9, 39.9</td>" in page and "<td>37.7, 29.9</td>" in page


def test_long_text_is_cut_with_an_ellipsis():
    page = display.table_html({"health": "x" * 5000, "nested": {"path": "/a" * 400}})
    assert "x" * (display.TEXT_LIMIT - 1) + "…" in page and "x" * display.TEXT_LIMIT not in page
    assert "…" in page.split("<th>path</th>")[1]
    assert display.clip("abcdef", 4) == "abc…" and display.clip("abc", 4) == "abc"


def _questions(n: int) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "id": [f"k{i:03d}" for i in range(n)],
            "question": ["공복혈당이 110 mg/dL이면 공복혈당장애인가요?"] * n,
            "cloud_ms": [88.4277 + i for i in range(n)],
            "cloud_runs_ms": [[97.5, 88.43]] * n,
            "wide": [0.123456] * n,
        }
    )


def test_fold_rows_shows_a_few_rows_and_folds_the_whole_table():
    page = display.table_html(_questions(50), "per question", fold_rows=10, columns=["id", "cloud_ms"])
    shown, folded = page.split("<details", 1)
    assert "<summary>All 50 rows and 5 columns</summary>" in folded
    assert shown.count("<tr>") == 1 + 10 and "k009" in shown and "k010" not in shown
    assert "<th>wide</th>" not in shown and "<th>wide</th>" in folded  # the summary keeps key columns
    assert folded.count("<tr>") == 1 + 50 and "k049" in folded
    assert "per question (10 of 50 rows, 2 of 5 columns)" in shown
    # a short table is not folded
    assert "<details" not in display.table_html(_questions(5), fold_rows=10)


def test_csv_beside_the_page_is_utf8_mode_0644_and_linked_by_file_name(tmp_path, capsys):
    assert display.csv_path("", "05_ab_compare", "per question") == ""
    path = display.csv_path(str(tmp_path), "05_ab_compare", "per question")
    assert path == str(tmp_path / "05_ab_compare_per_question.csv")
    df = _questions(12)
    display.table(df, "per question", fold_rows=10, csv=path)
    written = tmp_path / "05_ab_compare_per_question.csv"
    assert stat.S_IMODE(written.stat().st_mode) == 0o644
    text = written.read_bytes().decode("utf-8")  # strict UTF-8
    assert "공복혈당이 110 mg/dL이면 공복혈당장애인가요?" in text
    back = pd.read_csv(written, encoding="utf-8")
    assert len(back) == 12 and list(back.columns) == list(df.columns)
    assert back["cloud_ms"].iloc[0] == pytest.approx(88.4277)  # the whole value, not the page's rounding
    assert json.loads(back["cloud_runs_ms"].iloc[0]) == [97.5, 88.43]
    page = display.table_html(df, fold_rows=10, csv_name=written.name)
    assert '<a href="05_ab_compare_per_question.csv">' in page
    assert "per question" in capsys.readouterr().out  # outside a notebook it prints the table
