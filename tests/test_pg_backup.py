"""Phase 00's PostgreSQL backup against a real PostgreSQL server started for the test."""

import glob
import os
import shutil
import subprocess

import pytest

from runbook import cloud_emulator, credentials, pg_backup

from .conftest import write_params

PASSWORD = "pw-CANARY-5e1f9a7c"


def _bin(name):
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    assert found, f"{name} not found: .ci/run installs postgresql"
    return found[-1]


def _as_postgres(args, **kw):
    cmd = args if os.geteuid() != 0 else ["runuser", "-u", "postgres", "--", *args]
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)


@pytest.fixture(scope="module")
def pg():
    """A throwaway cluster on a free loopback port with password auth, the seed's table holding Korean text."""
    import tempfile
    from pathlib import Path

    d = Path(tempfile.mkdtemp(prefix="runbook-pg-"))  # under /tmp: the postgres user must reach it
    os.chmod(d, 0o755)
    data, pwfile = d / "data", d / "pw"
    pwfile.write_text(PASSWORD)
    if os.geteuid() == 0:
        shutil.chown(d, "postgres")
        shutil.chown(pwfile, "postgres")
    _as_postgres(
        [
            _bin("initdb"),
            "-D",
            str(data),
            "-U",
            "welno",
            "--pwfile",
            str(pwfile),
            "-A",
            "scram-sha-256",
            "-E",
            "UTF8",
            "--locale",
            "C.UTF-8",
        ]
    )
    port = cloud_emulator.free_port()
    _as_postgres(
        [
            _bin("pg_ctl"),
            "-D",
            str(data),
            "-w",
            "-l",
            str(d / "log"),
            "-o",
            f"-p {port} -k {d} -c listen_addresses=127.0.0.1",
            "start",
        ]
    )
    env = {
        **os.environ,
        "PGPASSWORD": PASSWORD,
        "PGHOST": "127.0.0.1",
        "PGPORT": str(port),
        "PGUSER": "welno",
    }

    def sql(db, q):
        subprocess.run(
            ["psql", "-XAt", "-v", "ON_ERROR_STOP=1", "-d", db, "-c", q],
            check=True,
            env=env,
            capture_output=True,
        )

    sql("postgres", "CREATE DATABASE wello")
    sql("postgres", "CREATE DATABASE wello_scratch")
    sql(
        "wello",
        "CREATE SCHEMA wello; CREATE TABLE wello.wello_checkup_data (id int primary key, name text, note text)",
    )
    sql(
        "wello",
        "INSERT INTO wello.wello_checkup_data SELECT g, '홍길동' || g, '고혈압 주의, 재검 필요 ' || g "
        "FROM generate_series(1, 500) g",
    )
    yield {"port": port, "dsn": f"postgresql://welno:{PASSWORD}@127.0.0.1:{port}/wello"}
    _as_postgres([_bin("pg_ctl"), "-D", str(data), "-m", "immediate", "stop"])
    shutil.rmtree(d, ignore_errors=True)


def test_dump_restores_row_for_row_with_korean_text(pg, tmp_path, monkeypatch):
    monkeypatch.setenv("WELNO_PG_DSN", pg["dsn"])
    out = pg_backup.backup(
        "WELNO_PG_DSN", ["wello.wello_checkup_data"], str(tmp_path / "base"), "wello_scratch"
    )
    assert out["status"] == "ok" and out["row_counts"] == {"wello.wello_checkup_data": 500}
    assert (
        out["restore_check"]["ok"] and out["restore_check"]["row counts after restore"] == out["row_counts"]
    )
    assert out["mode"] == "0o600" and pg_backup.sha256(pg_backup.Path(out["dump"])) == out["sha256"]
    # the restored rows are the same rows, Korean text included
    env = {**os.environ, "PGPASSWORD": PASSWORD}
    q = "SELECT string_agg(id || name || note, ',' ORDER BY id) FROM wello.wello_checkup_data"
    a, b = (
        subprocess.run(
            ["psql", "-XAt", "-h", "127.0.0.1", "-p", str(pg["port"]), "-U", "welno", "-d", db, "-c", q],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for db in ("wello", "wello_scratch")
    )
    assert a == b and "홍길동1" in a
    listing = pg_backup.backup("WELNO_PG_DSN", ["wello.wello_checkup_data"], str(tmp_path / "base2"))
    assert listing["restore_check"]["ok"] and "--list" in listing["restore_check"]["method"]


def test_error_cases_name_the_cause_without_the_password(pg, tmp_path, monkeypatch):
    cases = {
        f"postgresql://welno:{PASSWORD}@127.0.0.1:{cloud_emulator.free_port()}/wello": "unreachable",
        f"postgresql://welno:wrong-{PASSWORD}@127.0.0.1:{pg['port']}/wello": "wrong credentials",
    }
    for dsn, expect in cases.items():
        monkeypatch.setenv("WELNO_PG_DSN", dsn)
        with pytest.raises((pg_backup.PgBackupError, credentials.ScrubbedError)) as e:
            pg_backup.backup("WELNO_PG_DSN", ["wello.wello_checkup_data"], str(tmp_path / "b"))
        assert expect in str(e.value) and PASSWORD not in str(e.value)
    monkeypatch.setenv("WELNO_PG_DSN", pg["dsn"])
    with pytest.raises(pg_backup.PgBackupError, match="table not found"):
        pg_backup.backup("WELNO_PG_DSN", ["wello.no_such_table"], str(tmp_path / "b"))
    real = shutil.disk_usage

    def tiny(path):
        u = real(path)
        return type(u)(u.total, u.total - 1000, 1000)

    monkeypatch.setattr(pg_backup.shutil, "disk_usage", tiny)
    with pytest.raises(pg_backup.PgBackupError, match="disk too small"):
        pg_backup.backup("WELNO_PG_DSN", ["wello.wello_checkup_data"], str(tmp_path / "b"))
    monkeypatch.delenv("WELNO_PG_DSN")
    assert pg_backup.backup("WELNO_PG_DSN", ["t"], str(tmp_path / "b"))["status"] == "skipped"
    assert pg_backup.backup("", ["t"], str(tmp_path / "b"))["status"] == "skipped"


def test_preflight_notebook_backs_up_and_leaks_no_password(pg, tmp_path, outputs, monkeypatch):
    from runbook import runner

    monkeypatch.setenv("WELNO_PG_DSN", pg["dsn"])
    p = write_params(tmp_path, pg_dsn_env="WELNO_PG_DSN", pg_scratch_db="wello_scratch")
    res = runner.run(p, only=["00"])
    import json

    h = json.loads((res.run_dir / "handoff" / "00_preflight.json").read_text())
    assert h["postgres_backup"]["status"] == "ok" and h["postgres_backup"]["restore_check"]["ok"]
    assert credentials.scan_for_values(res.run_dir, [PASSWORD, pg["dsn"]]) == []
    assert credentials.scan_for_values(tmp_path / "base" / "logs", [PASSWORD]) == []
