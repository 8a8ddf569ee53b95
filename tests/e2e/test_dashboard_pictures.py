"""The dashboard's pictures in a real browser against the real server on the demo's data: the
lineage graph (and one of 200 adapters), usage and earnings per day (and an empty month), the
playground's split; the numbers drawn equal the API's, a screenshot of each view is written to
the test's directory, and without the charting library each picture says how to install it.

The demo is built once per session (reduced: tests/conftest.py's demo_build) and copied here."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.conftest import DemoBuild
from tests.e2e.conftest import Server, free_port, make_server
from tests.e2e.test_dashboard_browser import CHROMIUM, _browser_or_skip

from constellation.api.routes.web import LIBRARIES, WEB_DIR
from constellation.config import Settings
from constellation.platform import Platform

pytestmark = pytest.mark.slow


def _usd(nanos: int) -> str:
    sign = "-" if nanos < 0 else ""
    return f"{sign}${abs(nanos) // 10**9}.{abs(nanos) % 10**9:09d}"


def _settings(data: Path) -> Settings:
    return Settings(data_dir=data, db_url=f"sqlite:///{data / 'constellation.db'}")


@pytest.fixture(scope="module")
def demo_server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    if not (WEB_DIR / LIBRARIES["lib/echarts.min.js"]).is_file():
        pytest.skip("the charting library is not installed (make install)")
    demo: DemoBuild = request.getfixturevalue("demo_build")
    tmp = tmp_path_factory.mktemp("pictures")
    shutil.copytree(demo.data, tmp / "data")
    keys = json.loads((tmp / "data" / "demo-keys.json").read_text())
    port = free_port()
    srv = Server(
        url=f"http://127.0.0.1:{port}",
        env=_env(tmp / "data"),
        admin_key=keys["admin"],
        key=keys["demo"],
        port=port,
        log=tmp / "server.log",
    )
    srv.env["STATEMENT_KEY"] = keys["northwind-reviews"]
    srv.start()
    yield srv
    srv.stop()


def _env(data: Path) -> dict[str, str]:
    env = {**os.environ, "CONSTELLATION_DATA_DIR": str(data)}
    env.pop("CONSTELLATION_DB_URL", None)  # a developer's shell setting must not leak into the test
    return env


def _get(srv: Server, path: str, key: str, **params: str) -> Any:
    r = httpx.get(srv.url + path, params=params, headers={"Authorization": f"Bearer {key}"}, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()


def _option(page: Any, element_id: str) -> Any:
    """The ECharts option drawn in an element, as the page holds it."""
    return page.evaluate(
        "(id) => { const c = echarts.getInstanceByDom(document.getElementById(id));"
        " const o = c.getOption(); return {series: o.series, graphic: o.graphic}; }",
        element_id,
    )


def _wait_text(page: Any, element_id: str, text: str = "") -> None:
    """Wait until an element's text contains `text` (any text at all by default)."""
    page.wait_for_function(
        "([id, text]) => (document.getElementById(id).textContent || '').includes(text || '') "
        "&& document.getElementById(id).textContent.length > 0",
        arg=[element_id, text],
    )


def _sign_in(page: Any, srv: Server, key: str) -> None:
    page.goto(srv.url + "/")
    page.fill("#key-input", key)
    page.click("#key-save")
    page.wait_for_selector("#whoami:not([hidden])")


def _browser(p: Any, problems: list[str]) -> Any:
    browser = p.chromium.launch(executable_path=str(CHROMIUM))
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("console", lambda m: problems.append(f"console: {m.text}") if m.type == "error" else None)
    return browser, page


