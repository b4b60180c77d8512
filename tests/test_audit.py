"""Tamper evidence: a sealed run folder audits clean, and every change after the fact is named.

The runs here are real runner runs over two tiny notebooks (a real kernel, real pages), so the seal covers
exactly what the runner writes."""

import json
import os
import stat

import nbformat
import pytest

from runbook import audit, cli, runner

from .test_runner import _notebook


@pytest.fixture
def two_runs(tmp_path, outputs):
    nbs = tmp_path / "nbs"
    nbs.mkdir()
    _notebook(
        nbs / "00_first.ipynb",
        [
            "from runbook import handoff\n"
            "handoff.record('00_first', {'공복혈당': 'mg/dL'}, base_path=base_path, run_dir=run_dir)"
        ],
    )
    _notebook(nbs / "01_second.ipynb", ["print('두 번째')"])
    p = tmp_path / "p.yaml"
    p.write_text(json.dumps({"base_path": str(tmp_path / "base")}))
    first = runner.run(p, notebooks_dir=nbs).run_dir
    second = runner.run(p, notebooks_dir=nbs).run_dir
    return first, second


def _problems(run_dir):
    report = audit.audit(run_dir)
    return report.ok, "\n".join(report.problems)


def test_a_fresh_run_folder_audits_clean_and_names_its_predecessor(two_runs):
    first, second = two_runs
    m1 = json.loads((first / "manifest.json").read_text())
    m2 = json.loads((second / "manifest.json").read_text())
    assert m1["previous_run"] is None  # the first run of this base path
    assert m2["previous_run"]["run_id"] == first.name
    assert m2["previous_run"]["manifest_sha256"] == audit.sha256_of(first / "manifest.json")
    # every file of the folder is listed, the reports included
    for rel in ("00_first.ipynb", "00_first.html", "handoff/00_first.json", "summary.html", "index.html"):
        assert rel in m2["files"], rel
    assert audit.audit(second).ok and audit.audit(first).ok
    assert audit.audit(second).chain == [second.name, first.name]
    assert cli.main(["audit", str(second)]) == 0


def test_one_changed_byte_is_named(two_runs, capsys):
    _, second = two_runs
    target = second / "handoff" / "00_first.json"
    data = bytearray(target.read_bytes())
    data[-3] ^= 1
    target.write_bytes(bytes(data))
    ok, problems = _problems(second)
    assert not ok and f"{target}: changed" in problems
    assert cli.main(["audit", str(second)]) == 1
    assert "00_first.json: changed" in capsys.readouterr().out


def test_an_added_and_a_removed_file_are_named(two_runs):
    _, second = two_runs
    (second / "01_second.html").unlink()
    (second / "extra.txt").write_text("slipped in", encoding="utf-8")
    ok, problems = _problems(second)
    assert not ok
    assert f"{second / '01_second.html'}: removed" in problems
    assert f"{second / 'extra.txt'}: added" in problems


def test_an_edited_earlier_manifest_breaks_the_chain(two_runs):
    first, second = two_runs
    m = json.loads((first / "manifest.json").read_text())
    m["status"] = "ok, honestly"
    (first / "manifest.json").write_text(json.dumps(m))
    ok, problems = _problems(second)
    assert not ok and f"{first / 'manifest.json'}: edited" in problems


def test_a_removed_earlier_run_breaks_the_chain(two_runs):
    import shutil

    first, second = two_runs
    shutil.rmtree(first)
    ok, problems = _problems(second)
    assert not ok and "an earlier run of this migration was removed" in problems


def test_an_unsealed_manifest_fails_the_audit(two_runs):
    _, second = two_runs
    m = json.loads((second / "manifest.json").read_text())
    del m["files"]
    (second / "manifest.json").write_text(json.dumps(m))
    ok, problems = _problems(second)
    assert not ok and "no file list" in problems


def test_reports_and_records_are_readable_like_the_notebooks(two_runs):
    _, second = two_runs
    nb_mode = stat.S_IMODE(os.stat(second / "00_first.ipynb").st_mode)
    for rel in ("00_first.html", "index.html", "summary.html", "manifest.json", "handoff/00_first.json"):
        mode = stat.S_IMODE(os.stat(second / rel).st_mode)
        assert mode & 0o044 == nb_mode & 0o044, (rel, oct(mode), oct(nb_mode))


def test_a_phase_that_rewrites_an_earlier_record_fails(tmp_path, outputs):
    nbs = tmp_path / "nbs"
    nbs.mkdir()
    _notebook(
        nbs / "00_first.ipynb",
        [
            "from runbook import handoff\nhandoff.record('00_first', {'n': 1}, base_path=base_path, run_dir=run_dir)"
        ],
    )
    _notebook(
        nbs / "01_meddler.ipynb",
        [
            "from runbook import handoff\nhandoff.record('00_first', {'n': 2}, base_path=base_path, run_dir=run_dir)"
        ],
    )
    p = tmp_path / "p.yaml"
    p.write_text(json.dumps({"base_path": str(tmp_path / "base")}))
    with pytest.raises(runner.RunFailed, match=r"changed what an earlier phase wrote.*handoff/00_first.json"):
        runner.run(p, notebooks_dir=nbs)


def test_prepare_only_writes_the_pages_it_names(tmp_path, outputs, capsys):
    from .conftest import write_params

    p = write_params(tmp_path)
    lines = []
    res = runner.run(p, only=["01"], prepare_only=True, log=lines.append)
    assert "01_extract.ipynb" in lines[-1]
    assert (res.run_dir / "summary.html").exists() and (res.run_dir / "index.html").exists()
    assert audit.audit(res.run_dir).ok
    nbformat.read(res.run_dir / "01_extract.ipynb", as_version=4)
