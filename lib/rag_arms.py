"""Phase 04's page: its inputs, the ``config.env`` it writes for the run, and both arms of the RAG service
built through the switch (``runbook.rag_switch``, the module the backend imports, stays free of page code)."""

from __future__ import annotations

from pathlib import Path

from . import embeddings, rag_switch, retrieval_modes

NOT_RUN = "(phase {} has not run)"


def page_inputs(base_path: str, run_dir: str = "", dry_run: bool = False) -> tuple[dict, dict, object]:
    """Phase 04's inputs: phase 01's record, the collection verified last (``handoff.verified_collection``)
    and the model that made the stored vectors. In a dry run before phase 01 has run, the record is an absent
    one (``handoff.is_absent``) and the model None; a real run stops naming the phase to run first."""
    from . import handoff

    h01 = handoff.read("01_extract", base_path=base_path, run_dir=run_dir, dry_run=dry_run)
    vc = handoff.verified_collection(base_path=base_path, run_dir=run_dir, dry_run=dry_run)
    spec = None if handoff.is_absent(h01) else embeddings.ModelSpec(**h01["embedding_spec"])
    return h01, vc, spec


def collection_check(vc: dict, dry_run: bool = False) -> dict:
    """The check that a verified collection is recorded (the local arm's); in a dry run before phase 03 has
    run it says so (a real run would not get this far)."""
    ok = bool(vc.get("collection") and vc.get("chroma_path"))
    if ok:
        detail = f"{vc['collection']} at {vc['chroma_path']} (phase {vc['phase']})"
    elif dry_run:
        detail = "dry run: phase 03 has not run, so no collection is verified yet (a real run stops here)"
    else:
        detail = "run phase 03 again"
    return {"check": "verified collection recorded", "ok": ok, "detail": detail}


def local_mode(
    requested: str,
    preset: dict | None,
    vc: dict,
    base_path: str,
    dry_run: bool,
    rerank: str = "",
    alpha: float = -1.0,
) -> retrieval_modes.Mode:
    """The local arm's retrieval mode (``retrieval_modes.choose``) for the verified collection: its sparse
    index is the one phase 03 built beside it (a dry run assumes it will be there). A preset not read (a
    dry run that did not connect: ``preset`` None) counts as dense; ``mode_row`` says so."""
    from . import sparse_sync
    from .paths import Layout

    if not vc.get("collection"):  # a dry run before phase 03 has run
        path = "(the sparse index phase 03 builds)" if dry_run else ""
    else:
        sparse = sparse_sync.index_path(Layout.from_params(base_path), vc["collection"])
        path = str(sparse) if sparse.exists() or dry_run else ""
    return retrieval_modes.choose(requested, preset or {}, path, rerank, alpha)


def mode_row(requested: str, preset: dict | None, mode: retrieval_modes.Mode) -> dict:
    """The mode asked for, the cloud's preset and the local mode chosen, as phase 04 shows them."""
    row = {
        "asked": requested,
        "cloud preset": retrieval_modes.describe_preset(preset),
        "local mode": mode.label,
        **vars(mode),
    }
    if preset is None and requested == "match-cloud":
        row["note"] = (
            "the preset was not read (dry run): shown as dense; a real run follows the cloud's preset"
        )
    return row


def service_settings(
    project: str,
    cloud_key_env: str,
    top_k: int,
    cutoff: float,
    llm_model: str,
    llm_key_env: str,
    gemini_base_url: str = "",
) -> dict:
    """The service's settings from phase 04's parameters, for ``page_entries``."""
    return {
        "project": project,
        "cloud_key_env": cloud_key_env,
        "top_k": top_k,
        "cutoff": cutoff,
        "llm_model": llm_model,
        "llm_key_env": llm_key_env,
        "gemini_base_url": gemini_base_url,
    }


