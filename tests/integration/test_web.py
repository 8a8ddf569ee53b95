"""The dashboard's assets served in-process: `/` is the page, `/static/...` carries the right
content types, nothing escapes the web dir, nothing is loaded from another origin, and
`/api/me` tells the page what the key may do."""

from __future__ import annotations

import os
import re

import pytest
from tests.integration.conftest import Api

from constellation.api.routes.web import LIBRARIES, WEB_DIR
from constellation.registry import contributors, ownership

pytestmark = pytest.mark.anyio

ASSETS = sorted(p for p in WEB_DIR.iterdir() if p.is_file())


@pytest.fixture
def db_url(sqlite_url: str) -> str:
    return sqlite_url


async def test_root_serves_the_dashboard_with_a_same_origin_policy(api: Api) -> None:
    r = await api.client.get("/")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    assert '<script src="/static/app.js"' in r.text
    assert '<link rel="stylesheet" href="/static/style.css">' in r.text
    csp = r.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "script-src 'self'" in csp and "connect-src 'self'" in csp


@pytest.mark.parametrize(
    ("name", "content_type"),
    [("app.js", "text/javascript"), ("style.css", "text/css"), ("favicon.svg", "image/svg+xml")],
)
async def test_static_assets_have_their_content_types(api: Api, name: str, content_type: str) -> None:
    r = await api.client.get(f"/static/{name}")
    assert r.status_code == 200
    assert r.headers["content-type"].split(";")[0] == content_type
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.content == (WEB_DIR / name).read_bytes()


@pytest.mark.parametrize("path", ["nope.js", "%2e%2e/api/app.py", "..%2F..%2Fconfig.py", ""])
async def test_unknown_or_escaping_paths_are_openai_shaped_404s(api: Api, path: str) -> None:
    r = await api.client.get(f"/static/{path}")
    assert r.status_code == 404
    assert r.json()["error"]["message"]


def test_every_asset_loads_only_from_this_origin() -> None:
    """No script, stylesheet, font, image or fetch from elsewhere: the dashboard works offline."""
    assert {p.name for p in ASSETS} >= {"index.html", "app.js", "style.css"}
    for p in ASSETS:
        text = p.read_text()
        urls = re.findall(r"(?:https?:)?//[\w.-]+\.[a-z]{2,}[^\s\"')]*", text)
        # An SVG's namespace is an identifier, never fetched.
        loads = [u for u in urls if u != "http://www.w3.org/2000/svg"]
        assert loads == [], f"{p.name} refers to other origins: {loads}"
    html = (WEB_DIR / "index.html").read_text()
    for ref in re.findall(r'(?:src|href)="([^"]*)"', html):
        assert ref.startswith("/") and not ref.startswith("//"), ref
    css = (WEB_DIR / "style.css").read_text()
    assert "@import" not in css
    assert all(u.startswith(("data:", "/")) for u in re.findall(r"url\(\s*['\"]?([^'\")]+)", css))


def test_every_element_the_script_looks_up_exists_in_the_page() -> None:
    html = (WEB_DIR / "index.html").read_text()
    ids = set(re.findall(r'\bid="([\w-]+)"', html))
    used = set(re.findall(r'byId\("([\w-]+)"\)', (WEB_DIR / "app.js").read_text()))
    assert used, "app.js should look elements up with byId"
    assert used - ids == set()
    tabs = set(re.findall(r'data-tab="([\w-]+)"', html))
    assert {f"tab-{t}" for t in tabs} <= ids


async def test_me_reports_tenant_scopes_and_readable_statements(api: Api) -> None:
    api.key("acme")
    with api.platform.db.session() as s:
        contributors.add_contributor(s, id="sbert", name="SBERT", kind="organisation")
        ownership.link(s, tenant_id="acme", contributor_id="sbert")
    key = api.key("acme", "inference", "contributor:sbert")
    r = await api.client.get("/api/me", headers=key)
    assert r.status_code == 200
    me = r.json()
    assert me["tenant"] == "acme"
    assert me["scopes"] == ["contributor:sbert", "inference"]
    assert me["admin"] is False
    assert me["contributors"] == ["sbert"]
    assert (await api.client.get("/api/me", headers=api.admin)).json()["admin"] is True


async def test_me_without_a_key_is_401_with_a_hint(api: Api) -> None:
    r = await api.client.get("/api/me")
    assert r.status_code == 401
    assert "Authorization: Bearer" in r.json()["error"]["message"]


async def test_the_charting_library_is_served_from_this_server(api: Api) -> None:
    """Installed by `make install` (npm ci in web/); a skip without it, a failure with CI=true."""
    lib = WEB_DIR / LIBRARIES["lib/echarts.min.js"]
    if not lib.is_file():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{lib} is missing, and CI=true requires it (make install)")
        pytest.skip(f"{lib} is missing (make install)")
    r = await api.client.get("/static/lib/echarts.min.js")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/javascript")
    assert r.content == lib.read_bytes()
    html = (await api.client.get("/")).text
    assert '<script src="/static/lib/echarts.min.js"' in html


async def test_nothing_else_of_node_modules_is_served(api: Api) -> None:
    for path in ("node_modules/echarts/dist/echarts.min.js", "node_modules/echarts/package.json"):
        assert (await api.client.get(f"/static/{path}")).status_code == 404


async def test_a_missing_library_is_a_404_that_says_how_to_install_it(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(LIBRARIES, "lib/echarts.min.js", "node_modules/nothing-here.js")
    r = await api.client.get("/static/lib/echarts.min.js")
    assert r.status_code == 404 and "make install" in r.json()["error"]["message"]
