"""Pre-migration backup of PostgreSQL tables (the seed's ``wello.wello_checkup_data``), proven restorable.

``pg_dump`` in custom format into ``backup/`` (owner-only, written under a temporary name and renamed),
sha256 and row counts recorded. The rows are counted in the dump's own snapshot: one psql session opens a
``REPEATABLE READ READ ONLY`` transaction, exports its snapshot, counts every table, and ``pg_dump
--snapshot`` dumps that same snapshot while the transaction stays open, so rows written meanwhile are in
neither the counts nor the dump. Then the dump is restored into a scratch database and compared row for
row (or, without a scratch database, read back with ``pg_restore --list``). The DSN comes from the environment
variable the params name; it never reaches a command line, an output or an error text (passwords go to
the tools through ``PGPASSWORD``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import queue
import re
import secrets
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from . import credentials
from .errors import RunbookError
from .paths import Layout


class PgBackupError(RunbookError, RuntimeError):
    pass


@dataclass
class Conn:
    host: str
    port: str
    user: str
    password: str
    dbname: str

    def env(self, dbname: str | None = None) -> dict:
        e = {
            **os.environ,
            "PGHOST": self.host,
            "PGPORT": self.port,
            "PGUSER": self.user,
            "PGDATABASE": dbname or self.dbname,
            "PGCONNECT_TIMEOUT": "5",
        }
        if self.password:
            e["PGPASSWORD"] = self.password
        return e

    def where(self) -> str:
        return f"{self.user}@{self.host}:{self.port}/{self.dbname}"


def parse_dsn(dsn: str) -> Conn:
    """``postgresql://user:password@host:port/db`` or libpq ``key=value`` pairs."""
    credentials.remember(dsn)
    if "://" in dsn:
        u = urllib.parse.urlsplit(dsn)
        conn = Conn(
            u.hostname or "localhost",
            str(u.port or 5432),
            urllib.parse.unquote(u.username or ""),
            urllib.parse.unquote(u.password or ""),
            (u.path or "/").lstrip("/") or "postgres",
        )
    else:
        kv = dict(re.findall(r"(\w+)\s*=\s*'?([^'\s]*)'?", dsn))
        conn = Conn(
            kv.get("host", "localhost"),
            kv.get("port", "5432"),
            kv.get("user", ""),
            kv.get("password", ""),
            kv.get("dbname", "postgres"),
        )
    credentials.remember(conn.password)
    return conn


def _quoted(pattern: str, stderr: str) -> str:
    """The name PostgreSQL quotes in a message (``database "x" does not exist``), scrubbed of secrets."""
    m = re.search(pattern, stderr, re.I)
    return credentials.scrub(m.group(1)) if m else ""


def _classify(stderr: str, conn: Conn, what: str) -> str:
    """One cause per message: authentication failed, database does not exist, permission denied, table not
    found, server unreachable. libpq puts 'connection to server at ... failed:' in front of every
    connection-time FATAL, so the specific causes are tested before "unreachable". Never the password."""
    s = stderr.lower()
    at = f"{conn.host}:{conn.port}"
    if (
        "password authentication failed" in s
        or "no password supplied" in s
        or "authentication failed" in s
        or "no pg_hba.conf entry" in s
        or re.search(r'role "[^"]*" does not exist', s)
    ):
        role = _quoted(r'role "([^"]*)" does not exist', stderr)
        why = (
            f"role {role!r} does not exist on the server"
            if role
            else "the server refused this user's login (pg_hba.conf)"
            if "no pg_hba.conf entry" in s
            else "wrong credentials"
        )
        return (
            f"authentication failed for user {conn.user!r} at {at} ({what}): {why}; check the user and "
            "password in the DSN in the environment (wrong credentials, or a server that does not admit "
            "this user)"
        )
    missing_db = _quoted(r'database "([^"]*)" does not exist', stderr)
    if missing_db:
        return (
            f"database not found: {missing_db!r} does not exist on the server at {at} ({what}); create it "
            f'(createdb -h {conn.host} -p {conn.port} -U {conn.user} "{missing_db}", or CREATE DATABASE '
            f'"{missing_db}";) or fix the database name -- in the DSN in the environment, or pg_scratch_db '
            "in the params for the scratch database"
        )
    if "permission denied" in s or "must be owner" in s or "does not have connect privilege" in s:
        detail = credentials.scrub(
            next((ln.strip() for ln in stderr.splitlines() if "permission denied" in ln.lower()), "")
            or next((ln.strip() for ln in stderr.splitlines() if ln.strip()), "")
        )
        detail = re.sub(r"^(psql|pg_dump|pg_restore): error: ", "", detail)[-300:]
        return (
            f"permission denied for user {conn.user!r} at {at} ({what}): {detail}; grant it what the backup "
            "needs (CONNECT on the database, USAGE on the schema, SELECT on the tables; CREATE on the scratch "
            "database) or use a user that has it"
        )
    if any(
        x in s for x in ("could not translate host", "name or service not known", "nodename nor servname")
    ):
        return (
            f"PostgreSQL server unreachable: host {conn.host!r} unknown (no such host name); "
            "check the host in the DSN"
        )
    if any(
        x in s
        for x in (
            "could not connect",
            "connection refused",
            "timeout expired",
            "no route to host",
            "connection to server",
        )
    ):
        return f"PostgreSQL server unreachable at {at}: is it running, and is the host/port right?"
    if "no matching tables" in s or "does not exist" in s and ("relation" in s or "schema" in s):
        return f"table not found: {what}; check pg_tables in the params (schema.table)"
    if "no space left" in s:
        return f"disk too small for {what}: free space on the backup volume"
    return f"{what} failed: {credentials.scrub(stderr.strip())[-400:]}"


