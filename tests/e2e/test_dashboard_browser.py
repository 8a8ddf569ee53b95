"""The dashboard in a real browser (Playwright + Debian's chromium) against the real server:
paste a key, read the models table, embed text and see its price, stream a chat answer."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.e2e.conftest import Server, make_server

from constellation.testing.toy_lm import save_random_lm

CHROMIUM = Path("/usr/bin/chromium")


def _browser_or_skip() -> Any:
    """Playwright's sync API, or a skip (a failure under CI=true) when the browser is missing."""
    missing = None
    if not CHROMIUM.exists():
        missing = f"{CHROMIUM} is missing (install it with `apt-get install -y chromium`)"
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing = "the `playwright` package is missing (pip install -e '.[dev]')"
    if missing:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{missing}, and CI=true requires the dashboard browser test")
        pytest.skip(missing)
    return sync_playwright


@pytest.fixture(scope="module")
def dash_server(tmp_path_factory: pytest.TempPathFactory, minilm_path: Path) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("dashboard")
    lm = save_random_lm(tmp / "tiny-lm", "qwen2", seed=1)
    srv = make_server(tmp)
    srv.start()
    # Registered over HTTP: each CLI call would pay another Python + torch start-up.
    admin = httpx.Client(base_url=srv.url, headers={"Authorization": f"Bearer {srv.admin_key}"}, timeout=120)
    for path, body in [
        ("/api/contributors", {"id": "sbert", "name": "SBERT", "kind": "organisation"}),
        ("/api/models", {"name": "minilm", "path": str(minilm_path), "task": "embedding", "author": "sbert"}),
        (
            "/api/models",
            {
                "name": "tiny-lm",
                "path": str(lm),
                "task": "causal-lm",
                "author": "sbert",
                "license": "apache-2.0",
            },
        ),
    ]:
        r = admin.post(path, json=body)
        assert r.status_code == 201, r.text
    admin.close()
    yield srv
    srv.stop()


def test_key_models_embeddings_price_and_streamed_chat(dash_server: Server, tmp_path: Path) -> None:
    sync_playwright = _browser_or_skip()
    problems: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM))
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
        page.on(
            "request",
            lambda r: (
                None if r.url.startswith(dash_server.url) else problems.append(f"external load: {r.url}")
            ),
        )
        page.goto(dash_server.url + "/")
        assert page.is_visible("#welcome")

        page.fill("#key-input", dash_server.key)
        page.click("#key-save")
        page.wait_for_selector("#models-table tr[data-model='minilm']")
        assert "acme" in page.inner_text("#whoami")
        assert page.is_hidden("[data-tab=admin]"), "an inference key sees no Admin tab"
        row = page.inner_text("#models-table tr[data-model='minilm']")
        assert "embedding" in row and "Permitted" in row

        page.click("#models-table tr[data-model='minilm']")
        page.click("text=Try in Playground")
        page.fill("#play-input", "a red bicycle\nquarterly revenue grew")
        page.click("#play-run")
        page.wait_for_selector("#play-price")
        assert "2 vectors × 384 dimensions" in page.inner_text("#play-result-title")
        price = page.inner_text("#play-price")
        assert price.startswith("$0.") and len(price.split(".")[1]) == 9, price
        assert "req_" in page.inner_text("#play-ext-facts")
        assert "infra" in page.inner_text("#play-split")
        page.screenshot(path=str(tmp_path / "dashboard-embeddings.png"), full_page=True)

        page.select_option("#play-model", "tiny-lm")
        page.fill("#play-input", "hello there")
        page.fill("#play-max-tokens", "12")
        page.fill("#play-seed", "7")
        page.click("#play-run")
        page.wait_for_selector("#chat-answer:not(.streaming)")
        page.wait_for_selector("#play-price")
        assert page.inner_text("#chat-answer").strip(), "the streamed answer is rendered"
        assert re.search(r"\d+ in / \d+ out", page.inner_text("#play-ext-facts"))

        page.click("[data-tab=usage]")
        page.wait_for_selector("#usage-table td[data-label='Request id']")
        assert page.locator("#usage-table tbody tr").count() == 2
        page.screenshot(path=str(tmp_path / "dashboard-usage.png"), full_page=True)
        browser.close()
    assert problems == []
    assert (tmp_path / "dashboard-embeddings.png").stat().st_size > 10_000


def test_api_errors_are_shown_with_their_message(dash_server: Server) -> None:
    sync_playwright = _browser_or_skip()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM))
        page = browser.new_page(viewport={"width": 390, "height": 800})
        page.goto(dash_server.url + "/")
        page.fill("#key-input", "cst_not_a_real_key")
        page.click("#key-save")
        page.wait_for_selector("#error:not([hidden])")
        text = page.inner_text("#error")
        assert "401" in text and "invalid API key" in text
        assert page.is_visible("#welcome") and page.is_hidden("#tabs")
        browser.close()


WORKFLOW = """
inputs: {message: string}
steps:
  - {name: vector, embed: {model: minilm, input: "{{ inputs.message }}"}}
  - name: reply
    chat: {model: tiny-lm, messages: [{role: user, content: "{{ inputs.message }}"}], max_tokens: 4}
output: reply
"""


def test_workflows_tab_draws_the_graph_and_lists_runs_with_their_steps(dash_server: Server) -> None:
    sync_playwright = _browser_or_skip()
    admin = {"Authorization": f"Bearer {dash_server.admin_key}"}
    r = httpx.post(
        f"{dash_server.url}/api/workflows",
        headers=admin,
        timeout=60,
        json={"name": "echo", "document": WORKFLOW, "author": "sbert"},
    )
    assert r.status_code == 201, r.text
    run = httpx.post(
        f"{dash_server.url}/v1/workflows/echo/runs",
        timeout=120,
        headers={"Authorization": f"Bearer {dash_server.key}"},
        json={"inputs": {"message": "hi"}},
    )
    assert run.status_code == 200, run.text
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM))
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(dash_server.url + "/")
        page.fill("#key-input", dash_server.admin_key)
        page.click("#key-save")
        page.click("[data-tab=workflows]")
        page.wait_for_selector("[data-workflow=echo] svg g[data-step=reply]")
        assert page.locator("[data-workflow=echo] svg g.wf-node").count() == 2
        assert page.locator("[data-workflow=echo] svg line.wf-edge").count() == 0  # reply reads no output
        row = page.inner_text(f"[data-workflow=echo] tr[data-run='{run.json()['id']}']")
        assert "vector (minilm)" in row and "reply (tiny-lm)" in row and "$0." in row
        browser.close()
