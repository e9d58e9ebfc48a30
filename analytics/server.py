"""`python -m analytics dashboard`: Voilà serving the dashboard's notebook with promobot's template."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import NoReturn

from analytics.dashboard import NOTEBOOK, SHARE
from analytics.query import store_source


def serve(data: str | None = None, host: str = "127.0.0.1", port: int = 8866) -> NoReturn:
    """`python -m analytics dashboard`: this process becomes Voilà on `host:port`, protected by
    PROMOBOT_DASHBOARD_TOKEN if set."""
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
        # Each open page holds a kernel: stop the ones nobody looks at.
        "--MappingKernelManager.cull_idle_timeout=900",
        "--MappingKernelManager.cull_interval=60",
    ]
    # Become Voilà: signals (Ctrl-C, SIGTERM from a supervisor) reach the server itself.
    os.execve(sys.executable, command, env)  # noqa: S606 - a fixed argv, no shell involved
