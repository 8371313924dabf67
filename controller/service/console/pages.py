"""The console's HTML pages: server-rendered Jinja2 shells over the JSON API, with plain
JavaScript and CSS served from this package (no build step, no CDN).

A page only decides who may see it; everything it shows comes from the API and the live
stream, and the API enforces every rule again. Pages are served with a strict Content
Security Policy (no inline script or style), so the page's code is the static files only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.types import Scope

from controller.clinic import clock as clinic_time
from controller.clinic.patients import PatientIdError, check_patient_id
from controller.service.accounts import Role
from controller.service.api_auth import TOKEN_COOKIE
from controller.service.auth import Login
from controller.service.context import ServiceContext

HERE = Path(__file__).parent
# Every page and static file: scripts and styles from this service only (never inline, never
# a CDN), not framed, no Referer with patient ids in URLs leaving the page.
SECURITY_HEADERS = {
    "Content-Security-Policy": ("default-src 'self'; base-uri 'none'; form-action 'self'; "
                                "frame-ancestors 'none'; object-src 'none'"),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
# Pages hold patient ids: never kept in a shared browser's cache.
PAGE_CACHE = "no-store"

_templates = Environment(loader=FileSystemLoader(HERE / "templates"),
                         autoescape=select_autoescape(["html"]), trim_blocks=True,
                         lstrip_blocks=True)

router = APIRouter(include_in_schema=False)


@dataclass(frozen=True)
class Page:
    template: str
    title: str
    needs: Role | None = None
    """The role that may use the page (an admin may use every page), or None for anyone."""
    doing: str = ""
    """What the role is needed for, in the refusal's words."""


ROOM = Page("room.html", "Room")
START = Page("start.html", "Start a treatment", "clinician", "start treatments")
PATIENTS = Page("patients.html", "Patient history")
TECHNICIAN = Page("technician.html", "Devices", "technician",
                  "register, release and hold devices")
ADMIN = Page("admin.html", "Accounts", "admin", "manage accounts")
ROOMS = Page("rooms.html", "Rooms")


def _context(request: Request) -> ServiceContext:
    ctx: ServiceContext = request.app.state.ctx
    return ctx


def _login(request: Request) -> Login | None:
    token = request.cookies.get(TOKEN_COOKIE, "")
    return _context(request).auth.current(token) if token else None


def _secure(response: Response) -> Response:
    response.headers.update(SECURITY_HEADERS)
    response.headers["Cache-Control"] = PAGE_CACHE
    return response


def _render(request: Request, page: Page, login: Login | None, *, status: int = 200,
            extra: Mapping[str, object] | None = None) -> Response:
    account = login.account if login is not None else None
    may = {role: account is not None and account.may(role)
           for role in ("clinician", "technician", "admin")}
    refusal = ""
    if account is not None and page.needs is not None and not may[page.needs]:
        refusal = (f"{account.name} is a {account.role}; only a {page.needs} (or an admin) "
                   f"may {page.doing}.")
    ctx = _context(request)
    html = _templates.get_template(page.template).render(
        title=page.title, user=account, may=may, refusal=refusal, path=request.url.path,
        insecure_http=ctx.options.insecure_http, room=ctx.options.room,
        # The Rooms page is in the menu where there can be other rooms to see.
        several_rooms=ctx.store.shared or ctx.options.room is not None, **(extra or {}))
    return _secure(HTMLResponse(html, status_code=status))


def _to_login(request: Request) -> Response:
    target = request.url.path
    return _secure(RedirectResponse(f"/login?next={quote(target, safe='/')}", 303))


def _page(request: Request, page: Page, **extra: object) -> Response:
    login = _login(request)
    if login is None:
        return _to_login(request)
    return _render(request, page, login, extra=extra)


@router.get("/login")
def login_page(request: Request) -> Response:
    if _login(request) is not None:
        return _secure(RedirectResponse("/", 303))
    return _render(request, Page("login.html", "Log in"), None)


@router.get("/")
def room_page(request: Request) -> Response:
    return _page(request, ROOM)


@router.get("/start")
def start_page(request: Request) -> Response:
    today = clinic_time.now().astimezone().date().isoformat()
    return _page(request, START, today=today)


@router.get("/patients")
def patients_page(request: Request) -> Response:
    return _page(request, PATIENTS, patient="", problem="")


@router.get("/patients/{patient}")
def patient_page(patient: str, request: Request) -> Response:
    login = _login(request)
    if login is None:
        return _to_login(request)
    try:
        pid = check_patient_id(patient, "patient id")
    except PatientIdError as exc:
        return _render(request, PATIENTS, login, status=422,
                       extra={"patient": "", "problem": str(exc)})
    return _render(request, PATIENTS, login, extra={"patient": pid, "problem": ""})


@router.get("/rooms")
def rooms_page(request: Request) -> Response:
    return _page(request, ROOMS)


@router.get("/technician")
def technician_page(request: Request) -> Response:
    return _page(request, TECHNICIAN)


@router.get("/admin")
def admin_page(request: Request) -> Response:
    return _page(request, ADMIN)


class ConsoleStatic(StaticFiles):
    """The console's scripts, styles and icon, with the pages' security headers."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers.update(SECURITY_HEADERS)
        return response


def install(app: FastAPI) -> None:
    """Serve the console's pages and static files on `app` (beside the API)."""
    app.include_router(router)
    app.mount("/static", ConsoleStatic(directory=HERE / "static"), name="console-static")
