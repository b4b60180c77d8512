"""The local target: open Chroma from the params and create or verify the collection.

Embedded ``PersistentClient(<base>/chroma_db)`` by default (one writer process per path), or
``HttpClient`` to a ``chroma run`` server for teams that outgrow one process. Collections are created
with an explicit configuration (cosine where the source is cosine; Chroma's default is l2) and carry
their provenance, so a collection is never silently reused for another source or export.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import chromadb
from chromadb.config import Settings

from .errors import RunbookError
from .paths import Layout

PROVENANCE_KEYS = (
    "source_index_id",
    "source_index_name",
    "export_id",
    "export_manifest_sha256",
    "embedding_model",
    "dimension",
)
IMMUTABLE_HNSW = ("space", "ef_construction", "max_neighbors")


class CollectionMismatch(RunbookError, RuntimeError):
    pass


@dataclass(frozen=True)
class HnswSettings:
    space: str = "cosine"
    ef_construction: int = 100
    max_neighbors: int = 16
    ef_search: int = 100
    batch_size: int = 100
    sync_threshold: int = 1000
    num_threads: int | None = None

    def configuration(self) -> dict:
        hnsw = {
            "space": self.space,
            "ef_construction": self.ef_construction,
            "max_neighbors": self.max_neighbors,
            "ef_search": self.ef_search,
            "batch_size": self.batch_size,
            "sync_threshold": self.sync_threshold,
        }
        if self.num_threads:
            hnsw["num_threads"] = self.num_threads
        return {"hnsw": hnsw}


def open_client(mode: str = "embedded", base_path: str = "", host: str = "127.0.0.1", port: int = 8000):
    settings = Settings(anonymized_telemetry=False, allow_reset=False)
    if mode == "embedded":
        layout = Layout.from_params(base_path)
        layout.chroma_db.mkdir(parents=True, exist_ok=True)
        return chromadb.PersistentClient(path=str(layout.chroma_db), settings=settings)
    if mode == "http":
        try:
            client = chromadb.HttpClient(host=host, port=int(port), settings=settings)
            client.heartbeat()
            return client
        except Exception as e:  # noqa: BLE001
            raise ConnectionError(
                f"no Chroma server at {host}:{port} ({type(e).__name__}): start one with "
                f"`chroma run --path <base>/chroma_db --host {host} --port {port}`"
            ) from None
    raise ValueError(f"chroma_mode {mode!r}: use 'embedded' or 'http'")


def is_served(client) -> bool:
    """Whether ``client`` talks to a Chroma server (``chroma_mode: http``) rather than holding the index."""
    from chromadb.api.fastapi import FastAPI

    return isinstance(getattr(client, "_server", None), FastAPI)


def reload_collection(
    client, name: str, mode: str, base_path: str = "", host: str = "127.0.0.1", port: int = 8000
):
    """(client, collection) with the collection's persisted configuration in force.

    Chroma applies ``ef_search`` when it loads an HNSW index; a process that already has the index loaded
    keeps searching with the old value after ``collection.modify`` (seen with chromadb 1.5.9: recall did not
    move until the path was opened afresh). Embedded: stop this client's system and open the path again
    (the old client must not be used afterwards). A Chroma server reloads the index on its own schedule or on
    restart; the collection is fetched again and the caller compares the server's plain search with
    what it measured."""
    if mode == "embedded":
        from chromadb.api.client import SharedSystemClient

        system = getattr(client, "_system", None)
        SharedSystemClient.clear_system_cache()
        if system is not None:
            try:
                system.stop()
            except Exception:  # noqa: BLE001 -- stopping a system that is already stopped
                pass
        client = open_client(mode, base_path, host, port)
    return client, client.get_collection(name, embedding_function=None)


def reopener(mode: str, base_path: str = "", host: str = "127.0.0.1", port: int = 8000):
    """``reopen(client, name)`` for ``load.verify_load``: ``reload_collection`` bound to this target."""
    return lambda client, name: reload_collection(client, name, mode, base_path, host, port)


def collection_name(name: str, export_id: str = "", versioned: bool = False) -> str:
    """``name`` or, versioned, ``name__<export id>`` (so a new load never touches the collection in service)."""
    full = f"{name}__{export_id}" if versioned and export_id else name
    full = re.sub(r"[^a-zA-Z0-9._-]", "-", full).strip("-._")
    if not 3 <= len(full) <= 512:
        raise ValueError(f"collection name {full!r} must have 3 to 512 characters from [a-zA-Z0-9._-]")
    return full


def current_hnsw(col) -> dict:
    conf = col.configuration or {}
    hnsw = conf.get("hnsw") or {}
    return dict(hnsw) if not hasattr(hnsw, "items") else {k: v for k, v in hnsw.items()}


def provenance(export, embedding_model: str) -> dict:
    """What a collection records about where its records came from (an opened ``export_format.Export``). The
    dimension is the collection's: the manifest's, or where its vectors have several (odd records, refused at
    load) the one most have; Chroma 1.5.9 panics on a list in a collection's metadata."""
    from .export_format import main_dimension

    m = export.manifest
    return {
        "source_index_id": m["index_id"],
        "source_index_name": m["index_name"],
        "export_id": m["export_id"],
        "export_manifest_sha256": export.manifest_sha256,
        "embedding_model": embedding_model,
        "dimension": main_dimension(export),
    }