def page_entries(h01: dict, vc: dict, spec, src, mode: retrieval_modes.Mode, settings: dict) -> dict:
    """The config.env entries phase 04 writes (``rag_switch.config_entries``, the local arm on): the verified
    collection, the model of phase 01's vectors, the cloud index, ``src``'s URL (the rehearsal server's when
    one was started) and ``settings`` (``service_settings``). Where an earlier phase has not run (a dry run),
    a placeholder names the phase that fills it in."""
    from . import handoff

    absent01 = handoff.is_absent(h01)
    not01, not03 = NOT_RUN.format("01"), NOT_RUN.format("03")
    spec = spec or embeddings.ModelSpec(not01, not01, None, not01)
    s = settings
    return rag_switch.config_entries(
        True,
        vc.get("chroma_path") or not03,
        vc.get("collection") or not03,
        spec,
        not01 if absent01 else h01["index_name"],
        not01 if absent01 else h01["index_id"],
        s["project"],
        src.base_url if src is not None else "",
        s["cloud_key_env"],
        s["top_k"],
        s["cutoff"],
        s["llm_model"],
        s["llm_key_env"],
        gemini_base_url=s["gemini_base_url"],
        retrieval=mode,
    )


def config_env_path(base_path: str) -> Path:
    """Where phase 04 writes the run's config.env: ``<base_path>/state/rag/config.env``."""
    from .paths import Layout

    return Layout.from_params(base_path).state / "rag" / "config.env"


def entries_title(config_env: Path, dry_run: bool) -> str:
    return f"config.env {'this run would write' if dry_run else 'for this run'}: {config_env}"


def prepare_local(config_env: Path, entries: dict, dry_run: bool) -> rag_switch.RagConfig | None:
    """A real run writes ``config_env`` (owner-only) and reads it back as the local arm's settings; a dry run
    writes nothing and gets None."""
    if dry_run:
        return None
    rag_switch.write_config(config_env, entries)
    return rag_switch.load_config(config_env)


def parity_or_plan(local_cfg: rag_switch.RagConfig | None, sample: int, min_cosine: float) -> dict:
    """``rag_switch.check_embedding_parity`` on the local arm (stops on a model mismatch); what it would check when
    ``local_cfg`` is None (a dry run)."""
    if local_cfg is None:
        return {
            "parity": "not checked (dry run)",
            "would check": f"{sample} stored chunks re-embedded with the local query embedder, cosine >= {min_cosine}",
        }
    col = rag_switch.open_local_collection(local_cfg)
    return rag_switch.check_embedding_parity(col, local_cfg.embed, sample, min_cosine)


def build_arms(local_cfg: rag_switch.RagConfig | None) -> dict:
    """Both arms of the service (``rag_switch.build_query_engine``): the cloud (the same config.env, flag off) and the
    local arm; none in a dry run (``local_cfg`` None)."""
    if local_cfg is None:
        return {}
    return {
        "cloud": rag_switch.build_query_engine(rag_switch.with_flag(local_cfg, False)),
        "local": rag_switch.build_query_engine(local_cfg),
    }


def arms_notes(arms: dict) -> dict:
    """How each arm answers (Gemini, or retrieval only); what a dry run would build."""
    return {name: a.note for name, a in arms.items()} or {"arms": "none built (dry run): cloud and local"}


def page_record(
    config_env: Path,
    vc: dict,
    entries: dict,
    parity: dict,
    mode: retrieval_modes.Mode,
    arms: dict,
    top_k: int,
    cutoff: float,
) -> dict:
    """Phase 04's hand-off: the config.env (path and entries), the collection, the parity result, the
    local retrieval mode and how the local arm answers ("no arm built" in a dry run)."""
    return {
        "config_env": str(config_env),
        "collection": vc.get("collection"),
        "entries": entries,
        "parity": parity["parity"] if "parity" in parity else parity,  # a dry run's: "not checked"
        "top_k": top_k,
        "similarity_cutoff": cutoff,
        "retrieval_mode": mode.label,
        "answers": arms["local"].note if arms else "no arm built (dry run)",
    }
