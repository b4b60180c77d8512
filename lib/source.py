"""The source index, read-only: the official ``llama-cloud`` client, configured from the params.

Only GET requests and ``retrieve`` (a read) are ever sent. The key comes from the environment variable
the params name; in rehearsal mode the local LlamaCloud-compatible server is started if needed.
"""

from __future__ import annotations

import os
import urllib.parse
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from . import credentials, plugins
from .errors import RunbookError


class SourceError(RunbookError, RuntimeError):
    pass


def path_id(value: str) -> str:
    """An id for a URL path segment. llama-cloud 1.x puts ids into paths as they are, so ``/ ? # %`` would
    change the path, control characters are refused by httpx and ``.``/``..`` are removed as dot segments:
    every id is percent-encoded whole (dots too when the id is only dots)."""
    if value and set(value) == {"."}:
        return "%2E" * len(value)
    return urllib.parse.quote(value, safe="")


@dataclass
class Source:
    client: object  # llama_cloud.LlamaCloud; None when a dry run did not connect (see ``not_connected``)
    base_url: str
    api_key_env: str
    not_connected: str = ""  # why a dry run did not connect (no source named, no key); "" when connected

    @property
    def connected(self) -> bool:
        return self.client is not None

    def describe(self) -> str:
        where = f"{self.base_url or 'https://api.cloud.llamaindex.ai'} (key from ${self.api_key_env})"
        return where + (f"; not contacted: {self.not_connected}" if self.not_connected else "")


def index_ref(
    index_id: str, index_name: str, project_name: str = "Default", organization_id: str = ""
) -> dict:
    """The source index the params name, as one argument: the keyword arguments of :func:`find_pipeline`
    (and of the functions that look the index up, e.g. ``preflight.source_check(src, **where)``)."""
    return {
        "index_id": index_id,
        "index_name": index_name,
        "project_name": project_name,
        "organization_id": organization_id,
    }


def not_ready(api_key_env: str, where: dict) -> str:
    """Why the source cannot be reached as the params stand: no index named, or its key variable unset
    ("" when both are there). Only whether the variable is set is looked at; its value is not kept."""
    if not (where.get("index_id") or where.get("index_name")):
        return "no source named (index_id and index_name are empty)"
    if not api_key_env or not os.environ.get(api_key_env):
        return f"the LlamaCloud key is missing (${api_key_env or '(no variable named)'} is not set)"
    return ""


def open_for(dry_run: bool, where: dict, base_url: str, api_key_env: str, **options) -> Source:
    """:func:`open_source` for a phase page. A dry run with no source named or its key missing goes on
    without connecting: it says so in one line and gets a :class:`Source` that is not connected, which the
    phase's functions show as a plan with placeholders. A real run always opens the source, and stops with
    the usual errors (the key's variable is not set; ``set index_id or index_name in the params``)."""
    why = not_ready(api_key_env, where) if dry_run else ""
    if why:
        print(f"dry run: {why}; the source is not contacted, what this phase would check is shown below")
        return Source(None, base_url, api_key_env, not_connected=why)
    return open_source(base_url, api_key_env, **options)


def overview(src: Source, where: dict, extra: dict | None = None) -> dict:
    """The source and index a page works on, for a key/value table (``extra``: more rows)."""
    named = where.get("index_id") or where.get("index_name") or "(not named: set index_id or index_name)"
    return {"source": src.describe(), "index": named, **(extra or {})}


def open_source(
    base_url: str,
    api_key_env: str,
    max_retries: int = 8,
    timeout_s: float = 60.0,
    emulator_corpus: str = "",
    embed_cache: str = "",
    emulator_query_latency_ms: float = 0.0,
    emulator_serve_embeddings: bool = False,
) -> Source:
    from llama_cloud import LlamaCloud

    if emulator_corpus:
        base_url = plugins.rehearsal("emulator_corpus").ensure_local_server(
            base_url,
            emulator_corpus,
            api_key_env,
            embed_cache,
            emulator_query_latency_ms,
            serve_embeddings=emulator_serve_embeddings,
        )
    key = credentials.get_secret(api_key_env, purpose="LlamaCloud API key")
    http = _http_client(timeout_s)
    client = LlamaCloud(
        api_key=key.reveal(),
        base_url=base_url or None,
        max_retries=max_retries,
        timeout=timeout_s,
        http_client=http,
    )
    # the official client closes only an httpx client it made itself: ours (and its idle connections, up to
    # KEEP_ALIVE) closes when the official client is collected, as its own would
    weakref.finalize(client, http.close)
    return Source(client, base_url, api_key_env)


