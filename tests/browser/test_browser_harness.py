"""The browser-test tools themselves: Debian's Chromium starts, axe-core catches what it should,
screenshots land in test-output/console/. A failing axe_check must be able to fail."""
from __future__ import annotations

import pytest

from tests.browser.conftest import AXE, axe_check, axe_violations, screenshot

GOOD = """<!doctype html><html lang="en"><head><title>Fine</title></head><body><main>
<h1>Fine</h1><form><label for="r">Reason</label><input id="r" name="reason"><button>Save</button></form>
</main></body></html>"""
# An unlabelled input, an image without alt text and a button without a name: axe rates these
# critical; grey on white text is a serious colour-contrast failure.
BAD = """<!doctype html><html lang="en"><head><title>Bad</title></head><body><main>
<h1>Bad</h1><input name="reason"><img src="data:image/gif;base64,R0lGODlhAQABAAAAACw=">
<button></button><p style="color:#bbb;background:#fff">low contrast</p></main></body></html>"""


def test_bundled_axe_is_axe_core_4() -> None:
    assert AXE.read_text(encoding="utf-8")[:40].startswith("/*! axe v4.")


def test_axe_check_passes_a_clean_page(page) -> None:
    page.set_content(GOOD)
    assert [v for v in axe_check(page) if v["impact"] in ("serious", "critical")] == []


def test_axe_check_fails_on_serious_and_critical_violations(page) -> None:
    page.set_content(BAD)
    ids = {v["id"] for v in axe_violations(page)}
    assert {"label", "image-alt", "button-name", "color-contrast"} <= ids
    with pytest.raises(AssertionError) as failed:
        axe_check(page)
    message = str(failed.value)
    for rule in ("label", "image-alt", "button-name", "color-contrast"):
        assert f"{rule}:" in message
    assert "[critical]" in message and "[serious]" in message and "dequeuniversity.com" in message


def test_screenshot_writes_a_png(page) -> None:
    page.set_content(GOOD)
    path = screenshot(page, "harness check")
    assert path.name == "harness-check.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    path.unlink()


def test_a_csp_violation_is_recorded(pages) -> None:
    page = pages.open()
    page.route("http://console.test/", lambda route: route.fulfill(
        status=200, body=GOOD.replace("</main>", "<script>window.ran = 1</script></main>"),
        headers={"content-type": "text/html", "content-security-policy": "script-src 'self'"}))
    page.goto("http://console.test/")
    assert page.evaluate("typeof window.ran") == "undefined"  # blocked
    assert any("Content Security Policy" in e for e in pages.errors)
    pages.errors.clear()  # recorded as it should be; not a failure of this test
