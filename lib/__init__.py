"""Runbook library for leaving a managed vector index (LlamaCloud -> local ChromaDB).

The package lives in ``lib/`` and imports as ``runbook``. Notebooks stay thin: each cell calls one
function from a module named after what it does (``extract``, ``verify``, ``chroma_target`` ...).

Importing it changes nothing in the importing process (a backend that imports ``runbook.rag_switch`` keeps its
environment): the offline settings for local models are set where a local model is loaded
(``embeddings.offline_models``), and Chroma's telemetry is off in every client's settings.
"""

__version__ = "0.1.0"
