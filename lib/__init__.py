"""Runbook library for leaving a managed vector index (LlamaCloud -> local ChromaDB).

The package lives in ``lib/`` and imports as ``runbook``. Notebooks stay thin: each cell calls one
function from a module named after what it does (``extract``, ``verify``, ``chroma_target`` ...).

Importing it changes nothing in the importing process (a backend that imports ``runbook.rag_switch`` keeps its
environment): the offline settings for local models are set where a local model is loaded
(``embeddings.offline_models``), and Chroma's telemetry is off in every client's settings. One exception, in
``sys.modules`` only: the optional ``rfc3987_syntax`` is not imported (below).
"""

import sys

__version__ = "0.1.0"

# jsonschema (imported by chromadb and by papermill's nbformat) imports rfc3987_syntax when it is installed
# (jupyter-events pulls it in), and that builds 38 grammar parsers at import: 3-5 s of CPU in every runner and
# kernel on a 2-core machine, the larger part of ``import chromadb``. It serves only jsonschema's "iri" and
# "iri-reference" format checks, which nothing here asks for; without it jsonschema leaves them unchecked.
if "rfc3987_syntax" not in sys.modules and "jsonschema" not in sys.modules:
    sys.modules["rfc3987_syntax"] = (
        None  # ``import rfc3987_syntax`` raises ImportError, which jsonschema expects
    )
