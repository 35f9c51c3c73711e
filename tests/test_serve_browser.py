"""The funnel page in headless Chromium: pick a user, move the lambda slider, switch to DPP,
and check that the final list follows; saves a screenshot.

Needs the system Chromium (`apt-get install chromium`) and the `playwright` package (the dev
extra); Playwright never downloads a browser here. Without Chromium the test is skipped with
the reason, except under CI=true or RECFUNNEL_REQUIRE_BROWSER=1, where that is a failure.

The server runs in a thread of this process (uvicorn on 127.0.0.1, a free port) on the smoke
run, or on RECFUNNEL_SERVE_RUN_DIR (a real ML-1M run; data from RECFUNNEL_DATA_DIR) to make
the README's screenshot: RECFUNNEL_SCREENSHOT=docs/img/serve.png also writes it there.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from recfunnel.serving.app import create_app
from recfunnel.serving.recommender import Pipeline
from recfunnel.serving.store import RatingStore

pytestmark = pytest.mark.browser

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]


def _chromium() -> str:
    """The system Chromium's path; skips (or fails, where a browser is required) without it."""
    os.environ["PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD"] = "1"
    required = os.environ.get("CI") == "true" or os.environ.get("RECFUNNEL_REQUIRE_BROWSER") == "1"
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    reason = None
    if path is None:
        reason = "no system Chromium on PATH (apt-get install chromium)"
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            reason = "the playwright package is not installed (pip install -e '.[dev]')"
    if reason is not None:
        if required:
            pytest.fail(f"browser test required (CI / RECFUNNEL_REQUIRE_BROWSER) but {reason}")
        pytest.skip(reason)
    return str(path)


@pytest.fixture(scope="module")
def chromium() -> str:
    """Checked before the server starts, so a skip costs nothing."""
    return _chromium()


@pytest.fixture(scope="module")
def served(request, tmp_path_factory, uvicorn_in_thread) -> Iterator[tuple[str, Path, Pipeline]]:
    """(base URL, run directory, pipeline) of a server running in a thread."""

    chosen = os.environ.get("RECFUNNEL_SERVE_RUN_DIR")
    if chosen:
        from recfunnel.data import load_movielens

        run_dir = Path(chosen)
        pipeline = Pipeline.load(run_dir, load_movielens(progress=False))
    else:
        # Asked for here, not as arguments: a real run needs no smoke training.
        run_dir = request.getfixturevalue("smoke_run")[0]
        pipeline = Pipeline.load(run_dir, request.getfixturevalue("synthetic_ml"))
    store = RatingStore(tmp_path_factory.mktemp("browser-db") / "ratings.sqlite3")
    with uvicorn_in_thread(create_app(pipeline, store)) as port:
        yield f"http://127.0.0.1:{port}", run_dir, pipeline


def _final(page) -> list[str]:
    return page.eval_on_selector_all("#final li", "els => els.map(e => e.dataset.movie)")


def _wait_renders(page, n: int) -> None:
    page.wait_for_function(f"Number(document.body.dataset.renders || 0) >= {n}", timeout=30_000)


def _titles_are_text_not_markup(page, pipeline: Pipeline, user: int) -> None:
    """Titles holding markup are shown as text: nothing they contain becomes an element."""
    original = pipeline.catalogue
    marked = np.array(
        [f'<img class="xss" src="x" onerror="window.xss=1">{t}' for t in original.titles],
        dtype=object,
    )
    pipeline.catalogue = replace(original, titles=marked)
    try:
        page.reload(wait_until="load")
        page.fill("#user-id", str(user))
        page.click("#load-user")
        _wait_renders(page, 1)
        assert page.locator("img.xss").count() == 0
        assert page.evaluate("window.xss === undefined")
        assert '<img class="xss"' in page.text_content("#final li .title")
    finally:
        pipeline.catalogue = original


def test_page_shows_the_funnel_and_re_ranks_live(chromium: str, served) -> None:
    from playwright.sync_api import sync_playwright

    url, run_dir, pipeline = served
    user = next(u for u in pipeline.user_ids.tolist() if pipeline.last_rating_time(u) > 0)
    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 900})
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.goto(url, wait_until="load")
            page.fill("#user-id", str(user))
            page.click("#load-user")
            _wait_renders(page, 1)
            counts = {
                stage: page.locator(f"#col-{stage} .items li").count()
                for stage in ("recall", "prerank", "rank", "rerank")
            }
            sizes = pipeline.run.config.funnel
            assert counts["recall"] == sizes.topk_recall and counts["rerank"] == sizes.topk_final
            assert counts["prerank"] == counts["rank"] > counts["rerank"]
            assert page.locator("#col-recall .badge").count() > 0  # channel badges
            assert page.locator("#final .genre").count() > 0  # genre chips
            assert page.locator("#col-rank .move").count() == counts["rank"]
            assert page.text_content("#path") == "funnel"
            first = _final(page)
            # The controls start at the run's defaults (its lambda was chosen on valid).
            rerank = pipeline.funnel["rerank"].config
            assert float(page.input_value("#lambda")) == pytest.approx(rerank.lambda_mmr)
            assert page.is_checked(f'input[name="method"][value="{rerank.method}"]')
            # Move the slider the way a user does: focus it and press Home (lambda 0).
            page.focus("#lambda")
            page.keyboard.press("Home")
            _wait_renders(page, 2)
            assert page.input_value("#lambda") == "0"
            assert page.text_content("#lambda-value") == "0.00"
            diverse = _final(page)
            assert diverse != first
            assert "λ=0" in page.text_content("#status")
            page.check('input[name="method"][value="dpp"]')
            _wait_renders(page, 3)
            assert "DPP" in page.text_content("#status")
            page.focus("#lambda")
            for _ in range(50):  # back up to lambda 0.5, in steps of 0.01
                page.keyboard.press("ArrowRight")
            _wait_renders(page, 4)
            page.wait_for_function("document.querySelector('#status').textContent.includes('0.5')")
            ild = page.text_content("#ild")
            assert ild and ild != "–"
            page.check(f'input[name="method"][value="{rerank.method}"]')  # the run's, for the shot
            _wait_renders(page, 5)
            assert rerank.method.upper() in page.text_content("#status")
            shot = run_dir / "serving" / "serve.png"
            shot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(shot))
            if os.environ.get("RECFUNNEL_SCREENSHOT"):
                page.screenshot(path=os.environ["RECFUNNEL_SCREENSHOT"])
            assert shot.stat().st_size > 10_000
            _titles_are_text_not_markup(page, pipeline, user)
        finally:
            browser.close()
    assert not errors, errors