def test_lineage_graph_and_playground_split(demo_server: Server, tmp_path: Path) -> None:
    sync_playwright = _browser_or_skip()
    srv, problems = demo_server, []
    graph = _get(srv, "/api/lineage", srv.key)
    models = {m["id"]: m["constellation"] for m in _get(srv, "/v1/models", srv.key)["data"]}
    with sync_playwright() as p:
        browser, page = _browser(p, problems)
        _sign_in(page, srv, srv.key)
        page.click("[data-tab=lineage]")
        page.wait_for_selector("#lineage-graph canvas")
        drawn = _option(page, "lineage-graph")["series"][0]
        ids = {n["id"] for n in drawn["data"]}
        assert ids == {n["id"] for n in graph["nodes"]}, "the demo is small enough to show unfolded"
        labels = {n["id"]: n["label"]["formatter"] for n in drawn["data"]}
        assert labels["model:ticket-intent-v1"] == "ticket-intent-v1 (refused)"
        assert labels["model:sentiment-v1"] == "sentiment-v1"
        weights = {(e["source"], e["target"]): e["label"]["formatter"] for e in drawn["links"]}
        edge = next(e for e in graph["edges"] if e["source"] == "model:sentiment-v1" and e.get("weight"))
        assert weights[(edge["source"], edge["target"])].startswith(f"w {edge['weight']} (")
        page.screenshot(path=str(tmp_path / "lineage.png"), full_page=True)

        page.fill("#lineage-find", "sentiment-v1")
        page.click("#lineage-find-form button[type=submit]")
        page.wait_for_selector("#lineage-split-chart canvas")
        node = next(n for n in graph["nodes"] if n["id"] == "model:sentiment-v1")
        assert page.inner_text("#lineage-price") == _usd(node["price"]["reference"]["price_nanos"])
        assert "Permitted" in page.inner_text("#lineage-detail")
        bar = _option(page, "lineage-split-chart")["series"]
        assert [s["data"][0] for s in bar] == [g["amount_nanos"] for g in node["price"]["reference"]["split"]]
        page.screenshot(path=str(tmp_path / "lineage-detail.png"), full_page=True)

        page.click("[data-tab=playground]")
        assert models[page.input_value("#play-model")]["permitted"] is True, "opens on a permitted model"
        page.select_option("#play-model", "sentiment-v1")
        page.fill("#play-input", "The battery died after two days.")
        page.click("#play-run")
        page.wait_for_selector("#play-price", timeout=120_000)  # the first request loads the adapter
        page.wait_for_selector("#play-split-chart canvas")
        price = int(page.inner_text("#play-ext-facts").split("In nano-USD")[1].split()[0])
        bar = _option(page, "play-split-chart")["series"]
        amounts = [s["data"][0] for s in bar]
        assert sum(amounts) == price and len(amounts) == page.locator("#play-split tbody tr").count()
        page.screenshot(path=str(tmp_path / "playground-split.png"), full_page=True)
        browser.close()
    assert problems == []


def test_usage_and_earnings_over_time(demo_server: Server, tmp_path: Path) -> None:
    sync_playwright = _browser_or_skip()
    srv, problems = demo_server, []
    for text in ("The app crashes on start", "Great value, would buy again"):  # some usage to draw
        body = {"model": "sentiment-v1", "input": [text]}
        auth = {"Authorization": f"Bearer {srv.key}"}
        r = httpx.post(f"{srv.url}/v1/classify", json=body, headers=auth, timeout=120)
        assert r.status_code == 200, r.text
    daily = _get(srv, "/api/usage/daily", srv.key)
    invoice = _get(srv, "/api/invoices", srv.key)
    assert daily["totals"]["spend_nanos"] == invoice["total_nanos"] > 0
    with sync_playwright() as p:
        browser, page = _browser(p, problems)
        _sign_in(page, srv, srv.key)
        page.click("[data-tab=usage]")
        page.wait_for_selector("#usage-chart canvas")
        _wait_text(page, "usage-series-total")
        drawn = _option(page, "usage-chart")["series"]
        assert [s["data"] for s in drawn] == [ln["spend_nanos"] for ln in daily["series"]]
        assert _usd(invoice["total_nanos"]) in page.inner_text("#usage-series-total")
        page.screenshot(path=str(tmp_path / "usage-over-time.png"), full_page=True)
        page.select_option("#usage-metric", "requests")
        assert [s["data"] for s in _option(page, "usage-chart")["series"]] == [
            ln["requests"] for ln in daily["series"]
        ]
        page.fill("#usage-period", "2001-01")
        page.dispatch_event("#usage-period", "change")
        _wait_text(page, "usage-series-total", "$0.000000000")
        empty = _option(page, "usage-chart")
        assert empty["series"] == [] and "No usage in 2001-01" in json.dumps(empty["graphic"])
        page.screenshot(path=str(tmp_path / "usage-empty-month.png"), full_page=True)

        statement_key = srv.env["STATEMENT_KEY"]
        earned = _get(srv, "/api/statements/daily", statement_key, contributor="northwind-reviews")
        statement = _get(srv, "/api/statements", statement_key, contributor="northwind-reviews")
        assert earned["totals"]["amount_nanos"] == statement["total_nanos"] > 0
        _sign_in(page, srv, statement_key)
        page.click("[data-tab=statements]")
        page.wait_for_selector("#statement-chart canvas")
        _wait_text(page, "statement-series-total")
        bars = [s for s in _option(page, "statement-chart")["series"] if s["type"] == "bar"]
        assert [s["data"] for s in bars] == [ln["amount_nanos"] for ln in earned["series"]]
        assert _usd(statement["total_nanos"]) in page.inner_text("#statement-series-total")
        page.screenshot(path=str(tmp_path / "earnings-over-time.png"), full_page=True)
        page.fill("#statement-period", "2001-01")
        page.click("#statement-refresh")
        _wait_text(page, "statement-series-total", "$0.000000000")
        assert "No earnings in 2001-01" in json.dumps(_option(page, "statement-chart")["graphic"])
        page.screenshot(path=str(tmp_path / "earnings-empty-month.png"), full_page=True)
        browser.close()
    assert problems == []


