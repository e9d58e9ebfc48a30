"""Headless Chromium (Debian's), driven by Playwright; it never downloads a browser of its own."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from tests.support.paths import REPO

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
ARTIFACTS = REPO / "test-artifacts"


@contextmanager
def chromium_page(*, offline_except: str | None = None) -> Iterator:
    """A page in a fresh browser. With `offline_except`, requests elsewhere fail, as with no internet."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 900})
            outside: list[str] = []
            if offline_except is not None:

                def route(route) -> None:
                    if route.request.url.startswith(offline_except):
                        route.continue_()
                    else:
                        outside.append(route.request.url)
                        route.abort()

                context.route("**/*", route)
            page = context.new_page()
            page.outside_requests = outside
            yield page
        finally:
            browser.close()
