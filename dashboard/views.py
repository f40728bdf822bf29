"""The dashboard's HTML pages: thin Jinja2 shells whose scripts read the public ``/api/v1`` routes.

The pages hold no data of their own. Each one names what it shows in ``data-`` attributes of
``<body>`` (escaped by Jinja2) and loads one script module from ``/static``; the script fetches
the same URLs a user's script would (``docs/api.md``) and writes every user string with
``textContent``. No inline script exists anywhere, so the Content-Security-Policy can forbid it.

Routes (the app includes :data:`router` and mounts ``dashboard/static`` at ``/static``)::

    GET  /                        projects
    GET  /p/{project}             runs table (filter, sort, select runs to compare)
    GET  /p/{project}/compare     compare view; state in the query string (see docs/dashboard.md)
    GET  /p/{project}/alerts      the project's alerts
    GET  /runs/{run_id}           one run: config, tags, timings, series, charts, alerts
    GET  /login, POST /login      token sign-in (sets the HttpOnly ``losswatch_token`` cookie)
    POST /logout                  forget the token
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Final
from urllib.parse import parse_qs, urlsplit

import jinja2
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from losswatch.dashboard.security import TOKEN_COOKIE, SecurityHeadersMiddleware, apply_security_headers

_HERE: Final = Path(__file__).resolve().parent
_RUN_ID: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")
_MAX_LOGIN_BODY: Final = 8192
_COOKIE_MAX_AGE: Final = 30 * 24 * 3600

_env = jinja2.Environment(
    loader=jinja2.FileSystemLoader(str(_HERE / "templates")),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
)
templates = Jinja2Templates(env=_env)

router = APIRouter(include_in_schema=False)


def render(request: Request, name: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    """Render a dashboard template with the security headers set."""
    context.setdefault("signed_in", TOKEN_COOKIE in request.cookies)
    context.setdefault("page_data", {})
    response = templates.TemplateResponse(request, name, context, status_code=status_code)
    apply_security_headers(response.headers)
    response.headers["Cache-Control"] = "no-store"
    return response


def error_page(request: Request, status_code: int, message: str) -> HTMLResponse:
    """The dashboard's HTML error page; the app may use it for any non-API error."""
    return render(request, "error.html", status_code=status_code, title=f"{status_code}",
                  status=status_code, message=message)


async def html_not_found(request: Request, exc: Exception) -> Response:
    """An exception handler the app can register for 404s outside ``/api``."""
    return error_page(request, 404, "There is no page at this address.")


def _render_app_error(request: Request, status: int, code: str, message: str) -> HTMLResponse:
    if status == 404 and code == "not_found":
        message = "There is no page at this address."
    elif status >= 500:
        message = "The server failed to answer; see its log."
    return error_page(request, status, message)


def setup(app: Any) -> None:
    """Called by ``create_app`` after it includes the router: HTML error pages and security headers."""
    app.state.render_error_page = _render_app_error
    app.add_middleware(SecurityHeadersMiddleware)


def _exists(request: Request, what: str, name: str) -> bool:
    """Whether a project or run exists, asked of the same services the API uses.

    Only asked when the server runs without auth: with auth on, a page must not reveal what exists
    to a caller who has not signed in; its script then shows "not found" after the API answers.
    """
    state = request.app.state
    settings = getattr(state, "settings", None)
    db = getattr(state, "db", None)
    if settings is None or db is None or getattr(settings, "auth_required", True):
        return True
    try:
        from losswatch.server.errors import NotFound
        from losswatch.server.services import projects, runs
    except ImportError:
        return True
    try:
        with db.read() as session:
            if what == "project":
                projects.get_project(session, name)
            else:
                runs.get_run(session, name)
    except NotFound:
        return False
    return True


@router.get("/", response_class=HTMLResponse)
def projects_page(request: Request) -> HTMLResponse:
    return render(request, "projects.html", title="Projects", script="projects.js")


@router.get("/p/{project}", response_class=HTMLResponse)
def runs_page(request: Request, project: str) -> HTMLResponse:
    if not _exists(request, "project", project):
        return error_page(request, 404, "There is no project with this name.")
    return render(request, "runs.html", title=project, script="runs.js", project=project,
                  page_data={"project": project})


@router.get("/p/{project}/compare", response_class=HTMLResponse)
def compare_page(request: Request, project: str) -> HTMLResponse:
    if not _exists(request, "project", project):
        return error_page(request, 404, "There is no project with this name.")
    return render(request, "compare.html", title=f"{project} · compare", script="compare-page.js",
                  project=project, page_data={"project": project}, charts=True)


@router.get("/p/{project}/alerts", response_class=HTMLResponse)
def alerts_page(request: Request, project: str) -> HTMLResponse:
    if not _exists(request, "project", project):
        return error_page(request, 404, "There is no project with this name.")
    return render(request, "alerts.html", title=f"{project} · alerts", script="alerts.js",
                  project=project, page_data={"project": project})


@router.get("/runs/{run_id}", response_class=HTMLResponse)
def run_page(request: Request, run_id: str) -> HTMLResponse:
    if not _RUN_ID.fullmatch(run_id) or not _exists(request, "run", run_id):
        return error_page(request, 404, "There is no run with this id.")
    return render(request, "run.html", title=f"run {run_id}", script="run.js", run_id=run_id,
                  page_data={"run": run_id}, charts=True)


def _safe_next(value: str | None) -> str:
    """A local path to go back to after sign-in; anything else becomes ``/``."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/"
    parts = urlsplit(value)
    if parts.scheme or parts.netloc:
        return "/"
    return value


def _same_origin(request: Request) -> bool:
    origin = request.headers.get("origin")
    if origin is None or origin == "null":
        # Browsers send Origin on POST; a missing one is a non-browser client, which CSRF cannot use.
        return origin is None
    parts = urlsplit(origin)
    return parts.netloc == request.headers.get("host", "")


@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request, next: str | None = None, reason: str | None = None) -> HTMLResponse:
    message = None
    if reason == "unauthorized":
        message = "This server requires a token, or the token you gave was rejected."
    return render(request, "login.html", title="Sign in", next=_safe_next(next), message=message)


@router.post("/login")
async def login(request: Request) -> Response:
    if not _same_origin(request):
        return error_page(request, 403, "Sign-in must come from this site's own form.")
    body = await request.body()
    if len(body) > _MAX_LOGIN_BODY:
        return error_page(request, 413, "The sign-in form is too large.")
    form = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
    token = (form.get("token") or [""])[0].strip()
    target = _safe_next((form.get("next") or ["/"])[0])
    if not token or len(token) > 4096 or any(c in token for c in "\r\n;,\" "):
        return render(request, "login.html", status_code=400, title="Sign in", next=target,
                      message="Paste the whole token (letters, digits and punctuation, no spaces).")
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(
        TOKEN_COOKIE, token, max_age=_COOKIE_MAX_AGE, path="/", httponly=True, samesite="strict",
        secure=request.url.scheme == "https",
    )
    apply_security_headers(response.headers)
    return response


@router.post("/logout")
def logout(request: Request) -> Response:
    if not _same_origin(request):
        return error_page(request, 403, "Sign-out must come from this site's own form.")
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(TOKEN_COOKIE, path="/", httponly=True, samesite="strict")
    apply_security_headers(response.headers)
    return response