def create_or_verify(client, name: str, hnsw: HnswSettings, provenance: dict, create: bool = True):
    """Return (collection, "created" | "verified"). An existing collection must match configuration and
    provenance, or this stops with the differences named."""
    existing = {c.name if hasattr(c, "name") else c for c in client.list_collections()}
    if name in existing:
        col = client.get_collection(name, embedding_function=None)
        cur = current_hnsw(col)
        want = hnsw.configuration()["hnsw"]
        diffs = [
            f"{k}: existing {cur.get(k)!r}, wanted {want[k]!r}"
            for k in IMMUTABLE_HNSW
            if cur.get(k) is not None and cur.get(k) != want[k]
        ]
        meta = col.metadata or {}
        for k in ("source_index_id", "export_manifest_sha256", "embedding_model", "dimension"):
            if k in provenance and meta.get(k) != provenance[k]:
                diffs.append(f"{k}: existing {meta.get(k)!r}, this load {provenance[k]!r}")
        if diffs:
            raise CollectionMismatch(
                f"collection {name!r} exists with a different configuration or source:\n  - "
                + "\n  - ".join(diffs)
                + "\nIt is not reused. Use versioned_collection: true (a new name per export), another "
                "collection_name, or delete the old collection deliberately after checking what serves from it."
            )
        # mutable settings follow the params
        mutable = {k: want[k] for k in ("ef_search",) if cur.get(k) != want[k]}
        if mutable:
            col.modify(configuration={"hnsw": mutable})
        return col, "verified"
    if not create:
        raise CollectionMismatch(f"collection {name!r} does not exist (dry run: nothing created)")
    meta = {**{k: v for k, v in provenance.items() if v is not None}, "created_by": "welno-runbook"}
    col = client.create_collection(
        name, configuration=hnsw.configuration(), metadata=meta, embedding_function=None
    )
    return col, "created"


# ---------------------------------------------------------------- a denser graph when recall stays short
# What phase 03 proposes when recall at the highest ef_search stays short of the goal: the graph's degree
# (max_neighbors, M) and build breadth (ef_construction) are fixed when a collection is created, so the remedy
# is a new collection built denser. The steps are those benchmarks/bench_load.py --grid measured
# (BENCHMARKS.md, "When recall stays short"): each costs build time and disk for recall on hard data. At 100k
# isotropic vectors M 32 / ef_construction 200 stopped at recall 0.989 (ef_search 800) where 48 / 400 reached
# 0.99 at ef_search 400 for 2.4x the default build time (32 / 200: 2.1x), so the first step is 48 / 400.
REBUILD_STEPS = (
    {"max_neighbors": 48, "ef_construction": 400},
    {"max_neighbors": 64, "ef_construction": 800},
)
REBUILD_KEYS = ("max_neighbors", "ef_construction")


def parse_rebuild(spec: str) -> dict:
    """``"max_neighbors=48,ef_construction=400"`` -> ``{"max_neighbors": 48, "ef_construction": 400}``
    (either key may be left out; ``""`` is no rebuild, ``{}``)."""
    out: dict = {}
    for part in (p.strip() for p in (spec or "").split(",")):
        if not part:
            continue
        key, eq, value = (x.strip() for x in part.partition("="))
        if not eq or key not in REBUILD_KEYS or not value.isdigit() or not 2 <= int(value) <= 10_000:
            raise ValueError(
                f"hnsw_rebuild {spec!r}: {part!r} is not one of max_neighbors=<2..10000>, "
                "ef_construction=<2..10000> (e.g. 'max_neighbors=48,ef_construction=400', the form phase 03 "
                "proposes when recall stays short)"
            )
        out[key] = int(value)
    return out


def rebuild_spec(step: dict) -> str:
    return ",".join(f"{k}={step[k]}" for k in REBUILD_KEYS if k in step)


def next_rebuild(hnsw: dict) -> dict | None:
    """The first step of :data:`REBUILD_STEPS` denser than ``hnsw`` (a collection's current settings) in
    both degree and build breadth, or None when the collection is already at least as dense as the last."""
    m, efc = int(hnsw.get("max_neighbors") or 16), int(hnsw.get("ef_construction") or 100)
    return next(
        (dict(s) for s in REBUILD_STEPS if s["max_neighbors"] > m and s["ef_construction"] > efc), None
    )


