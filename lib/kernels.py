"""The Jupyter kernel the runbook's notebooks run in: this environment's Python, registered as ``runbook``,
talking over Unix sockets."""

from __future__ import annotations

import sys
from pathlib import Path

KERNEL_NAME = "runbook"


def ensure_kernel() -> str:
    """Register this environment's Python as the ``runbook`` kernel (inside the environment's prefix)."""
    from jupyter_client.kernelspec import KernelSpecManager

    try:
        spec = KernelSpecManager().get_kernel_spec(KERNEL_NAME)
        if Path(spec.argv[0]).resolve() == Path(sys.executable).resolve():
            return KERNEL_NAME
    except Exception:  # noqa: BLE001 - not registered yet
        pass
    from ipykernel.kernelspec import install

    install(kernel_name=KERNEL_NAME, display_name="Python (runbook)", prefix=sys.prefix)
    return KERNEL_NAME


def kernel_config():
    """Kernel traffic over Unix sockets in the user's runtime folder instead of unencrypted loopback TCP
    (and without the kernel's warning about it on the console); TCP when that folder's path is too long
    for a socket name."""
    from jupyter_core.paths import jupyter_runtime_dir
    from traitlets.config import Config

    c = Config()
    if len(jupyter_runtime_dir()) + 60 < 104:
        c.KernelManager.transport = "ipc"
    return c
