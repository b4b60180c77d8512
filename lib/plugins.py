"""The rehearsal machinery as a plug-in. Production modules never import ``runbook.rehearsal``: when a params
file asks for something only a rehearsal has (``emulator_corpus``, ``service_mode: reference``, the questions
of a rehearsal corpus) they load it here, from the entry point the project's ``pyproject.toml`` registers
(group ``runbook.plugins``, name ``rehearsal``). A production install without it still runs every
production path; a rehearsal params file then stops with a message naming what it asked for."""

from __future__ import annotations

from importlib.metadata import entry_points

from .errors import RunbookError

GROUP = "runbook.plugins"


class PluginMissing(RunbookError, RuntimeError):
    """Params ask for the rehearsal machinery and it is not installed."""


def rehearsal(purpose: str):
    """The rehearsal hooks module (``runbook.rehearsal.hooks``); ``purpose`` names what asked for it."""
    found = entry_points(group=GROUP, name="rehearsal")
    if not found:
        raise PluginMissing(
            f"{purpose} needs the rehearsal machinery (entry point {GROUP}:rehearsal), which is not "
            "installed here: install the project with `make env` (pip install -e .), or use production params"
        )
    return next(iter(found)).load()