def rebuilt_name(name: str, step: dict) -> str:
    """``<name>__m<M>-efc<E>``: the rebuilt collection beside the one phase 02 made (which stays untouched)."""
    return collection_name(f"{name}__m{step['max_neighbors']}-efc{step['ef_construction']}")


def full_step(step: dict, base_hnsw: dict) -> dict:
    """Both graph settings of a rebuild: those ``hnsw_rebuild`` names, the base collection's for the other."""
    return {
        "max_neighbors": step.get("max_neighbors", int(base_hnsw.get("max_neighbors") or 16)),
        "ef_construction": step.get("ef_construction", int(base_hnsw.get("ef_construction") or 100)),
    }


def rebuild(client, base_name: str, spec: str, base_hnsw: dict | None = None):
    """(collection, "created" | "verified", step): the copy of collection ``base_name`` (phase 02's) with the
    denser graph ``spec`` asks for (:func:`parse_rebuild`), named by :func:`rebuilt_name`.

    Made once, from the base collection's configuration and provenance, starting at the ``ef_search`` phase
    02 configured (``base_hnsw``, its hand-off's settings; the base collection's own may have been raised by
    its verification, which the denser graph may not need). A second call finds the copy (a load into it
    resumes from its checkpoint) and keeps its ``ef_search`` as its own verification left it; it needs the
    base collection only to create the copy, so the base may be deleted once the copy is loaded."""
    names = {c.name if hasattr(c, "name") else c for c in client.list_collections()}
    base = client.get_collection(base_name, embedding_function=None) if base_name in names else None
    configured = dict(base_hnsw or {})
    cur = {**(current_hnsw(base) if base is not None else {}), **configured}
    step = full_step(parse_rebuild(spec), cur)
    if all(step[k] == cur.get(k) for k in REBUILD_KEYS):
        raise ValueError(
            f"hnsw_rebuild {spec!r}: collection {base_name!r} already has these settings; name denser ones "
            f"(phase 03 proposes {rebuild_spec(next_rebuild(cur) or REBUILD_STEPS[-1])!r})"
        )
    name = rebuilt_name(base_name, step)
    if name in names:
        col = client.get_collection(name, embedding_function=None)
        now = current_hnsw(col)
        wrong = [
            f"{k}: {now.get(k)!r}, wanted {step[k]!r}"
            for k in REBUILD_KEYS
            if now.get(k) not in (None, step[k])
        ]
        if wrong:
            raise CollectionMismatch(
                f"collection {name!r} exists with another graph ({'; '.join(wrong)}): it is not reused. Delete it "
                "deliberately, or name other settings in hnsw_rebuild"
            )
        if base is not None:  # the copy must still be of the same source and export as phase 02's collection
            meta, base_meta = col.metadata or {}, base.metadata or {}
            other = [
                k for k in ("source_index_id", "export_manifest_sha256") if meta.get(k) != base_meta.get(k)
            ]
            if other:
                raise CollectionMismatch(
                    f"collection {name!r} was built from another source or export than {base_name!r} ({', '.join(other)} "
                    "differ): it is not reused. Delete it deliberately, or use versioned_collection: true"
                )
        return col, "verified", step
    if base is None:
        raise CollectionMismatch(
            f"collection {base_name!r} does not exist: a rebuild copies its configuration and provenance. Run "
            "phase 02 again (it creates it), then this phase"
        )
    have = current_hnsw(base)
    fields = {k: have[k] for k in ("space", "batch_size", "sync_threshold") if have.get(k) is not None}
    settings = HnswSettings(**fields, ef_search=int(configured.get("ef_search") or 100), **step)
    meta = base.metadata or {}
    prov = {k: meta[k] for k in PROVENANCE_KEYS if k in meta}
    col, status = create_or_verify(client, name, settings, {**prov, "rebuilt_from": base_name})
    return col, status, step


def describe(col) -> dict:
    hnsw = current_hnsw(col)
    return {
        "collection": col.name,
        "count": col.count(),
        **{f"hnsw.{k}": v for k, v in hnsw.items()},
        **{f"meta.{k}": v for k, v in (col.metadata or {}).items()},
    }


