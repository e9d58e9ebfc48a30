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


# For each chart (an SVG) on the page, the pairs of its visible labels whose boxes overlap, as the browser
# draws them: Vega lays labels out with the widths vl-convert measured, in the chart's font.
_OVERLAPPING_LABELS = """() => [...document.querySelectorAll('svg')]
  .filter(svg => svg.checkVisibility())
  .map(svg => {
  const shown = [...svg.querySelectorAll('text')]
    .filter(t => t.getAttribute('opacity') !== '0' && getComputedStyle(t).opacity !== '0')
    .map(t => [t.textContent, t.getBoundingClientRect()])
    .filter(([, box]) => box.width > 0);
  const pairs = [];
  for (let i = 0; i < shown.length; i++) {
    for (let j = i + 1; j < shown.length; j++) {
      const [a, p] = shown[i], [b, q] = shown[j];
      const width = Math.min(p.right, q.right) - Math.max(p.left, q.left);
      const height = Math.min(p.bottom, q.bottom) - Math.max(p.top, q.top);
      if (width > 1 && height > 1) pairs.push(a + ' / ' + b);
    }
  }
  return pairs;
}).flat()"""


def overlapping_labels(page) -> list[str]:
    """The labels of the page's visible charts that run into each other, as "label / label"."""
    return page.evaluate(_OVERLAPPING_LABELS)
