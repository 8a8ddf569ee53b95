"""Interactive API docs at /docs served from the `swagger-ui-bundle` package, so they render
on a machine with no internet access (FastAPI's default page loads Swagger UI from a CDN)."""

from __future__ import annotations

from fastapi import APIRouter, FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

router = APIRouter(include_in_schema=False)
ASSETS = "/docs-assets"


@router.get("/docs")
def docs() -> HTMLResponse:
    """Swagger UI for the OpenAPI schema at /openapi.json."""
    return get_swagger_ui_html(
        openapi_url="/openapi.json",
        title="Constellation API",
        swagger_js_url=f"{ASSETS}/swagger-ui-bundle.js",
        swagger_css_url=f"{ASSETS}/swagger-ui.css",
        swagger_favicon_url=f"{ASSETS}/favicon-32x32.png",
    )


def mount_assets(app: FastAPI) -> None:
    import swagger_ui_bundle

    app.mount(ASSETS, StaticFiles(directory=swagger_ui_bundle.swagger_ui_path), name="docs-assets")