# ---------------------------------------------------------------- phase 02 as steps a page calls
@dataclass(frozen=True)
class Target:
    """Where the collection lives: ``PersistentClient`` under ``<base_path>/chroma_db`` (``mode`` embedded),
    or a ``chroma run`` server at ``host``:``port`` (``mode`` http)."""

    mode: str = "embedded"
    base_path: str = ""
    host: str = "127.0.0.1"
    port: int = 8000

    @classmethod
    def of_record(cls, rec: dict, base_path: str) -> Target:
        """The target a hand-off of phase 02 or 03 names (its ``chroma_mode``, host and port)."""
        return cls(rec["chroma_mode"], base_path, rec["chroma_host"], rec["chroma_port"])

    @property
    def embedded(self) -> bool:
        return self.mode == "embedded"

    @property
    def chroma_path(self):
        """``<base>/chroma_db``: the embedded store (recorded in either mode, as the hand-offs always did)."""
        return Layout.from_params(self.base_path).chroma_db

    def open(self):
        return open_client(self.mode, self.base_path, self.host, self.port)

    def reopener(self):
        return reopener(self.mode, self.base_path, self.host, self.port)

    def keys(self) -> dict:
        """The hand-off keys that name this target."""
        return {
            "chroma_mode": self.mode,
            "chroma_host": self.host,
            "chroma_port": self.port,
            "chroma_path": str(self.chroma_path),
        }


@dataclass
class Setup:
    """Phase 02's inputs: the export the collection is for and the open Chroma client (a real run), or only
    where they would come from (a dry run: ``export`` and ``client`` stay None, nothing is opened)."""

    target: Target
    h01: dict | None
    export_dir: str
    dry_run: bool
    export: object = None
    client: object = None
    checked: dict = field(default_factory=dict)
    collection: object = None

    def summary(self) -> dict:
        """What the page shows about the inputs."""
        if self.dry_run:
            from . import handoff

            return {
                "export": self.export_dir or PLANNED_EXPORT_DIR,
                "verified by": "not checked (dry run; a real run verifies it first)",
                "phase 01": "has not run: placeholders below" if handoff.is_absent(self.h01) else "recorded",
                "chroma": self.target.mode,
            }
        return {
            **self.checked,
            "chunks": self.export.manifest["total_chunks"],
            "chroma": self.target.mode,
            "max batch size": self.client.get_max_batch_size(),
        }

    def shown(self, outcome: dict) -> dict:
        """The collection as Chroma reports it after :func:`init_collection` (a dry run: the plan)."""
        if self.collection is None:
            return outcome
        return {"status": outcome["status"], **describe(self.collection)}


PLANNED_EXPORT_DIR = "<the export phase 01 writes>"


def open_setup(h01: dict | None, export_dir: str, target: Target, dry_run: bool) -> Setup:
    """Phase 02's first step. A real run takes ``export_dir`` or the export phase 01 recorded, verifies it
    (``verify.ensure_verified`` refuses an unsound one) and opens Chroma. A dry run opens nothing: it names
    the export it would use (phase 01's, which may not exist yet)."""
    path = export_dir or (h01 or {}).get("export_dir", "")
    setup = Setup(target, h01, path, dry_run)
    if dry_run:
        return setup
    from . import export_format, handoff, verify

    if not path:
        raise handoff.MissingHandoffError("no export to load: give export_dir, or run phase 01 first")
    setup.checked = verify.ensure_verified(path, h01)  # refuses an unsound export
    setup.export = export_format.open_export(setup.checked["export"])
    setup.client = target.open()
    return setup


def embedding_model(export, h01: dict | None) -> str:
    """The model the collection's vectors were made with: phase 01's record, else the export's manifest
    (the models it re-embedded with), else "cloud" (vectors as the source served them)."""
    return (
        (h01 or {}).get("embedding_model")
        or ",".join(export.manifest["embeddings"]["computed_with"])
        or "cloud"
    )


def init_collection(setup: Setup, name: str, versioned: bool, hnsw: HnswSettings) -> dict:
    """Phase 02's step: the collection, created or verified; returns the keys of phase 02's hand-off.

    A real run creates it or verifies an existing one (:func:`create_or_verify`: a mismatch stops here) and
    logs it to the migration log. A dry run plans it read-only (``preflight.collection_plan``: Chroma is
    opened only where it exists), with placeholders where only phase 01's real run can tell."""
    from . import preflight, runlog

    t = setup.target
    if setup.dry_run:
        plan = preflight.collection_plan(
            setup.h01, setup.export_dir, name, versioned, hnsw, t.mode, t.base_path, t.host, t.port
        )
        if plan["export_dir"] in ("", "None"):
            plan["export_dir"] = PLANNED_EXPORT_DIR
        plan["provenance"] = {
            k: f"<{k} from phase 01>" if v is None else v for k, v in plan["provenance"].items()
        }
        return plan
    full = collection_name(name, setup.export.manifest["export_id"], versioned)
    prov = provenance(setup.export, embedding_model(setup.export, setup.h01))
    setup.collection, status = create_or_verify(setup.client, full, hnsw, prov)
    layout = Layout.from_params(t.base_path)
    runlog.log(layout, "02_init_chroma", f"collection {status}", collection=full, space=hnsw.space)
    return {
        "collection": full,
        "status": status,
        **t.keys(),
        "export_dir": str(setup.export.path),
        "hnsw": hnsw.configuration()["hnsw"],
        "provenance": prov,
    }
