"""The dashboard server's kernel manager: kernels are stopped at once, not asked to stop.

A dashboard kernel holds nothing that a goodbye would save. Asked to shut down while it still ran the
notebook (the pooled kernel preheating, as `make run` is stopped right after start), a kernel closed its
sockets under the running cell and printed a traceback of the reply it could no longer send.
"""

from __future__ import annotations

from jupyter_server.services.kernels.kernelmanager import AsyncMappingKernelManager


class PromptKernelManager(AsyncMappingKernelManager):
    async def shutdown_kernel(self, kernel_id: str, now: bool = False, restart: bool = False) -> None:
        await super().shutdown_kernel(kernel_id, now=not restart or now, restart=restart)

    async def shutdown_all(self, now: bool = False) -> None:
        await super().shutdown_all(now=True)
