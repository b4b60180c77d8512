"""Canaries for every kind of secret the runbook handles: LlamaCloud, OpenAI and Google keys and a
PostgreSQL DSN (whose password alone is a secret too). A phase leaks each one through every channel a
notebook has (stdout, stderr, the migration log, its hand-off, the text of the exception that stops it);
none may reach the run folder, the base path or the console."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from runbook import credentials, runner

from .test_runner import _notebook

CANARIES = {
    "LLAMA_CLOUD_API_KEY": "llx-CanaryLlama0a1b2c3d4e5f6a7b8c9d",
    "OPENAI_API_KEY": "sk-proj-CanaryOpenAI9z8y7x6w5v4u3t2s1r",
    "GOOGLE_API_KEY": "AIzaSyCanaryGoogle-0123456789abcdefgh",
    "WELNO_PG_DSN": "postgresql://welno:CanaryPgPass-7c1e@127.0.0.1:5432/welno",
}
DSN_PASSWORD = "CanaryPgPass-7c1e"
NEEDLES = [*CANARIES.values(), DSN_PASSWORD]

LEAKY_CELLS = [
    "import os, sys\nfrom runbook import handoff, paths, runlog\nenv = os.environ",
    "print('openai', env['OPENAI_API_KEY'])\nprint('google', env['GOOGLE_API_KEY'], file=sys.stderr)",
    "runlog.log(paths.Layout.from_params(base_path), '00_leaky', 'client said ' + env['LLAMA_CLOUD_API_KEY'])",
    # a connection error quotes the password alone (psycopg's conninfo errors quote the fragment)
    "handoff.record('00_leaky', {'error': 'bad conninfo near ' + env['WELNO_PG_DSN'].split(':')[2]"
    ".split('@')[0]}, base_path=base_path, run_dir=run_dir)",
    "raise RuntimeError('auth failed: key ' + env['LLAMA_CLOUD_API_KEY'] + ' password '"
    " + env['WELNO_PG_DSN'].split(':')[2].split('@')[0])",
]


def _planted(monkeypatch):
    for name, value in CANARIES.items():
        monkeypatch.setenv(name, value)


def _hits(text: str) -> list[str]:
    return [n[:12] for n in NEEDLES if n in text]


def test_every_secret_kind_leaked_by_a_failing_phase_is_scrubbed_everywhere(
    tmp_path, outputs, monkeypatch, capfd
):
    _planted(monkeypatch)
    nbs = tmp_path / "nbs"
    nbs.mkdir()
    _notebook(nbs / "00_leaky.ipynb", LEAKY_CELLS)
    p = tmp_path / "p.yaml"
    p.write_text(json.dumps({"base_path": str(tmp_path / "base")}), encoding="utf-8")
    console: list[str] = []
    with pytest.raises(runner.RunFailed) as e:
        runner.run(p, notebooks_dir=nbs, log=console.append)
    run_dir = e.value.run_dir
    # the failure is reported, with the secrets masked rather than the message dropped
    assert "auth failed: key *** password ***" in str(e.value) and _hits(str(e.value)) == []
    manifest = json.loads((run_dir / "manifest.json").read_text(encoding="utf-8"))
    assert "auth failed: key ***" in manifest["phases"][0]["error"]
    assert manifest["phases"][0]["secrets_scrubbed"] >= 4  # found and reported, not silently hidden
    handoff = json.loads((run_dir / "handoff" / "00_leaky.json").read_text(encoding="utf-8"))
    assert handoff["error"] == "bad conninfo near ***"
    log = (tmp_path / "base" / "logs" / "migration.log").read_text(encoding="utf-8")
    assert "client said ***" in log
    # every file of the run folder and of the base path, and everything printed
    assert credentials.scan_for_values(run_dir, NEEDLES) == []
    assert credentials.scan_for_values(tmp_path / "base", NEEDLES) == []
    out, err = capfd.readouterr()
    assert _hits("\n".join(console) + out + err) == []


def test_secret_values_include_the_password_of_a_dsn_in_the_environment(monkeypatch):
    _planted(monkeypatch)
    values = credentials.secret_env_values()
    assert set(NEEDLES) <= values
    monkeypatch.setenv("SOME_SETTING", "not-a-secret-value")
    monkeypatch.setenv("SHORT_TOKEN", "abc")  # too short to scrub without mangling text
    values = credentials.secret_env_values(["SOME_SETTING"])
    assert "not-a-secret-value" in values and "abc" not in values
    assert "not-a-secret-value" not in credentials.secret_env_values()


def test_scrub_files_masks_every_text_file_and_counts(tmp_path):
    (tmp_path / "h").mkdir()
    (tmp_path / "h" / "a.json").write_text('{"e": "x CanaryPgPass-7c1e y"}', encoding="utf-8")
    (tmp_path / "b.ipynb").write_text(
        "sk-proj-CanaryOpenAI9z8y7x6w5v4u3t2s1r twice sk-proj-CanaryOpenAI9z8y7x6w5v4u3t2s1r"
    )
    (tmp_path / "clean.txt").write_text("nothing here", encoding="utf-8")
    (tmp_path / "blob.bin").write_bytes(b"\xff\xfe\x00 no secret")
    found = credentials.scrub_files(tmp_path, NEEDLES)
    assert found == {"b.ipynb": 2, "h/a.json": 1}
    assert (tmp_path / "h" / "a.json").read_text(encoding="utf-8") == '{"e": "x *** y"}'
    assert (tmp_path / "b.ipynb").read_text() == "*** twice ***"
    assert (tmp_path / "blob.bin").read_bytes() == b"\xff\xfe\x00 no secret"  # not text: never rewritten
    assert credentials.scan_for_values(tmp_path, NEEDLES) == []
    assert credentials.scrub_files(tmp_path, NEEDLES) == {}  # idempotent
    (tmp_path / "c.txt").write_text("x ab zz12 cd y", encoding="utf-8")  # the longest value first
    assert credentials.scrub_files(tmp_path, ["zz12", "ab zz12 cd"]) == {"c.txt": 1}
    assert (tmp_path / "c.txt").read_text(encoding="utf-8") == "x *** y"


def test_a_secret_in_a_binary_file_is_named_not_corrupted(tmp_path):
    blob = b"\x89PNG\xff\xfe CanaryPgPass-7c1e \x00"
    (tmp_path / "figure.png").write_bytes(blob)
    (tmp_path / "page.html").write_text("key CanaryPgPass-7c1e", encoding="utf-8")
    (tmp_path / "index.db").write_bytes(blob)
    with pytest.raises(credentials.SecretInBinaryFile) as e:
        credentials.scrub_files(tmp_path, NEEDLES)
    assert str(e.value) == (
        f"a secret value is in figure.png, index.db under {tmp_path}, which is not text and was not changed: "
        "delete the file (or the whole run folder) before sharing it, and find what wrote the secret there"
    )
    assert (tmp_path / "figure.png").read_bytes() == blob
    assert (tmp_path / "page.html").read_text(encoding="utf-8") == "key ***"  # text files were done first


def test_a_short_secret_is_masked_only_as_a_whole_word(monkeypatch):
    """A 4-character DSN password masked inside words would rewrite hand-offs that later phases read
    ("passed" -> "***ed"): short values are masked only where they stand alone."""
    monkeypatch.setenv("WELNO_PG_DSN", "postgresql://user:pass@host/wello")
    record = {"passed": True, "detail": "verification passed; bypass", "path": "/srv/wello_v3"}
    assert credentials.scrub_data(record) == record
    assert credentials.scrub_data({"e": "auth failed for password pass"}) == {
        "e": "auth failed for password ***"
    }
    assert credentials.scrub("x=pass; y", ["pass"]) == "x=***; y"


def test_scrub_data_masks_strings_and_keys_at_any_depth():
    data = {
        "a": ["x sk-proj-CanaryOpenAI9z8y7x6w5v4u3t2s1r", {"CanaryPgPass-7c1e": 1.5}],
        "n": None,
        "t": (2,),
    }
    assert credentials.scrub_data(data, NEEDLES) == {"a": ["x ***", {"***": 1.5}], "n": None, "t": [2]}


def test_a_file_gone_between_listing_and_reading_is_skipped_and_the_rest_still_scrubbed(
    tmp_path, monkeypatch
):
    (tmp_path / "a.json").write_text("x", encoding="utf-8")
    (tmp_path / "b.html").write_text("key CanaryPgPass-7c1e", encoding="utf-8")
    real = Path.read_bytes

    def read_bytes(self):
        if self.name == "a.json":
            raise FileNotFoundError(self)  # removed by another process after rglob listed it
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    assert credentials.scrub_files(tmp_path, NEEDLES) == {"b.html": 1}


def test_eight_characters_are_masked_anywhere_shorter_values_only_as_words(monkeypatch):
    assert credentials.scrub("xabcd1234y", ["abcd1234"]) == "x***y"
    assert credentials.scrub("xabcd123y abcd123", ["abcd123"]) == "xabcd123y ***"
    monkeypatch.setenv("EIGHT_TOKEN", "12345678")
    monkeypatch.setenv("SEVEN_TOKEN", "1234567")
    values = credentials.secret_env_values()
    assert "12345678" in values and "1234567" not in values
