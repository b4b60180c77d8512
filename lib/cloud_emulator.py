"""A LlamaCloud-compatible local server ("rehearsal mode").

The official ``llama-cloud`` client and ``LlamaCloudIndex``/``LlamaCloudRetriever`` talk to it unchanged
through ``base_url``/``LLAMA_CLOUD_BASE_URL``. It serves the read API an exporter and a retriever use
(projects, pipelines, documents, chunks, files, retrieve) with the same paths, parameters and JSON
shapes, Bearer auth, FastAPI-shaped errors, a log of every request, and fault injection.

    python -m runbook.cloud_emulator --corpus demo --port 8787
    python -m runbook.cloud_emulator --corpus /data/vector_db/welno/backup/exports/<id> --port 8787
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from dataclasses import asdict, dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from . import corpus as corpus_mod

API = "/api/v1"


@dataclass
class Faults:
    """Fault injection. Rates are probabilities per API request (health and admin paths are exempt)."""

    latency_ms: float = 0.0
    rate_429: float = 0.0
    retry_after_ms: int = 50
    rate_500: float = 0.0
    rate_503: float = 0.0
    slow_rate: float = 0.0
    slow_seconds: float = 0.0
    drop_rate: float = 0.0
    path_pattern: str = ""  # only paths matching this regex get faults ("" = all API paths)
    # a server that returns at most this many documents per listing page, whatever `limit` asks (0: no cap)
    max_page_size: int = 0
    # corpus change between two listings: after this many paginated listing requests, apply `change`
    change_after_listings: int = 0
    change: dict = field(default_factory=dict)  # {"action": "delete"|"add", "document_id": ...}
    seed: int | None = None


class _State:
    def __init__(self, corpus, api_key: str, serve_embeddings: bool):
        self.corpus = corpus
        self.api_key = api_key
        self.serve_embeddings = serve_embeddings
        self.faults = Faults()
        self.rng = random.Random()
        self.requests: list[tuple[str, str]] = []
        self.listings = 0
        self.injected: dict[str, int] = {}
        self.lock = threading.Lock()

    def set_faults(self, **kw):
        with self.lock:
            self.faults = Faults(**kw)
            self.rng = random.Random(self.faults.seed)
            self.listings = 0


def _unquote_segments(path: str) -> list[str]:
    return [urllib.parse.unquote(s) for s in path.split("/")]


def _validation_error(loc, msg, typ="value_error"):
    return 422, {"detail": [{"loc": loc, "msg": msg, "type": typ}]}


def _int_param(q, name, default, lo=0, hi=10_000):
    raw = q.get(name, [None])[0]
    if raw is None or raw == "":
        return default, None
    try:
        v = int(raw)
    except ValueError:
        return None, _validation_error(["query", name], "Input should be a valid integer", "int_parsing")
    if v < lo or v > hi:
        return None, _validation_error(
            ["query", name], f"Input should be between {lo} and {hi}", "value_error"
        )
    return v, None


_OPS = {
    "==": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
    ">": lambda a, b: a is not None and a > b,
    "<": lambda a, b: a is not None and a < b,
    ">=": lambda a, b: a is not None and a >= b,
    "<=": lambda a, b: a is not None and a <= b,
    "in": lambda a, b: a in (b or []),
    "nin": lambda a, b: a not in (b or []),
    "any": lambda a, b: isinstance(a, list) and any(x in a for x in (b or [])),
    "all": lambda a, b: isinstance(a, list) and all(x in a for x in (b or [])),
    "contains": lambda a, b: isinstance(a, list) and b in a,
    "text_match": lambda a, b: isinstance(a, str) and str(b) in a,
    "text_match_insensitive": lambda a, b: isinstance(a, str) and str(b).lower() in a.lower(),
    "is_empty": lambda a, b: a in (None, "", []),
}


def make_predicate(search_filters):
    """A metadata predicate from LlamaCloud's ``search_filters`` (MetadataFilters, nested allowed)."""
    if not search_filters:
        return lambda meta: True
    filters = search_filters.get("filters") or []
    condition = (search_filters.get("condition") or "and").lower()
    parts = []
    for f in filters:
        if "filters" in f:
            parts.append(make_predicate(f))
            continue
        op = f.get("operator", "==")
        if op not in _OPS:
            raise ValueError(f"unsupported filter operator {op!r}")
        key, value, fn = f.get("key"), f.get("value"), _OPS[op]
        parts.append(lambda meta, key=key, value=value, fn=fn: _safe(fn, meta.get(key), value))
    if condition == "or":
        return lambda meta: any(p(meta) for p in parts)
    if condition == "not":
        return lambda meta: not any(p(meta) for p in parts)
    return lambda meta: all(p(meta) for p in parts)