# Connections kept open between requests. The client's own default keeps 20: with more requests in flight
# (phase 01's ``concurrency`` plus the listing pages asked ahead), every connection past 20 was closed after
# its request and opened again for the next (a TLS handshake each against LlamaCloud); measured at 10k chunks
# and 50 ms a request, 24 in flight took 2.3-3.1 s against 1.5-1.6 s at 20.
KEEP_ALIVE = 100


def _http_client(timeout_s: float):
    """The official client's own httpx client (its proxies, trust store, redirects), keeping every
    connection it opens up to ``KEEP_ALIVE``."""
    import httpx
    from llama_cloud import DefaultHttpxClient

    return DefaultHttpxClient(
        timeout=timeout_s,
        limits=httpx.Limits(max_connections=KEEP_ALIVE, max_keepalive_connections=KEEP_ALIVE),
    )


def find_pipeline(
    src: Source,
    index_id: str = "",
    index_name: str = "",
    project_name: str = "Default",
    organization_id: str = "",
):
    """(project, pipeline) by pipeline id, or by name within a project, as LlamaCloudIndex resolves them."""
    import llama_cloud

    c = src.client
    try:
        with credentials.scrubbed_errors():
            if index_id:
                pipeline = c.pipelines.get(pipeline_id=index_id)
                project = c.projects.get(project_id=pipeline.project_id)
                if index_name and pipeline.name != index_name:
                    raise SourceError(
                        f"pipeline {index_id} is named {pipeline.name!r}, not {index_name!r}: check index_name"
                    )
                return project, pipeline
            if not index_name:
                raise SourceError("set index_id or index_name in the params")
            # the pipeline is asked for by its project's name while the project is looked up (one round trip
            # instead of two), and taken only if it belongs to the project found
            org = {"organization_id": organization_id} if organization_id else {}
            with ThreadPoolExecutor(max_workers=1) as pool:
                named = pool.submit(
                    c.pipelines.list, project_name=project_name, pipeline_name=index_name, **org
                )
                projects = c.projects.list(organization_id=organization_id or None)
                project = next((p for p in projects if p.name == project_name), None)
                if project is None:
                    named.cancel()
                    raise SourceError(
                        f"project {project_name!r} not found; projects: {[p.name for p in projects]}"
                    )
                try:
                    pipelines = [p for p in named.result() if p.project_id == project.id]
                except llama_cloud.APIError:
                    pipelines = []  # a server that does not take project_name here: asked by project id below,
                    # the one request the lookup made before (its errors get the messages below)
            if not any(p.name == index_name for p in pipelines):  # a server that ignores project_name
                pipelines = c.pipelines.list(project_id=project.id, pipeline_name=index_name)
            pipeline = next((p for p in pipelines if p.name == index_name), None)
            if pipeline is None:
                raise SourceError(f"index {index_name!r} not found in project {project_name!r}")
            return project, pipeline
    except llama_cloud.AuthenticationError:
        raise SourceError(f"the source rejected the key in ${src.api_key_env} (401): check the key") from None
    except llama_cloud.NotFoundError:
        raise SourceError(f"index id {index_id!r} not found at {src.describe()}") from None
    except llama_cloud.APIConnectionError as e:
        raise SourceError(f"cannot reach {src.describe()}: {type(e).__name__}") from None


def document_count(src: Source, pipeline_id: str) -> int:
    page = src.client.pipelines.documents.list(pipeline_id=pipeline_id, limit=1)
    return int(page.total_count or 0)
