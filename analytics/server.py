"""`python -m analytics dashboard`: Voilà serving the dashboard's notebook with promobot's template."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import NoReturn

# A closed page's kernel (about 250 MB) is stopped this long after its last activity; so is the kernel of a
# request that never opened the page's connection (a script, a link preview).
KERNEL_IDLE_S = 60


def serve(
    data: str | None = None, host: str = "127.0.0.1", port: int = 8866, kernel_idle_s: int = KERNEL_IDLE_S
) -> NoReturn:
    """`python -m analytics dashboard`: this process becomes Voilà on `host:port`, protected by
    PROMOBOT_DASHBOARD_TOKEN if set.

    Parameters: `kernel_idle_s` how long a kernel no page is connected to may stay idle before it is
    stopped; a page that is open keeps its kernel however long it is idle."""
    from analytics.dashboard import NOTEBOOK, SHARE  # here: the command line reads KERNEL_IDLE_S cheaply
    from analytics.query import store_source

    source = store_source(data)
    if not source.startswith("s3://"):
        source = str(Path(source).resolve())  # the notebook's kernel runs in the notebook's directory
    # Our Voilà template (the lab one, minus its CDN stylesheets) lives in analytics/share.
    jupyter_path = os.pathsep.join(filter(None, [str(SHARE), os.environ.get("JUPYTER_PATH")]))
    env = {**os.environ, "PROMOBOT_DATA": source, "JUPYTER_PATH": jupyter_path}
    token = os.environ.get("PROMOBOT_DASHBOARD_TOKEN", "").strip()
    if host not in ("127.0.0.1", "localhost", "::1") and not token:
        # As `python -m bot serve` without its secrets: never open by mistake.
        print(
            f"promobot dashboard: not listening on {host} without PROMOBOT_DASHBOARD_TOKEN: whoever reaches"
            " it would see the shop's figures. Set the token, or listen on 127.0.0.1 (the default).",
            file=sys.stderr,
        )
        raise SystemExit(2)
    command = [
        sys.executable,
        "-m",
        "voila",
        str(NOTEBOOK),
        "--no-browser",
        f"--port={port}",
        f"--Voila.ip={host}",
        "--strip_sources=True",
        "--template=promobot",
        # A kernel that has already run the notebook waits for the next visitor: the page opens at once.
        "--preheat_kernel=True",
        "--pool_size=1",
        "--VoilaKernelManager.fill_delay=5",
        "--theme=light",
        f"--token={token}",
        "--VoilaConfiguration.multi_kernel_manager_class=analytics.kernels.PromptKernelManager",
        # Each page opened starts a kernel of its own, which outlives the page: stop those no page is
        # connected to once idle (an open page's kernel is kept: `cull_connected` stays off; the pooled
        # kernel waiting for the next visitor is never culled, Voilà sees to that).
        f"--MappingKernelManager.cull_idle_timeout={kernel_idle_s}",
        "--MappingKernelManager.cull_connected=False",
        f"--MappingKernelManager.cull_interval={max(1, min(10, kernel_idle_s))}",
    ]
    trust(NOTEBOOK)
    if os.name == "posix":
        # Kernels talk to Voilà over Unix sockets in a private directory, not TCP ports any local user can
        # reach (each kernel warned of that in the log, every page). Under /tmp: a socket's path may not
        # pass about 100 bytes, and macOS's own temporary directory is long.
        command += ["--KernelManager.transport=ipc", "--Voila.connection_dir_root=/tmp"]
    # Become Voilà: signals (Ctrl-C, SIGTERM from a supervisor) reach the server itself.
    os.execve(sys.executable, command, env)  # noqa: S606 - a fixed argv, no shell involved


def trust(notebook: Path) -> None:
    """Record `notebook` as trusted in Jupyter's signature store, as `jupyter trust` does: Voilà warned at
    every page that it was not. It is promobot's own notebook, which the dashboard runs anyway. A store that
    cannot be written (a read-only home) leaves the warning, and nothing else changes."""
    import nbformat
    from nbformat.sign import NotebookNotary

    try:
        notary = NotebookNotary()  # type: ignore[no-untyped-call]
        try:
            notary.sign(nbformat.read(notebook, as_version=4))  # type: ignore[no-untyped-call]
        finally:
            notary.store.close()
    except Exception as exc:  # only a warning is at stake
        print(f"promobot dashboard: could not mark the notebook as trusted: {exc}", file=sys.stderr)
