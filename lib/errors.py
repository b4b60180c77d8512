"""One base for every error the runbook raises on purpose, so a caller catches "a runbook error" in one place.

    from runbook.errors import RunbookError
    try:
        cfg = rag_switch.load_config(path)
    except RunbookError as e:   # a bad setting, a missing hand-off, a failed check ...: the message names the fix
        ...

Each kind keeps the built-in base it had (``ValueError`` for bad input, ``RuntimeError`` for a state of the
world), so existing ``except ValueError`` code keeps working. A failed check (``display.CheckFailed``) is a
``RunbookError`` only: it is not an ``AssertionError`` (the runbook's checks do not vanish under ``python -O``
and are not a bug in the runbook)."""

from __future__ import annotations


class RunbookError(Exception):
    """Raised by the runbook on purpose; the message says what is wrong and what to do first."""
