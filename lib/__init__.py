"""Runbook library for leaving a managed vector index (LlamaCloud -> local ChromaDB).

The package lives in ``lib/`` and imports as ``runbook``. Notebooks stay thin: each cell calls one
function from a module named after what it does (``extract``, ``verify``, ``chroma_target`` ...).
"""

import os

# Chroma telemetry is a no-op from 1.5.4; keep it off explicitly for older servers and forks.
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
# Nothing in the runbook may reach a model hub at run time.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

__version__ = "0.1.0"
