"""Interactive API docs at /docs served from the `swagger-ui-bundle` package, so they render
on a machine with no internet access (FastAPI's default page loads Swagger UI from a CDN), and
the OpenAPI document's corrections: what FastAPI cannot infer from the routes."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from pydantic.json_schema import models_json_schema

from constellation.api.protocol.responses import ERROR_TEXT, STREAMED

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


def install_openapi(app: FastAPI) -> None:
    """The document FastAPI builds, with two corrections, made once: a request that fails
    validation is answered 400 in OpenAI's error shape (api/errors.py), not FastAPI's 422; and
    the chunk models of streamed answers, which no route returns as JSON, are in
    `components.schemas` so that the `text/event-stream` descriptions can name them."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        doc = build()
        schemas = doc.setdefault("components", {}).setdefault("schemas", {})
        _, defs = models_json_schema(
            [(m, "serialization") for m in STREAMED], ref_template="#/components/schemas/{model}"
        )
        for name, schema in defs.get("$defs", {}).items():
            schemas.setdefault(name, schema)
        for item in doc.get("paths", {}).values():
            for op in item.values():
                responses = op.get("responses", {})
                if responses.pop("422", None) is not None and "400" not in responses:
                    responses["400"] = {
                        "description": ERROR_TEXT[400],
                        "content": {
                            "application/json": {"schema": {"$ref": "#/components/schemas/ErrorOut"}}
                        },
                    }
        for unused in ("HTTPValidationError", "ValidationError"):
            schemas.pop(unused, None)
        return doc

    app.openapi = openapi  # type: ignore[method-assign]
