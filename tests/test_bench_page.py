"""``make bench`` writes each benchmark's table into its own marked section of BENCHMARKS.md, stamped with
when, where and by which command; the rest of the page stays as it was."""

from __future__ import annotations

import pytest

from benchmarks import common


def test_a_section_is_replaced_and_nothing_else(tmp_path):
    page = tmp_path / "B.md"
    page.write_text(
        "# 벤치마크\nintro\n<!-- bench:load -->\nold table\n<!-- /bench:load -->\nafter\n"
        "<!-- bench:extract -->\nkept\n<!-- /bench:extract -->\n",
        encoding="utf-8",
    )
    rows = [
        {"arm": "this loader", "seconds": "7.9 (7.5-8.3)", "note": ""},
        {"arm": "raw | add", "seconds": 8},
    ]
    common.write_section("load", common.markdown(rows, ["arm", "seconds", "note"]), str(page))
    text = page.read_text(encoding="utf-8")
    head, section = text.split("<!-- bench:load -->\n")
    assert head == "# 벤치마크\nintro\n"
    body, tail = section.split("<!-- /bench:load -->")
    assert tail == "\nafter\n<!-- bench:extract -->\nkept\n<!-- /bench:extract -->\n"
    stamp, table = body.split("\n\n", 1)
    assert (
        stamp.startswith("_Measured ") and " UTC on " in stamp and " cores, " in stamp and "`python " in stamp
    )
    # the empty column is left out; a | inside a cell is escaped
    assert table == "| arm | seconds |\n|---|---|\n| this loader | 7.9 (7.5-8.3) |\n| raw \\| add | 8 |\n"
    assert "old table" not in text and not (tmp_path / "B.md.tmp").exists()
    # again: the same section is replaced, not added
    common.write_section("load", "second", str(page))
    assert page.read_text(encoding="utf-8").count("<!-- bench:load -->") == 1 and "second" in page.read_text()


def test_a_page_without_the_section_is_left_alone_and_the_markers_are_named(tmp_path):
    page = tmp_path / "B.md"
    page.write_text("no markers\n", encoding="utf-8")
    with pytest.raises(SystemExit, match="has no <!-- bench:e2e --> ... <!-- /bench:e2e --> section"):
        common.write_section("e2e", "x", str(page))
    assert page.read_text(encoding="utf-8") == "no markers\n"
