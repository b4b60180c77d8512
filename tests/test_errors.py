"""Every error the library raises on purpose shares one base, so a caller catches a runbook error in one place."""

import importlib
import inspect
import pkgutil

import runbook
from runbook.errors import RunbookError


def _modules():
    for info in pkgutil.walk_packages(runbook.__path__, "runbook."):
        if info.name.endswith("__main__"):
            continue
        yield importlib.import_module(info.name)


def test_every_exception_class_of_the_library_is_a_runbook_error():
    found, stray = [], []
    for mod in _modules():
        for name, cls in inspect.getmembers(mod, inspect.isclass):
            if cls.__module__ != mod.__name__ or not issubclass(cls, Exception) or cls is RunbookError:
                continue
            found.append(f"{mod.__name__}.{name}")
            if not issubclass(cls, RunbookError):
                stray.append(f"{mod.__name__}.{name}")
    assert len(found) >= 25, found  # the walk saw the library's errors
    assert stray == [], f"exception classes outside RunbookError: {stray}"


def test_kinds_keep_their_builtin_base_and_a_failed_check_is_not_an_assertion():
    from runbook import config, display, handoff

    assert issubclass(config.ParameterError, ValueError) and issubclass(config.ParameterError, RunbookError)
    assert issubclass(handoff.MissingHandoffError, RuntimeError)
    assert issubclass(display.CheckFailed, RunbookError) and not issubclass(
        display.CheckFailed, AssertionError
    )
