"""The demo page in a real headless Chromium: pick an example, Compare, both answers and both heat maps appear.

Needs ``gradio`` and ``playwright`` (pip) and Debian's ``chromium`` (apt); Playwright drives the system browser, no
browser download. Skipped only when no Chromium binary exists; a missing Python package is a failure, so an
incomplete CI image cannot make this test pass by not running.

Environment knobs: ``VLMFIX_CHROMIUM`` (browser binary, default ``/usr/bin/chromium``), ``VLMFIX_DEMO_MODEL``
(``tiny`` by default; ``testbed`` once its weights ship), ``VLMFIX_DEMO_SCREENSHOT`` (also save the screenshot
there, e.g. ``docs/demo.png``).
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("VLMFIX_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"]

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).is_file(),
                                reason=f"no Chromium at {CHROMIUM} (apt-get install chromium, or set VLMFIX_CHROMIUM)")


def _require(module: str, install: str):
    try:
        return __import__(module)
    except ImportError:
        pytest.fail(f"{module} is not installed; the demo's browser test needs it: {install}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    _require("gradio", "pip install 'gradio>=6,<7'")
    from vlmfix.demo.app import build_app, launch
    from vlmfix.demo.loading import load
    from vlmfix.demo.objects import SceneIndex
    from vlmfix.testbed import build_world

    model, processor, name = load(os.environ.get("VLMFIX_DEMO_MODEL", "tiny"), "cpu", "float32")
    scenes = SceneIndex.load(build_world(tmp_path_factory.mktemp("world"), 4, seed=3))
    app = build_app(model, processor, scenes=scenes, model_name=name, max_new_tokens=24)
    _, url, _ = launch(app, port=_free_port(), block=False, quiet=True)
    assert url.startswith("http://127.0.0.1:")
    yield url
    app.close()


@pytest.fixture
def page(server):
    _require("playwright", "pip install playwright (the browser itself comes from apt: chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw, tempfile.TemporaryDirectory() as profile:
        browser = pw.chromium.launch_persistent_context(profile, executable_path=CHROMIUM, headless=True,
                                                        args=CHROMIUM_ARGS, viewport={"width": 1440, "height": 1000})
        try:
            page = browser.new_page()
            page.goto(server, wait_until="domcontentloaded")
            page.locator("#vf-compare").wait_for(timeout=30_000)
            yield page
        finally:
            browser.close()


def _status_contains(page, text, timeout=30_000):
    page.wait_for_function(f"document.querySelector('#vf-status').innerText.includes({text!r})", timeout=timeout)


def test_pick_example_compare_and_see_both_columns(page, tmp_path):
    page.locator('#vf-examples [data-testid="dataset-cell-0-0"]').click()
    page.locator("#vf-image img").wait_for(timeout=15_000)
    page.locator("#vf-use-var input").check()  # VAR + VHR (ticked by default)
    page.locator("#vf-compare").click()
    for side in ("baseline", "mitigated"):
        page.locator(f"#vf-{side}-heat img").wait_for(timeout=60_000)
    _status_contains(page, "Done.")
    for side in ("baseline", "mitigated"):
        assert page.locator(f"#vf-{side}-answer").inner_text().strip(), f"{side} answer is empty"
        assert " s" in page.locator(f"#vf-{side}-stats").inner_text()  # the timing line
    assert "VAR(p=0.6, rho=0.5) + VHR(alpha=2, exact)" in page.locator("#vf-mitigated-stats").inner_text()
    assert "Traceback" not in page.content()
    page.mouse.move(0, 0)
    shot = tmp_path / "demo.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    target = os.environ.get("VLMFIX_DEMO_SCREENSHOT")
    if target:
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, target)


def test_uploading_a_non_image_gives_a_message(page, tmp_path):
    bad = tmp_path / "holiday.png"
    bad.write_text("these are words, not pixels")
    page.locator("#vf-image input[type=file]").set_input_files(str(bad))
    page.locator("#vf-compare").click()
    _status_contains(page, "not an image")
    assert "Traceback" not in page.content()
