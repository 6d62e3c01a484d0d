"""The API docs pages, served with every script and stylesheet from the server itself.

FastAPI's own /docs and /redoc load Swagger UI and ReDoc from a CDN, so they are blank on a machine
without internet access, the usual home of a self-hosted speech server. The ``fastapi-offline`` package
ships those files; here they are mounted under ``/docs/assets`` and the pages point there.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

#: Where the Swagger UI and ReDoc files are served; under /docs/ so ApiKeyAuth leaves them public.
ASSETS_URL = "/docs/assets"
#: The package and folder the files come from: swagger-ui-bundle.js, swagger-ui.css, redoc.standalone.js,
#: favicon.png.
ASSETS_PACKAGE = ("fastapi_offline", "static")


def install_docs(app: FastAPI, *, docs_url: str = "/docs", redoc_url: str | None = "/redoc") -> None:
    """Adds Swagger UI at ``docs_url`` and ReDoc at ``redoc_url`` (None: none) to an app created with
    ``docs_url=None, redoc_url=None``, both reading the app's OpenAPI schema."""
    if app.openapi_url is None:
        raise ValueError("install_docs needs the app's OpenAPI schema; create it with an openapi_url")
    app.mount(ASSETS_URL, StaticFiles(packages=[ASSETS_PACKAGE]), name="docs-assets")

    def urls(request: Request) -> tuple[str, str]:
        # Behind a proxy that serves the app under a prefix, every URL the page loads needs the prefix too.
        root = request.scope.get("root_path", "").rstrip("/")
        return f"{root}{app.openapi_url}", f"{root}{ASSETS_URL}"

    @app.get(docs_url, include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        openapi_url, assets = urls(request)
        return get_swagger_ui_html(
            openapi_url=openapi_url,
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{assets}/swagger-ui-bundle.js",
            swagger_css_url=f"{assets}/swagger-ui.css",
            swagger_favicon_url=f"{assets}/favicon.png",
            oauth2_redirect_url=None,
            # Swagger UI would otherwise fetch a validity badge from an outside service.
            swagger_ui_parameters={**(app.swagger_ui_parameters or {}), "validatorUrl": None},
        )

    if redoc_url is not None:
        @app.get(redoc_url, include_in_schema=False)
        async def redoc(request: Request) -> HTMLResponse:
            openapi_url, assets = urls(request)
            return get_redoc_html(
                openapi_url=openapi_url,
                title=f"{app.title} - ReDoc",
                redoc_js_url=f"{assets}/redoc.standalone.js",
                redoc_favicon_url=f"{assets}/favicon.png",
                with_google_fonts=False,
            )
