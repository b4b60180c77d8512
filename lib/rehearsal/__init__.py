"""Rehearsal machinery: stand-ins for the services production has (the Welno backend and its process
supervisor, and with ``runbook.rehearsal.cloud_emulator`` the LlamaCloud and Gemini APIs). Production code never
imports this package; ``python -m runbook.rehearsal up`` starts a production-shaped rehearsal."""
