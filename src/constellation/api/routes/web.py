"""The dashboard: `/` serves `web/index.html`, `/static/...` the other assets of `web/`, and
`GET /api/me` tells the page which tenant and scopes the pasted key carries."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter
from fastapi.responses import FileResponse

from constellation.api.deps import PrincipalDep
from constellation.api.protocol.responses import errors
from constellation.api.schemas.web import MeOut
from constellation.errors import NotFound

router = APIRouter(tags=["web"])

WEB_DIR = Path(__file__).resolve().parents[2] / "web"

# Explicit types: `mimetypes` depends on the host's tables (some map .js to text/plain).
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
}

# The page loads nothing from elsewhere; the policy makes browsers enforce that.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)
HEADERS = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}


# Third-party scripts, installed into web/node_modules by `make install` (npm ci, pinned by
# web/package-lock.json) and served from here: the dashboard loads nothing from elsewhere.
LIBRARIES = {"lib/echarts.min.js": "node_modules/echarts/dist/echarts.min.js"}


def _asset(path: str) -> Path:
    """The file under WEB_DIR that `path` names; NotFound for anything else (no `..` escapes,
    nothing of node_modules but the LIBRARIES)."""
    root = WEB_DIR.resolve()
    target = (root / LIBRARIES.get(path, path)).resolve()
    if path in LIBRARIES and not target.is_file():
        raise NotFound(
            f"the dashboard's charting library is not installed ({LIBRARIES[path]}); "
            "run `make install` (npm ci --prefix src/constellation/web) and reload"
        )
    servable = target.is_relative_to(root) and target.is_file() and target.suffix in CONTENT_TYPES
    if "node_modules" in Path(path).parts or not servable:
        raise NotFound(f"no dashboard asset '{path}'; the dashboard lives at /")
    return target


@router.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
def index() -> FileResponse:
    """The dashboard's single page."""
    return FileResponse(
        _asset("index.html"),
        media_type=CONTENT_TYPES[".html"],
        headers={**HEADERS, "Content-Security-Policy": CSP},
    )


@router.get("/static/{path:path}", include_in_schema=False)
def static(path: str) -> FileResponse:
    """Scripts, styles and icons of the dashboard."""
    target = _asset(path)
    return FileResponse(target, media_type=CONTENT_TYPES[target.suffix], headers=HEADERS)


@router.get("/api/me", response_model=MeOut, responses=errors(401))
def me(principal: PrincipalDep) -> dict[str, Any]:
    """Who this key is: its tenant, key id and scopes, whether it is an admin key, and which
    contributors' statements it may read."""
    return {
        "tenant": principal.tenant_id,
        "key_id": principal.key_id,
        "scopes": sorted(principal.scopes),
        "admin": principal.is_admin,
        "contributors": sorted(principal.contributor_ids()),
    }
