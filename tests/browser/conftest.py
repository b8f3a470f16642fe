"""Real-browser fixtures: Debian's Chromium driven by Playwright for Python, axe-core, screenshots.

The browser is the machine's `/usr/bin/chromium` (`.ci/run` installs it; Playwright's own browser
download is never used). Locally a missing Chromium skips the browser tests; under CI (`CI=true`)
it fails them, like the other real services (tests/support/services.py).

- `browser` (package scope): one headless Chromium for every test in tests/browser. Not session
  scope: while Playwright's sync API runs, its event loop is the thread's running loop, and
  pytest-asyncio cannot run the other packages' async tests then; it stops with this package.
- `page`: a fresh context (own cookies) and page per test; an uncaught JavaScript error on it,
  or anything its Content-Security-Policy blocked, fails the test.
- `new_page()`: more isolated pages in the same test (another operator, another session).
- `screenshot(page, name)`: a full-page PNG in test-output/console/<name>.png for reviewers.
- `axe_check(page)`: runs the bundled axe-core (tests/assets/axe.min.js) on the page and fails
  on any serious or critical violation, listing each rule, its help and the offending elements.
"""
from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.harness import REPO

CHROMIUM = Path(os.environ.get("PORTCULLIS_TEST_CHROMIUM", "/usr/bin/chromium"))
AXE = REPO / "tests" / "assets" / "axe.min.js"
SHOTS = REPO / "test-output" / "console"
BLOCKING = ("serious", "critical")
VIEWPORT = {"width": 1280, "height": 800}
TIMEOUT_MS = 10_000


def _need_chromium() -> None:
    if CHROMIUM.exists() and os.access(CHROMIUM, os.X_OK):
        return
    msg = f"{CHROMIUM} is missing (apt-get install -y chromium; .ci/run does it)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(msg + " (CI=true: the browser tests must run)")
    pytest.skip(msg)


@pytest.fixture(scope="package")
def browser() -> Iterator[Any]:
    _need_chromium()
    # The test extra's; imported here so that collecting the tests never needs it.
    from playwright.sync_api import sync_playwright

    pw = sync_playwright().start()
    try:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"], headless=True)
        try:
            yield b
        finally:
            b.close()
    finally:
        pw.stop()


class Pages:
    """Pages opened during one test, each in its own browser context, closed at its end."""

    def __init__(self, browser: Any) -> None:
        self._browser = browser
        self._contexts: list[Any] = []
        self.errors: list[str] = []

    def open(self) -> Any:
        context = self._browser.new_context(viewport=VIEWPORT, locale="en-US")
        context.set_default_timeout(TIMEOUT_MS)
        self._contexts.append(context)
        page = context.new_page()
        page.on("pageerror", lambda exc: self.errors.append(f"{page.url}: {exc}"))
        page.on("console", lambda msg: self._console(page, msg))
        return page

    def _console(self, page: Any, msg: Any) -> None:
        # What the page's Content-Security-Policy blocked (an inline script or style, a foreign
        # origin) is broken for a real operator too.
        if msg.type == "error" and "Content Security Policy" in msg.text:
            self.errors.append(f"{page.url}: {msg.text}")

    def close(self) -> None:
        for context in self._contexts:
            context.close()


@pytest.fixture
def pages(browser: Any) -> Iterator[Pages]:
    opened = Pages(browser)
    yield opened
    opened.close()
    assert not opened.errors, "JavaScript errors or CSP violations in the page:\n" + "\n".join(opened.errors)


@pytest.fixture
def page(pages: Pages) -> Any:
    return pages.open()


@pytest.fixture
def new_page(pages: Pages) -> Callable[[], Any]:
    return pages.open


def screenshot(page: Any, name: str) -> Path:
    """Save a full-page screenshot as test-output/console/<name>.png and return its path."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") or "page"
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{safe}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def _describe(violation: dict[str, Any]) -> str:
    lines = [f"- [{violation['impact']}] {violation['id']}: {violation['help']} ({violation['helpUrl']})"]
    for node in violation["nodes"][:5]:
        target = " ".join(str(t) for t in node.get("target", []))
        summary = " ".join((node.get("failureSummary") or "").split())
        lines.append(f"    at {target}: {node.get('html', '')[:160]}")
        if summary:
            lines.append(f"      {summary[:300]}")
    if len(violation["nodes"]) > 5:
        lines.append(f"    ... and {len(violation['nodes']) - 5} more elements")
    return "\n".join(lines)


def axe_violations(page: Any) -> list[dict[str, Any]]:
    """axe-core's violations on the page as it is now (every impact)."""
    if not page.evaluate("() => typeof window.axe !== 'undefined'"):
        # Not page.add_script_tag: that adds an inline <script>, which the console's
        # Content-Security-Policy (script-src 'self') rightly blocks. An evaluation through the
        # DevTools protocol is not subject to the page's CSP, and the CSP stays on for the test.
        page.evaluate(AXE.read_text(encoding="utf-8") + "\n;0")
    return page.evaluate("""async () => {
        const r = await axe.run(document, {resultTypes: ['violations']});
        return r.violations.map(v => ({id: v.id, impact: v.impact, help: v.help, helpUrl: v.helpUrl,
            nodes: v.nodes.map(n => ({target: n.target, html: n.html, failureSummary: n.failureSummary}))}));
    }""")


def axe_check(page: Any) -> list[dict[str, Any]]:
    """Fail on serious/critical axe-core violations; return the minor/moderate ones."""
    found = axe_violations(page)
    blocking = [v for v in found if v["impact"] in BLOCKING]
    assert not blocking, f"axe-core: {len(blocking)} serious/critical violation(s) on {page.url}:\n" + \
        "\n".join(_describe(v) for v in blocking)
    return found
