"""The pages a browser opens: the plant dashboard and the API docs.

Every asset comes from the installed packages (the dashboard's from service/dashboard/,
Swagger UI's from the fastapi-swagger package): a plant network reaches no CDN. The
dashboard is static; it asks for an API key, keeps it in the tab's sessionStorage and
calls the same routes, under the same role checks, as any client. Its pages carry a
Content-Security-Policy that allows scripts, styles and connections from this service
only, and no inline script.
"""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.types import Scope

router = APIRouter(include_in_schema=False)

DASHBOARD_ASSETS = "/dashboard/assets"
DOCS_ASSETS = "/docs/assets"
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'"
)
"""The dashboard's policy: nothing inline, nothing from elsewhere."""
HARDENING = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


class DashboardFiles(StaticFiles):
    """The dashboard's assets, with the page's security headers."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        """The file, hardened."""
        answer = await super().get_response(path, scope)
        answer.headers.update(HARDENING)
        return answer


def install(app: FastAPI) -> None:
    """Serve the dashboard and the docs (the app is made with docs_url=None, redoc_url=None)."""
    app.mount(
        DASHBOARD_ASSETS, DashboardFiles(packages=[("service", "dashboard")]), name="dashboard"
    )
    app.mount(DOCS_ASSETS, StaticFiles(packages=[("fastapi_swagger", "resources")]), name="swagger")
    app.include_router(router)


@router.get("/")
async def root() -> RedirectResponse:
    """The dashboard is the service's front page."""
    return RedirectResponse("/dashboard", status_code=307)


@router.get("/dashboard")
async def dashboard() -> HTMLResponse:
    """The dashboard's single page (it routes by the URL's #fragment)."""
    page = resources.files("service").joinpath("dashboard", "index.html").read_text()
    return HTMLResponse(page, headers=HARDENING)


@router.get("/docs")
async def docs(request: Request) -> HTMLResponse:
    """Swagger UI over /openapi.json, from the package's copy of its assets."""
    root = request.scope.get("root_path", "").rstrip("/")
    return get_swagger_ui_html(
        openapi_url=f"{root}{request.app.openapi_url}",
        title=f"{request.app.title} API",
        swagger_js_url=f"{root}{DOCS_ASSETS}/swagger-ui-bundle.js",
        swagger_css_url=f"{root}{DOCS_ASSETS}/swagger-ui.css",
        swagger_favicon_url=f"{root}{DOCS_ASSETS}/favicon-32x32.png",
    )