def _safe(fn, a, b):
    try:
        return bool(fn(a, b))
    except TypeError:
        return False


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "llamacloud-emulator/1"
    state: _State  # set on the subclass made per server

    def log_message(self, *args):  # quiet
        pass

    # ---- plumbing
    def _send(self, status: int, body, headers: dict | None = None):
        data = json.dumps(body, ensure_ascii=False).encode("utf-8")
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def _drop(self):
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _body(self):
        n = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(n) if n else b""
        if not raw:
            return None
        return json.loads(raw.decode("utf-8"))

    def do_GET(self):
        self._handle("GET")

    def do_POST(self):
        self._handle("POST")

    def do_PUT(self):
        self._handle("PUT")

    def do_PATCH(self):
        self._handle("PATCH")

    def do_DELETE(self):
        self._handle("DELETE")

    def _handle(self, method: str):
        st = self.state
        parsed = urllib.parse.urlsplit(self.path)
        raw_path = parsed.path
        query = urllib.parse.parse_qs(parsed.query)
        try:
            body = self._body() if method in ("POST", "PUT", "PATCH") else None
        except (ValueError, UnicodeDecodeError):
            return self._send(
                422, {"detail": [{"loc": ["body"], "msg": "JSON decode error", "type": "json_invalid"}]}
            )
        if raw_path == "/_emulator/health":
            return self._send(200, {"status": "ok"})
        if not self._authorized():
            with st.lock:
                st.requests.append((method, urllib.parse.unquote(raw_path)))
            return self._send(401, {"detail": "Invalid authentication token"})
        if raw_path.startswith("/_emulator/"):
            return self._admin(method, raw_path, body)
        with st.lock:
            st.requests.append((method, urllib.parse.unquote(raw_path)))
        if self._inject_fault(raw_path):
            return
        if method != "GET" and not raw_path.endswith("/retrieve"):
            return self._send(
                405, {"detail": "Method Not Allowed: the local server serves the read API only"}
            )
        try:
            status, payload = self._route(method, raw_path, query, body)
        except Exception as e:  # noqa: BLE001 - an internal error is a 500, as the real API would answer
            status, payload = 500, {"detail": f"internal error: {type(e).__name__}: {e}"}
        self._send(status, payload)

    def _authorized(self) -> bool:
        auth = self.headers.get("authorization") or ""
        return bool(self.state.api_key) and auth == f"Bearer {self.state.api_key}"

    def _inject_fault(self, path: str) -> bool:
        st = self.state
        f = st.faults
        if f.path_pattern and not re.search(f.path_pattern, urllib.parse.unquote(path)):
            return False
        if f.latency_ms:
            time.sleep(f.latency_ms / 1000)
        with st.lock:
            r = st.rng.random()
        edges = [
            ("drop", f.drop_rate),
            ("429", f.rate_429),
            ("500", f.rate_500),
            ("503", f.rate_503),
            ("slow", f.slow_rate),
        ]
        acc = 0.0
        for name, rate in edges:
            acc += rate
            if r < acc:
                with st.lock:
                    st.injected[name] = st.injected.get(name, 0) + 1
                if name == "drop":
                    self._drop()
                elif name == "429":
                    self._send(
                        429,
                        {"detail": "Too Many Requests"},
                        {
                            "retry-after-ms": str(f.retry_after_ms),
                            "retry-after": str(max(1, f.retry_after_ms // 1000)),
                        },
                    )
                elif name == "500":
                    self._send(500, {"detail": "Internal Server Error"})
                elif name == "503":
                    self._send(503, {"detail": "Service Unavailable"})
                else:
                    time.sleep(f.slow_seconds)
                    return False  # the slow response still answers (the client may have given up)
                return True
        return False

    def _admin(self, method, path, body):
        st = self.state
        if path == "/_emulator/requests":
            with st.lock:
                return self._send(200, {"requests": [list(r) for r in st.requests]})
        if path == "/_emulator/faults" and method == "POST":
            st.set_faults(**(body or {}))
            return self._send(200, asdict(st.faults))
        if path == "/_emulator/delete_document" and method == "POST":
            return self._send(200, {"deleted": st.corpus.delete_document(body["document_id"])})
        if path == "/_emulator/stats":
            return self._send(
                200, {"documents": st.corpus.total_documents(), "chunks": st.corpus.total_chunks()}
            )
        return self._send(404, {"detail": "Not Found"})

    # ---- the API
    def _route(self, method, raw_path, q, body):
        st = self.state
        c = st.corpus
        if not raw_path.startswith(API + "/"):
            return 404, {"detail": "Not Found"}
        seg = _unquote_segments(raw_path[len(API) + 1 :])
        project, pipeline = c.project, c.pipeline
        if seg == ["projects"]:
            items = [project]
            if q.get("project_name") and q["project_name"][0] != project["name"]:
                items = []
            if q.get("organization_id") and q["organization_id"][0] != project["organization_id"]:
                items = []
            return 200, items
        if len(seg) == 2 and seg[0] == "projects":
            return (200, project) if seg[1] == project["id"] else (404, {"detail": "Project not found"})
        if seg == ["pipelines"]:
            ok = True
            for key, val in (
                ("project_id", project["id"]),
                ("project_name", project["name"]),
                ("pipeline_name", pipeline["name"]),
                ("pipeline_type", pipeline["pipeline_type"]),
                ("organization_id", project["organization_id"]),
            ):
                if q.get(key) and q[key][0] != val:
                    ok = False
            return 200, [pipeline] if ok else []
        if len(seg) < 2 or seg[0] != "pipelines":
            return 404, {"detail": "Not Found"}
        if seg[1] != pipeline["id"]:
            return 404, {"detail": f"Pipeline {seg[1]} not found"}
        rest = seg[2:]
        if rest == []:
            return 200, pipeline
        if rest == ["status"]:
            return 200, {"status": "SUCCESS", "job_id": None, "error": None, "pipeline_id": pipeline["id"]}
        if rest in (["documents"], ["documents", "paginated"]):
            skip, err = _int_param(q, "skip", 0, 0, 10**9)
            if err:
                return err
            limit, err = _int_param(q, "limit", 10 if rest == ["documents"] else 100, 1, 10_000)
            if err:
                return err
            if self.state.faults.max_page_size:
                limit = min(limit, self.state.faults.max_page_size)
            docs, total = c.documents_page(skip, limit)
            if rest == ["documents"]:
                return 200, docs
            self._maybe_change()
            return 200, {"documents": docs, "limit": limit, "offset": skip, "total_count": total}
        if len(rest) == 2 and rest[0] == "documents":
            doc = c.get_document(rest[1])
            return (200, doc) if doc else (404, {"detail": f"Document {rest[1]} not found"})
        if len(rest) == 3 and rest[0] == "documents" and rest[2] == "chunks":
            chunks = c.get_chunks(rest[1], st.serve_embeddings)
            return (200, chunks) if chunks is not None else (404, {"detail": f"Document {rest[1]} not found"})
        if rest == ["files2"]:
            limit, err = _int_param(q, "limit", 100, 1, 10_000)
            if err:
                return err
            offset, err = _int_param(q, "offset", 0, 0, 10**9)
            if err:
                return err
            docs, total = c.documents_page(offset, limit)
            files = [
                {
                    "id": (d["metadata"] or {}).get("file_id") or d["id"],
                    "name": (d["metadata"] or {}).get("file_name"),
                    "pipeline_id": pipeline["id"],
                    "project_id": project["id"],
                    "status": "SUCCESS",
                    "file_size": (d["metadata"] or {}).get("file_size"),
                }
                for d in docs
            ]
            return 200, {"files": files, "limit": limit, "offset": offset, "total_count": total}
        if rest == ["retrieve"] and method == "POST":
            return self._retrieve(body or {})
        return 404, {"detail": "Not Found"}

    def _maybe_change(self):
        st = self.state
        f = st.faults
        with st.lock:
            st.listings += 1
            fire = f.change_after_listings and st.listings == f.change_after_listings and f.change
        if fire:
            if f.change.get("action") == "delete":
                st.corpus.delete_document(f.change["document_id"])
            elif f.change.get("action") == "add":
                st.corpus.put_document(f.change["document"], f.change.get("chunks", []), None)

    def _retrieve(self, body):
        st = self.state
        if not isinstance(body.get("query"), str):
            return _validation_error(["body", "query"], "Field required", "missing")
        preset = st.corpus.pipeline.get("preset_retrieval_parameters") or {}
        mode = body.get("retrieval_mode") or "chunks"
        if mode != "chunks":
            return 400, {"detail": f"retrieval_mode {mode!r} is not served by the local server; use 'chunks'"}
        top_k = body.get("dense_similarity_top_k") or preset.get("dense_similarity_top_k") or 30
        cutoff = body.get("dense_similarity_cutoff")
        cutoff = preset.get("dense_similarity_cutoff", 0.0) if cutoff is None else cutoff
        try:
            predicate = make_predicate(body.get("search_filters") or preset.get("search_filters"))
        except ValueError as e:
            return _validation_error(["body", "search_filters"], str(e))
        t0 = time.perf_counter()
        try:
            hits = st.corpus.search(body["query"], int(top_k), float(cutoff or 0.0), predicate)
        except NotImplementedError as e:
            return 501, {"detail": str(e)}
        dense_ms = (time.perf_counter() - t0) * 1000
        meta = {"search": "exact dense cosine (local LlamaCloud-compatible server)"}
        alpha = body.get("alpha", preset.get("alpha"))
        if alpha is not None and float(alpha) < 1.0:
            meta["sparse"] = (
                f"alpha={alpha} asked for hybrid search; the local server ranks by dense cosine only"
            )
        if body.get("enable_reranking", preset.get("enable_reranking")):
            meta["reranking"] = "asked for; not imitated by the local server (dense order returned)"
        nodes = []
        for node, score in hits:
            n = dict(node)
            n["embedding"] = None
            nodes.append({"node": n, "score": score, "class_name": "TextNodeWithScore"})
        return 200, {
            "pipeline_id": st.corpus.pipeline["id"],
            "retrieval_nodes": nodes,
            "image_nodes": [],
            "page_figure_nodes": [],
            "retrieval_latency": {"dense_retrieval": dense_ms},
            "metadata": meta,
            "inferred_search_filters": None,
            "class_name": "RetrieveResults",
        }


class EmulatorServer:
    """The server in a background thread of this process; a context manager for tests."""

    def __init__(
        self, corpus, api_key: str, host: str = "127.0.0.1", port: int = 0, serve_embeddings: bool = False
    ):
        self.state = _State(corpus, api_key, serve_embeddings)
        handler = type("BoundHandler", (Handler,), {"state": self.state})
        self.httpd = ThreadingHTTPServer((host, port), handler)
        self.httpd.daemon_threads = True
        self.httpd.request_queue_size = 128
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, name="llamacloud-emulator", daemon=True
        )

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def requests(self) -> list[tuple[str, str]]:
        with self.state.lock:
            return list(self.state.requests)

    @property
    def corpus(self):
        return self.state.corpus

    def set_faults(self, **kw):
        self.state.set_faults(**kw)

    def start(self):
        self.thread.start()
        return self

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class SubprocessHandle:
    proc: subprocess.Popen
    url: str

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def set_faults_remote(url: str, api_key: str, **faults) -> dict:
    """Set fault injection on a running server (e.g. one started with ``start_subprocess``)."""
    req = urllib.request.Request(
        url + "/_emulator/faults",
        data=json.dumps(faults).encode(),
        method="POST",
        headers={"Authorization": f"Bearer {api_key}", "content-type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def wait_healthy(url: str, timeout: float = 180.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the local LlamaCloud-compatible server exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(url + "/_emulator/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(
        f"the local LlamaCloud-compatible server at {url} did not become healthy in {timeout:.0f} s"
    )


def start_subprocess(
    corpus: str,
    api_key_env: str = "LLAMA_CLOUD_API_KEY",
    port: int = 0,
    embed_cache: str = "",
    serve_embeddings: bool = False,
) -> SubprocessHandle:
    """Start ``python -m runbook.cloud_emulator`` on a free loopback port; the key comes from the env."""
    port = port or free_port()
    cmd = [
        sys.executable,
        "-m",
        "runbook.cloud_emulator",
        "--corpus",
        corpus,
        "--port",
        str(port),
        "--api-key-env",
        api_key_env,
    ]
    if embed_cache:
        cmd += ["--embed-cache", embed_cache]
    if serve_embeddings:
        cmd.append("--serve-embeddings")
    proc = subprocess.Popen(cmd, env=os.environ.copy(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc=proc)
    except Exception:
        proc.kill()
        err = proc.stderr.read().decode("utf-8", "replace")[-2000:] if proc.stderr else ""
        raise RuntimeError(f"could not start the local server for corpus {corpus!r}:\n{err}") from None
    return SubprocessHandle(proc, url)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m runbook.cloud_emulator",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument(
        "--corpus", default="demo", help="demo | synthetic:N[:D[:chunks_per_doc]] | an export folder"
    )
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8787)
    ap.add_argument(
        "--api-key-env",
        default="LLAMA_CLOUD_API_KEY",
        help="environment variable holding the key clients must send (Bearer)",
    )
    ap.add_argument(
        "--embed-cache", default="", help="SQLite embedding cache (demo vectors are computed once)"
    )
    ap.add_argument(
        "--serve-embeddings",
        action="store_true",
        help="fill `embedding` in /chunks (real LlamaCloud is not known to)",
    )
    args = ap.parse_args(argv)
    from .paths import PROJECT_ROOT

    key = os.environ.get(args.api_key_env)
    if not key:
        print(f"error: set {args.api_key_env} to the key clients must send", file=sys.stderr)
        return 2
    cache = args.embed_cache or str(PROJECT_ROOT / "data" / "cache" / "embeddings.sqlite")
    t0 = time.time()
    corpus = corpus_mod.load(args.corpus, cache)
    srv = EmulatorServer(corpus, key, args.host, args.port, args.serve_embeddings)
    print(
        f"serving {corpus.total_documents()} documents / {corpus.total_chunks()} chunks of "
        f"{corpus.pipeline['name']!r} at {srv.url} (loaded in {time.time() - t0:.1f} s)",
        flush=True,
    )
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        srv.httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        srv.httpd.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