def test_without_the_library_each_picture_says_how_to_install_it(demo_server: Server, tmp_path: Path) -> None:
    sync_playwright = _browser_or_skip()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM))
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.route("**/static/lib/echarts.min.js", lambda route: route.fulfill(status=404, body="missing"))
        _sign_in(page, demo_server, demo_server.key)
        page.click("[data-tab=lineage]")
        page.wait_for_selector("#lineage-graph.chart-missing")
        assert "make install" in page.inner_text("#lineage-graph")
        page.click("[data-tab=usage]")
        page.wait_for_selector("#usage-chart.chart-missing")
        assert page.locator("#invoice-models tbody tr").count() >= 1, "the tables still show the numbers"
        page.screenshot(path=str(tmp_path / "usage-without-library.png"), full_page=True)
        browser.close()


@pytest.fixture(scope="module")
def crowded_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One base with 200 adapters, each trained on its own data set from one of 20 providers
    (registered straight into the database: the graph reads no weights)."""
    if not (WEB_DIR / LIBRARIES["lib/echarts.min.js"]).is_file():
        pytest.skip("the charting library is not installed (make install)")
    from constellation.registry import contributors, datasets, models
    from constellation.registry.tables import Artifact

    tmp = tmp_path_factory.mktemp("crowded")
    srv = make_server(tmp)
    platform = Platform(_settings(tmp / "data")).open()
    with platform.db.session() as s:
        digest = hashlib.sha256(b"crowded").hexdigest()
        s.add(Artifact(digest=digest, kind="model", size_bytes=1, files={}))
        for i in range(20):
            contributors.add_contributor(s, id=f"provider-{i:02d}", name=f"Provider {i}", kind="person")
        contributors.add_contributor(s, id="lab", name="Lab", kind="organisation")
        common = {
            "artifact_digest": digest,
            "author_id": "lab",
            "task": "classification",
            "labels": ["a", "b"],
        }
        models.add_model(s, name="big-base", kind="base", licence_id="apache-2.0", **common)
        for i in range(200):
            licence = ("mit", "cc-by-sa-4.0", "cc-by-nc-4.0", "openrail-m")[i % 4]
            m = models.add_model(
                s, name=f"adapter-{i:03d}", kind="adapter", licence_id=licence, base_name="big-base", **common
            )
            d = datasets.add_dataset(
                s,
                name=f"data-{i:03d}",
                artifact_digest=digest,
                sha256=hashlib.sha256(f"data-{i}".encode()).hexdigest(),
                example_count=10 + i,
                licence_id=licence,
                provider_id=f"provider-{i % 20:02d}",
            )
            models.link_dataset(s, model=m, dataset=d, weight=10 + i)
    platform.close()
    srv.start()
    yield srv
    srv.stop()


def test_two_hundred_adapters_fold_into_their_base(crowded_server: Server, tmp_path: Path) -> None:
    sync_playwright = _browser_or_skip()
    srv, problems = crowded_server, []
    graph = _get(srv, "/api/lineage", srv.key)
    assert sum(n["type"] == "adapter" for n in graph["nodes"]) == 200
    with sync_playwright() as p:
        browser, page = _browser(p, problems)
        _sign_in(page, srv, srv.key)
        page.click("[data-tab=lineage]")
        page.wait_for_selector("#lineage-graph canvas")
        drawn = _option(page, "lineage-graph")["series"][0]["data"]
        assert [n["id"] for n in drawn] == ["model:big-base", "contributor:lab", "group:model:big-base"]
        assert drawn[2]["label"]["formatter"].startswith("200 derived models, 200 data sets")
        page.screenshot(path=str(tmp_path / "lineage-200-folded.png"), full_page=True)

        page.fill("#lineage-find", "adapter-137")
        page.click("#lineage-find-form button[type=submit]")
        page.wait_for_selector("#lineage-detail:not([hidden])")
        drawn = _option(page, "lineage-graph")["series"][0]["data"]
        assert sum(n["id"].startswith("model:adapter-") for n in drawn) == 200
        assert "(refused)" in next(n for n in drawn if n["id"] == "model:adapter-002")["label"]["formatter"]
        page.screenshot(path=str(tmp_path / "lineage-200-unfolded.png"), full_page=False)
        page.fill("#lineage-find", "big-base")
        page.click("#lineage-find-form button[type=submit]")
        page.click("text=Fold its 200 derived models")
        page.wait_for_function(
            "() => echarts.getInstanceByDom(document.getElementById('lineage-graph'))"
            ".getOption().series[0].data.length === 3"
        )
        browser.close()
    assert problems == []
