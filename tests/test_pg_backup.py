"""Phase 00's PostgreSQL backup against a real PostgreSQL server started for the test."""

import glob
import os
import shutil
import subprocess
import threading
import time

import pytest

from runbook import credentials, pg_backup
from runbook.rehearsal import cloud_emulator

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


def _pg_env(pg):
    return {
        **os.environ,
        "PGPASSWORD": PASSWORD,
        "PGHOST": "127.0.0.1",
        "PGPORT": str(pg["port"]),
        "PGUSER": "welno",
    }


def _psql(pg, db, q):
    return subprocess.run(
        ["psql", "-XAt", "-v", "ON_ERROR_STOP=1", "-d", db, "-c", q],
        check=True,
        env=_pg_env(pg),
        capture_output=True,
        text=True,
    ).stdout.strip()


class _Inserter(threading.Thread):
    """Inserts rows one by one, each committed and acknowledged, until stopped (bounded in rows and time)."""

    def __init__(self, pg, table, first_id, max_rows=20000, max_seconds=120):
        super().__init__(daemon=True)
        self.pg, self.table, self.next_id = pg, table, first_id
        self.max_rows, self.max_seconds = max_rows, max_seconds
        self.done = 0
        self.stop = threading.Event()
        self.error = None

    def run(self):
        p = subprocess.Popen(
            ["psql", "-XAtq", "-v", "ON_ERROR_STOP=1", "-d", "wello"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=_pg_env(self.pg),
        )
        deadline = time.monotonic() + self.max_seconds
        try:
            while not self.stop.is_set() and self.done < self.max_rows and time.monotonic() < deadline:
                p.stdin.write(f"INSERT INTO {self.table} VALUES ({self.next_id}, 'live row');\n\\echo ok\n")
                p.stdin.flush()
                if p.stdout.readline().strip() != "ok":
                    raise RuntimeError("insert failed")
                self.next_id += 1
                self.done += 1
                time.sleep(0.001)
        except Exception as e:  # reported by the test
            self.error = e
        finally:
            p.stdin.close()
            p.wait(timeout=30)


def test_counts_come_from_the_dumps_snapshot_while_rows_are_inserted(pg, tmp_path, monkeypatch):
    """Rows inserted during the backup (continuously, and a burst between counting and pg_dump) must be in
    neither the recorded counts nor the dump: the restore check passes and the counts match exactly."""
    table = "wello.checkup_live"
    _psql(
        pg, "wello", f"DROP TABLE IF EXISTS {table}; CREATE TABLE {table} (id bigint primary key, note text)"
    )
    _psql(pg, "wello", f"INSERT INTO {table} SELECT g, repeat('x', 200) FROM generate_series(1, 20000) g")
    burst = {"rows": 0}
    real_hook = pg_backup._between_count_and_dump

    def insert_burst():  # after the counts, before pg_dump: these committed rows must not reach the dump
        real_hook()
        # the inserter commits rows during the backup by construction, not by how threads are scheduled
        seen, t0 = inserter.done, time.monotonic()
        while inserter.done < seen + 5 and inserter.is_alive() and time.monotonic() - t0 < 30:
            time.sleep(0.01)
        _psql(pg, "wello", f"INSERT INTO {table} SELECT g, 'burst' FROM generate_series(5000001, 5001000) g")
        burst["rows"] = 1000

    monkeypatch.setattr(pg_backup, "_between_count_and_dump", insert_burst)
    monkeypatch.setenv("WELNO_PG_DSN", pg["dsn"])
    inserter = _Inserter(pg, table, first_id=1000001)
    inserter.start()
    try:
        t0 = time.monotonic()
        while inserter.done < 20 and inserter.is_alive() and time.monotonic() - t0 < 30:
            time.sleep(0.01)  # the insert loop runs before backup() starts
        assert inserter.done >= 20, inserter.error
        before = inserter.done
        out = pg_backup.backup("WELNO_PG_DSN", [table], str(tmp_path / "base"), "wello_scratch")
        during = inserter.done - before
        t0 = time.monotonic()
        while inserter.done < before + during + 20 and inserter.is_alive() and time.monotonic() - t0 < 30:
            time.sleep(0.01)  # ... and goes on after it ends
    finally:
        inserter.stop.set()
        inserter.join(timeout=60)
    assert inserter.error is None and not inserter.is_alive()
    assert burst["rows"] == 1000 and during > 0, "no rows were inserted while the backup ran"
    final = int(_psql(pg, "wello", f"SELECT count(*) FROM {table}"))
    recorded = out["row_counts"][table]
    assert out["status"] == "ok" and "snapshot" in out["counted_in_snapshot"]
    assert 20000 + before <= recorded <= final - burst["rows"] - 20, (recorded, final)
    check = out["restore_check"]
    assert check["row counts after restore"] == out["row_counts"] and check["ok"], check
    assert int(_psql(pg, "wello_scratch", f"SELECT count(*) FROM {table}")) == recorded
    # the burst committed after the snapshot: none of its rows is in the dump
    assert _psql(pg, "wello_scratch", f"SELECT count(*) FROM {table} WHERE id > 5000000") == "0"
    for db in ("wello", "wello_scratch"):
        _psql(pg, db, f"DROP TABLE IF EXISTS {table}")


def test_missing_database_is_reported_as_not_found(pg, tmp_path, monkeypatch):
    stderr = (
        'psql: error: connection to server at "127.0.0.1", port 5432 failed: '
        'FATAL:  database "no_such_db" does not exist'
    )
    conn = pg_backup.parse_dsn(f"postgresql://welno:{PASSWORD}@127.0.0.1:5432/no_such_db")
    msg = pg_backup._classify(stderr, conn, "sizing t")
    assert msg.startswith("database not found") and "no_such_db" in msg and "unreachable" not in msg
    monkeypatch.setenv("WELNO_PG_DSN", f"postgresql://welno:{PASSWORD}@127.0.0.1:{pg['port']}/no_such_db")
    with pytest.raises(pg_backup.PgBackupError) as e:
        pg_backup.backup("WELNO_PG_DSN", ["wello.wello_checkup_data"], str(tmp_path / "b"))
    assert "database not found" in str(e.value) and "no_such_db" in str(e.value)
    assert "unreachable" not in str(e.value) and PASSWORD not in str(e.value)
    monkeypatch.setenv("WELNO_PG_DSN", pg["dsn"])  # a missing scratch database too
    with pytest.raises(pg_backup.PgBackupError, match="database not found.*no_such_scratch"):
        pg_backup.backup("WELNO_PG_DSN", ["wello.wello_checkup_data"], str(tmp_path / "c"), "no_such_scratch")


def test_snapshot_session_errors_are_classified_without_the_password(pg):
    conn = pg_backup.parse_dsn(pg["dsn"])
    with pg_backup._Psql(conn) as s:
        assert pg_backup._SNAPSHOT_ID.match(pg_backup._export_snapshot(s))
        assert s.query("SELECT count(*) FROM wello.wello_checkup_data;", "counting") == ["500"]
        with pytest.raises(pg_backup.PgBackupError, match="table not found"):
            s.query("SELECT count(*) FROM wello.no_such_table;", "counting wello.no_such_table")
    down = pg_backup.parse_dsn(f"postgresql://welno:{PASSWORD}@127.0.0.1:{cloud_emulator.free_port()}/wello")
    with pg_backup._Psql(down) as s, pytest.raises(pg_backup.PgBackupError) as e:
        pg_backup._export_snapshot(s)
    assert "unreachable" in str(e.value) and PASSWORD not in str(e.value)


def test_connection_failures_are_told_apart_naming_what_to_do(pg, tmp_path, monkeypatch):
    """Missing database, failed authentication, missing rights and an unreachable server are four causes
    with four remedies; none of them is reported as another, and no message holds a password."""
    other_pw = "pw2-CANARY-81d0c3aa"
    _psql(pg, "postgres", f"DROP ROLE IF EXISTS no_rights; CREATE ROLE no_rights LOGIN PASSWORD '{other_pw}'")
    port = pg["port"]
    cases = {
        f"postgresql://welno:{PASSWORD}@127.0.0.1:{port}/welno_archive_없음": (
            "database not found",
            [
                "'welno_archive_없음' does not exist",
                "createdb -h 127.0.0.1",
                'CREATE DATABASE "welno_archive_없음"',
            ],
        ),
        f"postgresql://ghost:{PASSWORD}@127.0.0.1:{port}/wello": ("authentication failed", ["'ghost'"]),
        f"postgresql://welno:wrong-{PASSWORD}@127.0.0.1:{port}/wello": (
            "authentication failed",
            ["wrong credentials"],
        ),
        f"postgresql://no_rights:{other_pw}@127.0.0.1:{port}/wello": (
            "permission denied",
            ["'no_rights'", "schema wello", "GRANT".lower()],
        ),
        f"postgresql://welno:{PASSWORD}@127.0.0.1:{cloud_emulator.free_port()}/wello": ("unreachable", []),
    }
    causes = ("database not found", "authentication failed", "permission denied", "unreachable")
    try:
        for dsn, (cause, details) in cases.items():
            monkeypatch.setenv("WELNO_PG_DSN", dsn)
            with pytest.raises((pg_backup.PgBackupError, credentials.ScrubbedError)) as e:
                pg_backup.backup("WELNO_PG_DSN", ["wello.wello_checkup_data"], str(tmp_path / "b"))
            msg = str(e.value)
            assert cause in msg, (dsn, msg)
            assert [c for c in causes if c in msg] == [cause], msg  # one cause, not two
            assert all(d.lower() in msg.lower() for d in details), msg
            assert PASSWORD not in msg and other_pw not in msg and dsn not in msg
    finally:
        _psql(pg, "postgres", "DROP ROLE IF EXISTS no_rights")
    unknown_host = pg_backup.parse_dsn(f"postgresql://welno:{PASSWORD}@db.example.invalid:5432/wello")
    msg = pg_backup._classify(
        'psql: error: could not translate host name "db.example.invalid" to address: Name or service not known',
        unknown_host,
        "sizing t",
    )
    assert "unreachable" in msg and "db.example.invalid" in msg and "unknown" in msg
