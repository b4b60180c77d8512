"""Secrets: parameters name environment variables, never carry values.

- ``check_parameters`` refuses a parameter whose name or value looks like a secret.
- ``get_secret`` reads a variable and returns a ``Secret`` that prints as ``***``; every value read is
  remembered so ``scrub`` can remove it from any text (exception messages, logs, files).
- ``scrubbed_errors`` re-raises exceptions with secret values replaced.
- ``scan_for_values`` looks for leaked values in every file of a folder (the canary test uses it).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from contextlib import contextmanager
from pathlib import Path

from . import atomic
from .errors import RunbookError

MASK = "***"
# Parameter names that would carry a secret value. A name ending in ``_env`` holds a variable *name*.
_SECRET_NAME = re.compile(r"(api_?key|token|secret|password|passwd|credential|dsn|private_?key)", re.I)
_SECRET_VALUE_PATTERNS = [
    re.compile(r"^sk-[A-Za-z0-9_\-]{16,}"),  # OpenAI
    re.compile(r"^llx-[A-Za-z0-9_\-]{16,}"),  # LlamaCloud
    re.compile(r"^AIza[0-9A-Za-z_\-]{20,}"),  # Google
    re.compile(r"^(ghp|gho|xox[abp])[-_][A-Za-z0-9\-_]{10,}"),
    re.compile(r"^[a-z][a-z0-9+.\-]*://[^/\s:@]+:[^/\s@]+@"),  # URL / DSN with a password
    re.compile(r"(^|\s)password\s*=", re.I),  # libpq key=value DSN
]
_ENV_NAME = re.compile(r"^[A-Z_][A-Z0-9_]*$")

_known_values: set[str] = set()


class SecretParameterError(RunbookError, ValueError):
    pass


class MissingSecretError(RunbookError, RuntimeError):
    pass


def looks_like_secret_value(value: object) -> bool:
    if not isinstance(value, str) or len(value) < 12:
        return False
    v = value.strip()
    if any(p.search(v) for p in _SECRET_VALUE_PATTERNS):
        return True
    # a long opaque token: digits, lower and upper case mixed, none of the separators a path or a sentence
    # has (ids and checksums -- UUIDs, hex digests -- are one case only, so they are not taken for one)
    return (
        len(v) >= 32
        and re.fullmatch(r"[A-Za-z0-9_\-\.=]+", v) is not None
        and re.search(r"\d", v) is not None
        and re.search(r"[a-z]", v) is not None
        and re.search(r"[A-Z]", v) is not None
    )


def check_parameters(params: dict) -> None:
    """Refuse parameters that would carry a secret into an executed notebook (papermill records them)."""
    problems = []
    for name, value in params.items():
        if name.endswith("_env"):
            names = value if isinstance(value, list) else [value]
            if any(v and not (isinstance(v, str) and _ENV_NAME.match(v)) for v in names):
                problems.append(
                    f"{name}: must name an environment variable (like LLAMA_CLOUD_API_KEY), not hold a value"
                )
            continue
        if _SECRET_NAME.search(name) and value not in (None, "", False):
            problems.append(
                f"{name}: looks like a secret by its name; rename it to {name}_env and give the name of the "
                "environment variable that holds the value"
            )
        elif looks_like_secret_value(value):
            problems.append(
                f"{name}: its value looks like a secret (key, token or DSN with a password); put the value in an "
                "environment variable and pass that variable's name in a *_env parameter"
            )
    if problems:
        raise SecretParameterError(
            "refusing secret-looking parameters (papermill would record them in the "
            "executed notebook):\n  - " + "\n  - ".join(problems)
        )


class Secret:
    """A secret value that never prints. ``reveal()`` hands it to the library that needs it."""

    __slots__ = ("env_name", "_value")

    def __init__(self, env_name: str, value: str):
        self.env_name = env_name
        self._value = value
        remember(value)

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"Secret({self.env_name}={MASK})"

    __str__ = __repr__

    def __bool__(self) -> bool:
        return bool(self._value)


_DSN_PASSWORD = re.compile(r"^[a-z][a-z0-9+.\-]*://[^/\s:@]+:([^/\s@]+)@")
_KV_PASSWORD = re.compile(r"password\s*=\s*'?([^'\s]+)", re.I)


def secret_parts(value: str) -> set[str]:
    """The value and what a message may quote of it alone: the password of a URL or key=value DSN."""
    parts = {value}
    for pattern, find in ((_DSN_PASSWORD, re.match), (_KV_PASSWORD, re.search)):
        m = find(pattern, value)
        if m and len(m.group(1)) >= 4:
            parts.add(m.group(1))
    return parts


def remember(value: str | None) -> None:
    if value and len(value) >= 4:
        _known_values.update(secret_parts(value))


def get_secret(env_name: str, required: bool = True, purpose: str = "") -> Secret | None:
    """Read the environment variable ``env_name``. Missing and required: an error that names the variable."""
    if not env_name:
        if required:
            raise MissingSecretError(f"no environment variable named for {purpose or 'this secret'}")
        return None
    if not _ENV_NAME.match(env_name):
        raise SecretParameterError(f"{env_name!r} is not an environment variable name")
    value = os.environ.get(env_name)
    if not value:
        if required:
            raise MissingSecretError(
                f"environment variable {env_name} is not set{' (' + purpose + ')' if purpose else ''}: "
                f"export it in the shell that starts the runbook, or put it in a .env file that is not committed"
            )
        return None
    return Secret(env_name, value)


def secret_env_values(extra_names: Iterable[str] = ()) -> set[str]:
    """Values of environment variables whose names look secret (and their DSN passwords), plus the values
    read so far."""
    values = set(_known_values)
    extra = set(extra_names)
    for name, value in os.environ.items():
        if (_SECRET_NAME.search(name) or name in extra) and value and len(value) >= 8:
            values.update(secret_parts(value))
    return values


# A value this long is masked wherever it occurs; a shorter one (a 4-7 character DSN password, say) only as a
# whole token, so that a password "pass" does not turn "passed" into "***ed" in a hand-off phase 06 reads.
WHOLE_TOKEN_BELOW = 8


def _patterns(values: Iterable[str]) -> list[re.Pattern]:
    """One pattern per value, the longest first (a value inside a longer one must not split it)."""
    out = []
    for v in sorted({v for v in values if v}, key=len, reverse=True):
        body = re.escape(v)
        out.append(re.compile(body if len(v) >= WHOLE_TOKEN_BELOW else rf"(?<![\w]){body}(?![\w])"))
    return out


def _mask(text: str, patterns: list[re.Pattern]) -> tuple[str, int]:
    total = 0
    for pat in patterns:
        text, n = pat.subn(MASK, text)
        total += n
    return text, total


def scrub(text: str, extra_values: Iterable[str] = ()) -> str:
    """``text`` with the values read so far (and ``extra_values``) masked."""
    return _mask(text, _patterns(set(_known_values) | set(extra_values)))[0]


def scrub_data(obj, values: Iterable[str] | None = None):
    """``obj`` (JSON-like: dicts, lists, strings, numbers) with secret values masked in every string and key;
    by default the values read so far and those of secret-named environment variables."""
    patterns = _patterns(secret_env_values() if values is None else values)

    def walk(o):
        if isinstance(o, str):
            return _mask(o, patterns)[0]
        if isinstance(o, dict):
            return {walk(k): walk(v) for k, v in o.items()}
        if isinstance(o, list | tuple):
            return [walk(v) for v in o]
        return o

    return walk(obj)


class SecretInBinaryFile(RunbookError, RuntimeError):
    """A secret value in a file that is not text: masking would corrupt it, so it is named instead."""


def scrub_files(folder: str | os.PathLike, values: Iterable[str]) -> dict[str, int]:
    """Mask every value in every text (UTF-8) file under ``folder``, each file rewritten atomically; returns
    {relative path: occurrences} of the files that held one (each is a leak to report). A file that is not
    text but holds a value is not touched: ``SecretInBinaryFile`` names it, after every text file is done."""
    values = [v for v in values if v]
    patterns = _patterns(values)
    needles = [v.encode() for v in values]
    found, binary = {}, []
    for path in sorted(Path(folder).rglob("*")):
        try:
            if not path.is_file() or path.is_symlink():
                continue
            data = path.read_bytes()
        except FileNotFoundError:  # gone since the listing: nothing left to leak
            continue
        try:
            text = data.decode()
        except UnicodeDecodeError:
            if any(n in data for n in needles):
                binary.append(path.relative_to(folder).as_posix())
            continue
        text, count = _mask(text, patterns)
        if count:
            atomic.write_text(path, text)
            found[path.relative_to(folder).as_posix()] = count
    if binary:
        raise SecretInBinaryFile(
            f"a secret value is in {', '.join(binary)} under {folder}, which is not text and was not changed: "
            "delete the file (or the whole run folder) before sharing it, and find what wrote the secret there"
        )
    return found


class ScrubbedError(RunbookError, RuntimeError):
    pass


@contextmanager
def scrubbed_errors():
    """Re-raise any exception with known secret values removed from its message (and no chained cause)."""
    try:
        yield
    except Exception as e:  # noqa: BLE001 - rewrapped, not swallowed
        text = f"{type(e).__name__}: {e}"
        clean = scrub(text)
        if clean != text:
            raise ScrubbedError(clean) from None
        raise


def scan_for_values(folder: str | os.PathLike, values: Iterable[str]) -> list[tuple[str, str]]:
    """Every (file, value) pair where a value occurs in a file under ``folder`` (bytes, any encoding)."""
    needles = [v for v in values if v]
    hits = []
    for path in sorted(Path(folder).rglob("*")):
        if not path.is_file():
            continue
        data = path.read_bytes()
        for v in needles:
            if v.encode() in data:
                hits.append((str(path), v[:3] + "…"))
    return hits