def _tool(name: str) -> str:
    tool = shutil.which(name)
    if not tool:
        raise PgBackupError(
            f"{name} not found: install the PostgreSQL client (apt-get install postgresql-client)"
        )
    return tool


def _run(cmd: list[str], conn: Conn, what: str, dbname: str | None = None) -> str:
    tool = _tool(cmd[0])
    r = subprocess.run([tool, *cmd[1:]], capture_output=True, text=True, env=conn.env(dbname), timeout=3600)
    if r.returncode != 0:
        raise PgBackupError(_classify(r.stderr, conn, what))
    return r.stdout


def _ident(table: str) -> str:
    return ".".join('"' + p.replace('"', '""') + '"' for p in table.split("."))


class _Psql:
    """One ``psql`` connection kept open: statements go in on stdin, result lines come back on stdout.

    Each call ends its statements with ``\\echo <marker>`` and reads up to the marker. With
    ``ON_ERROR_STOP`` psql exits on the first error; its stderr (in a temporary file, so it cannot fill a
    pipe) is then classified like the other tools' errors. The password travels in ``PGPASSWORD`` only.
    """

    def __init__(self, conn: Conn, dbname: str | None = None, timeout: float = 3600):
        self.conn, self.timeout = conn, timeout
        self._err = tempfile.TemporaryFile(mode="w+", encoding="utf-8", errors="replace")
        self._lines: queue.Queue = queue.Queue()
        try:
            self._p = subprocess.Popen(
                [_tool("psql"), "-XAtq", "-v", "ON_ERROR_STOP=1"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=self._err,
                text=True,
                encoding="utf-8",
                errors="replace",
                env=conn.env(dbname),
            )
        except BaseException:
            self._err.close()
            raise
        threading.Thread(target=self._pump, name="psql-session-reader", daemon=True).start()

    def _pump(self) -> None:
        try:
            for line in self._p.stdout:
                self._lines.put(line)
        finally:
            self._lines.put(None)

    def query(self, sql: str, what: str) -> list[str]:
        marker = f"__runbook_done_{secrets.token_hex(8)}__"
        try:
            self._p.stdin.write(f"{sql}\n\\echo {marker}\n")
            self._p.stdin.flush()
        except (BrokenPipeError, OSError):
            self._fail(what)
        out: list[str] = []
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                self.close()
                raise PgBackupError(
                    f"{what}: no answer from PostgreSQL at {self.conn.host}:{self.conn.port} in {self.timeout:.0f} s"
                ) from None
            if line is None:  # psql exited: connection failed or a statement failed
                self._fail(what)
            line = line.rstrip("\n")
            if line == marker:
                return out
            out.append(line)

    def _fail(self, what: str):
        self.close()
        self._err.seek(0)
        raise PgBackupError(_classify(self._err.read(), self.conn, what))

    def close(self) -> None:
        """End the session (an open transaction is rolled back by the server when psql disconnects)."""
        if self._p.poll() is None:
            try:
                self._p.stdin.close()
            except OSError:
                pass
            try:
                self._p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._p.kill()
                self._p.wait()
        for f in (self._p.stdin, self._p.stdout):
            try:
                f.close()
            except OSError:
                pass

    def __enter__(self) -> _Psql:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
        self._err.close()


_SNAPSHOT_ID = re.compile(r"^[0-9A-Fa-f]+-[0-9A-Fa-f]+(-[0-9]+)?$")


def _export_snapshot(session: _Psql) -> str:
    """Open a REPEATABLE READ READ ONLY transaction in ``session`` and export its snapshot for pg_dump."""
    session.query("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY;", "opening the snapshot transaction")
    out = session.query("SELECT pg_export_snapshot();", "exporting the snapshot")
    snap = out[0].strip() if out else ""
    if not _SNAPSHOT_ID.match(snap):
        raise PgBackupError(
            f"exporting the snapshot failed: unexpected answer {credentials.scrub(snap)[:80]!r}"
        )
    return snap


def _between_count_and_dump() -> None:
    """Called after the rows are counted and before pg_dump starts (a seam for the tests; does nothing)."""


def row_counts(conn: Conn, tables: list[str], dbname: str | None = None) -> dict[str, int]:
    out = {}
    for t in tables:
        out[t] = int(
            _run(
                ["psql", "-XAt", "-v", "ON_ERROR_STOP=1", "-c", f"SELECT count(*) FROM {_ident(t)}"],
                conn,
                f"counting {t}",
                dbname,
            ).strip()
        )
    return out


def table_bytes(conn: Conn, tables: list[str]) -> int:
    total = 0
    for t in tables:
        total += int(
            _run(
                [
                    "psql",
                    "-XAt",
                    "-v",
                    "ON_ERROR_STOP=1",
                    "-c",
                    f"SELECT pg_total_relation_size('{_ident(t)}'::regclass)",
                ],
                conn,
                f"sizing {t}",
            ).strip()
        )
    return total


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for b in iter(lambda: f.read(1 << 20), b""):
            h.update(b)
    return h.hexdigest()


def backup(dsn_env: str, tables: list[str], base_path: str, scratch_db: str = "") -> dict:
    """Dump, checksum, count and prove restorable. Without ``dsn_env``: skipped, with the reason."""
    if not dsn_env:
        return {"status": "skipped", "reason": "no pg_dsn_env in the params: no PostgreSQL backup asked for"}
    secret = credentials.get_secret(dsn_env, required=False, purpose="PostgreSQL DSN")
    if not secret:
        return {"status": "skipped", "reason": f"environment variable {dsn_env} is not set"}
    with credentials.scrubbed_errors():
        conn = parse_dsn(secret.reveal())
        layout = Layout.from_params(base_path)
        dest_dir = layout.backup / "postgres"
        dest_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(dest_dir, 0o700)
        need = table_bytes(conn, tables)
        free = shutil.disk_usage(dest_dir).free
        if need > free * 0.9:
            raise PgBackupError(
                f"disk too small for the dump: tables take {need / 1e9:.2f} GB, {free / 1e9:.2f} GB free "
                f"on {dest_dir}"
            )
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
        final = dest_dir / f"{conn.dbname}-{stamp}.dump"
        tmp = final.with_name("." + final.name + ".tmp")
        try:
            # counts and dump read one snapshot: the exporting transaction stays open until pg_dump is done
            with _Psql(conn) as session:
                snapshot = _export_snapshot(session)
                counts = {}
                for t in tables:
                    out = session.query(f"SELECT count(*) FROM {_ident(t)};", f"counting {t}")
                    counts[t] = int(out[0].strip())
                _between_count_and_dump()
                args = [
                    "pg_dump",
                    "-Fc",
                    "--strict-names",
                    "--no-owner",
                    "--snapshot",
                    snapshot,
                    "-f",
                    str(tmp),
                ]
                for t in tables:
                    args += ["-t", t]
                _run(args, conn, "pg_dump of " + ", ".join(tables))
                session.query("COMMIT;", "closing the snapshot transaction")
            os.chmod(tmp, 0o600)
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)
        result = {
            "status": "ok",
            "dump": str(final),
            "bytes": final.stat().st_size,
            "sha256": sha256(final),
            "row_counts": counts,
            "counted_in_snapshot": "row counts taken in the dump's snapshot (pg_dump --snapshot)",
            "server": f"{conn.host}:{conn.port}/{conn.dbname}",
            "mode": oct(final.stat().st_mode & 0o777),
        }
        result["restore_check"] = verify_restorable(conn, final, tables, counts, scratch_db)
        return result


def verify_restorable(conn: Conn, dump: Path, tables: list[str], counts: dict, scratch_db: str = "") -> dict:
    if not scratch_db:
        listing = _run(["pg_restore", "--list", str(dump)], conn, "pg_restore --list")
        found = {t: (f" {t.split('.')[-1]} " in listing) for t in tables}
        return {
            "method": "pg_restore --list (no scratch database in the params)",
            "tables listed": found,
            "ok": all(found.values()),
        }
    for schema in sorted({t.split(".")[0] for t in tables if "." in t}):  # pg_dump -t leaves schemas out
        _run(
            ["psql", "-XAt", "-v", "ON_ERROR_STOP=1", "-c", f"CREATE SCHEMA IF NOT EXISTS {_ident(schema)}"],
            conn,
            f"preparing scratch database {scratch_db}",
            scratch_db,
        )
    _run(
        ["pg_restore", "--clean", "--if-exists", "--no-owner", "-d", scratch_db, str(dump)],
        conn,
        f"restore into scratch database {scratch_db}",
        scratch_db,
    )
    restored = row_counts(conn, tables, scratch_db)
    return {
        "method": f"restored into scratch database {scratch_db}",
        "row counts after restore": restored,
        "ok": restored == counts,
    }
