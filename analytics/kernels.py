"""The dashboard server's kernel manager: kernels are stopped at once, not asked to stop."""

from __future__ import annotations

from jupyter_server.services.kernels.kernelmanager import AsyncMappingKernelManager


class PromptKernelManager(AsyncMappingKernelManager):
    """Voilà's kernel manager, with every shutdown immediate (docs/design.md, "Analytics: kernels")."""

    # jupyter_client declares both methods as the synchronous wrappers of MultiKernelManager; the async
    # manager's are coroutines, and jupyter_server's decorator leaves them untyped.
    async def shutdown_kernel(  # type: ignore[override]
        self, kernel_id: str, now: bool = False, restart: bool = False
    ) -> None:
        await super().shutdown_kernel(  # type: ignore[no-untyped-call]
            kernel_id, now=not restart or now, restart=restart
        )

    async def shutdown_all(self, now: bool = False) -> None:  # type: ignore[override]
        await super().shutdown_all(now=True)
