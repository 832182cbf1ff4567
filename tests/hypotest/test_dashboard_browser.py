"""The dashboard in a real browser during a real demo session (Debian's chromium, Playwright).

A demo session (built-in MoS2 library, simulated microscope hiding one defect, frames of
4 e-/Å² at 1 Hz, proposals applied only by the operator) runs while headless Chromium opens the
page: the posterior chart grows as frames are scored, a control click without the token is
refused, Apply on a proposal changes the beam the microscope uses, and a screenshot is saved to
the artifact directory (``$HYPOTEST_ARTIFACTS``, default ``out/test-artifacts/``).
Run: ``.venv/bin/python -m pytest -m browser tests/hypotest/test_dashboard_browser.py``.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from playwright.sync_api import TimeoutError as PlaywrightTimeout
from playwright.sync_api import sync_playwright

from hypotest.dashboard import serve
from hypotest.live.builtin import make_demo_session

pytestmark = pytest.mark.browser

TOKEN = "browser-token-0123456789"
REPO = Path(__file__).resolve().parents[2]
#: Undecided for minutes (P < 0.7 after 400 e-/Å² with seed 0), so proposals stay on the page.
DEMO = dict(seed=0, frame_rate_hz=1.0, dose=4.0, auto_apply=False, stop_on_decision=False, max_frames=2000)
FIRST_STEP_TIMEOUT_MS = 300_000  # JIT compilation of the forward model and scorer on a busy 2-core machine


@pytest.fixture(scope="module")
def artifacts() -> Path:
    d = Path(os.environ.get("HYPOTEST_ARTIFACTS", REPO / "out" / "test-artifacts"))
    d.mkdir(parents=True, exist_ok=True)
    return d


@pytest.fixture
def demo(tmp_path):
    session = make_demo_session(tmp_path / "session", **DEMO)
    srv = serve(session, token=TOKEN)
    yield session, srv  # started by the test, once the page is open
    srv.stop()
    session.stop()


@pytest.fixture
def page():
    chromium = shutil.which("chromium")
    assert chromium, "Debian's chromium is required (apt-get install chromium); never `playwright install`"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True)
        pg = browser.new_page(viewport={"width": 1366, "height": 768})
        pg.errors = []
        pg.on("pageerror", lambda e: pg.errors.append(str(e)))
        yield pg
        browser.close()


def _steps(page) -> int:
    return int(page.get_attribute("#posterior-chart", "data-steps"))


def test_dashboard_follows_a_live_demo_session(demo, page, artifacts):
    session, srv = demo
    n_hyps = len(session.hyps)
    page.goto(srv.url)
    page.wait_for_selector('#ws-state[data-ws="live"]', timeout=30_000)
    assert page.text_content("#source-connection").startswith("simulated microscope")
    page.wait_for_selector("#session-state[data-state='starting']", timeout=10_000)
    assert _steps(page) == 0 and "waiting for frames" in page.text_content("#posterior-chart")

    # The microscope starts: the chart follows as frames are scored, one path per hypothesis.
    session.start()
    page.wait_for_function("Number(document.querySelector('#posterior-chart').dataset.steps) >= 2",
                           timeout=FIRST_STEP_TIMEOUT_MS)  # fmt: skip
    n1 = _steps(page)
    page.wait_for_function(f"Number(document.querySelector('#posterior-chart').dataset.steps) >= {n1 + 2}",
                           timeout=120_000)  # fmt: skip
    assert page.locator("#posterior-chart path.series").count() == n_hyps
    assert int(page.get_attribute("#state-timeline", "data-segments")) >= 1  # metastable-state timeline drawn
    page.click("#scale-toggle")  # log10 axis: the same paths, redrawn
    assert page.text_content("#scale-toggle") == "linear" and page.locator("#posterior-chart path.series").count() == n_hyps
    page.click("#scale-toggle")
    assert page.locator("#posterior-legend li").count() == n_hyps
    assert page.locator("#hypotheses tbody tr").count() == n_hyps
    assert int(page.text_content("#step")) >= n1 + 2

    # Apply without the token: refused with the reason, the beam stays.
    page.wait_for_selector("button[data-apply-index]", timeout=60_000)
    label_before = page.get_attribute("#beam-current", "data-label")
    page.locator("button[data-apply-index]").first.click()
    page.wait_for_selector("#message:not([hidden])", timeout=10_000)
    assert "needs the dashboard token" in page.text_content("#message")
    assert session.status()["beam_label"] == label_before

    # Enter the token once; Apply a proposal that changes the beam; the page shows the new beam.
    page.fill("#token-input", TOKEN)
    page.click("#token-save")
    assert page.evaluate("sessionStorage.getItem('hypotest-dashboard-token')") == TOKEN
    for _attempt in range(3):  # the loop re-proposes every step; a vanished proposal is a 409/404
        labels = page.eval_on_selector_all("button[data-apply-index]", "bs => bs.map(b => b.dataset.label)")
        target = next(lbl for lbl in labels if lbl != label_before)
        text_before = page.text_content("#beam-current")
        page.locator(f'button[data-apply-index][data-label="{target}"]').click(timeout=10_000)
        try:
            page.wait_for_function(
                "([lbl, txt]) => { const b = document.querySelector('#beam-current');"
                " return b.dataset.label === lbl && b.textContent !== txt; }",
                arg=[target, text_before], timeout=15_000,
            )  # fmt: skip
            break
        except PlaywrightTimeout:
            continue
    else:
        pytest.fail(f"Apply did not change #beam-current; message: {page.text_content('#message')}")
    assert session.status()["beam_label"] == target
    assert session.source.beam == session.status()["beam"]  # the simulated microscope obeyed

    # Frames scored under the new beam reach the page; the images are loaded.
    n2 = _steps(page)
    page.wait_for_function(f"Number(document.querySelector('#posterior-chart').dataset.steps) >= {n2 + 4}",
                           timeout=120_000)  # fmt: skip
    page.wait_for_function("document.querySelector('#img-frame').naturalWidth > 0 && "
                           "document.querySelector('#img-residual').naturalWidth > 0", timeout=30_000)  # fmt: skip
    mx, my = session.model.frame_shape
    size = page.evaluate("(i => [i.naturalWidth, i.naturalHeight])(document.querySelector('#img-frame'))")
    assert size == [mx, my]  # the PNG is [x, y] with x across
    page.wait_for_selector("#message", state="hidden", timeout=15_000)  # the "applied" note fades
    page.wait_for_timeout(500)  # let the last refresh paint

    shot = artifacts / "dashboard.png"
    shot.unlink(missing_ok=True)
    page.screenshot(path=str(shot))
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    assert page.errors == [], page.errors


def test_dashboard_of_a_field_of_view_session(tmp_path, page, artifacts):
    """A field-of-view session (the abTEM flake, drifting, 2 frames/s; the hypotheses' images are
    abTEM's, so nothing is simulated): the frame carries one marker per site, coloured by decision;
    clicking a decided defect's marker shows its posterior, its window, the best simulation and
    the residual."""
    import numpy as np

    from hypotest.live.fovsim import make_fov_demo_session

    images = np.load(REPO / "tests" / "data" / "fov_mos2_haadf.npz")["hyp_images"][:8].astype(np.float64)
    session = make_fov_demo_session(tmp_path / "fov", seed=4, dose=5e3, rate_hz=2.0, max_frames=12, images=images)
    srv = serve(session, token=TOKEN)
    try:
        page.goto(srv.url)
        page.wait_for_selector('#ws-state[data-ws="live"]', timeout=30_000)
        session.start()
        page.wait_for_function("Number(document.querySelector('#site-overlay').dataset.sites) > 40", timeout=120_000)
        assert page.is_visible("#sites-panel")
        n_sites = int(page.get_attribute("#site-overlay", "data-sites"))
        assert n_sites == len(session.sites())
        page.wait_for_function("document.querySelectorAll('#site-overlay circle[data-kind=\"defect\"]').length > 0",
                               timeout=120_000)  # fmt: skip
        marker = page.locator('#site-overlay circle[data-kind="defect"]').first
        k = int(marker.get_attribute("data-k"))
        marker.click()
        page.wait_for_selector("#site-posterior tbody tr", timeout=30_000)
        site = session.site(k)
        assert page.locator("#site-posterior tbody tr").count() == len(site["posterior"])
        first = page.text_content("#site-posterior tbody tr td")
        assert first == site["posterior_named"][0]["name"]  # most probable first
        assert page.text_content("#site-title").startswith(f"{k} · {site['class']}")
        page.wait_for_function("['frame', 'best', 'residual'].every(l => "
                               "document.querySelector('#site-img-' + l).naturalWidth > 0)", timeout=30_000)  # fmt: skip
        size = page.evaluate("(i => i.naturalWidth)(document.querySelector('#site-img-frame'))")
        assert size == site["window"]["size_px"]
        assert page.locator("#site-overlay circle.selected").count() == 1
        assert "sites" in page.text_content("#site-summary") and "rotation" in page.text_content("#site-summary")
        session.wait(120)
        page.wait_for_timeout(1500)
        shot = artifacts / "dashboard_fov.png"
        shot.unlink(missing_ok=True)
        page.screenshot(path=str(shot), full_page=True)
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert page.errors == [], page.errors
    finally:
        srv.stop()
        session.stop()
