"""Login, logout and the checks every other route depends on.

A request is authenticated by `Authorization: Bearer TOKEN` (API clients) or by the
`modctl_token` cookie (the console). A cookie is sent by the browser whatever page made
the request, so a state-changing request authenticated by cookie must also prove it comes
from this service's own pages: the `X-CSRF-Token` header (the value login returned, also
in the readable `modctl_csrf` cookie) or an `Origin` header naming this service.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Coroutine
from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from controller.service.accounts import Account, Role
from controller.service.auth import Login, LoginRefused
from controller.service.context import ServiceContext
from controller.service.http_errors import ApiError

TOKEN_COOKIE = "modctl_token"
CSRF_COOKIE = "modctl_csrf"
CSRF_HEADER = "x-csrf-token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

router = APIRouter(prefix="/api", tags=["accounts"])


async def context(request: Request) -> ServiceContext:
    ctx: ServiceContext = request.app.state.ctx
    return ctx


Ctx = Annotated[ServiceContext, Depends(context)]


def _token(request: Request) -> tuple[str, bool]:
    """(token, came by cookie)."""
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip(), False
    return request.cookies.get(TOKEN_COOKIE, ""), True


def _same_origin(request: Request) -> bool:
    origin = request.headers.get("origin")
    if not origin:
        return False
    own = f"{request.url.scheme}://{request.headers.get('host', '')}"
    ctx: ServiceContext = request.app.state.ctx
    allowed = (own, *ctx.options.allowed_origins)
    return origin in allowed


async def authenticated(request: Request) -> Login:
    """The caller's login; 401 without a valid token, 403 for a cross-site cookie request.

    `async`, so it runs on the event loop (one indexed read of the account) instead of
    waiting for a worker thread: a stop request must not queue behind other requests."""
    token, by_cookie = _token(request)
    ctx: ServiceContext = request.app.state.ctx
    login = ctx.auth.current(token) if token else None
    if login is None:
        raise ApiError(401, "log in first (POST /api/login); a token expires after "
                            "inactivity and at logout")
    if by_cookie and request.method not in SAFE_METHODS:
        sent = request.headers.get(CSRF_HEADER, "")
        if not login.csrf_matches(sent) and not _same_origin(request):
            raise ApiError(403, "this request came with the login cookie but without the "
                                "X-CSRF-Token header or this service's Origin; refused")
    request.state.login = login
    return login


Authenticated = Annotated[Login, Depends(authenticated)]


def role(needed: Role, what: str) -> Callable[[Login], Coroutine[None, None, Login]]:
    """A dependency: the caller's login when their account may do `what` (admin may do
    everything)."""
    async def check(login: Authenticated) -> Login:
        if not login.account.may(needed):
            who = "an admin" if needed == "admin" else f"a {needed} (or an admin)"
            raise ApiError(403, f"{login.account.name} is a {login.account.role}; only "
                                f"{who} may {what}")
        return login
    return check


class LoginBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    username: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=1024)


def account_json(account: Account) -> dict[str, object]:
    return {"name": account.name, "role": account.role, "disabled": account.disabled,
            "created": account.created, "changed": account.changed}


@router.post("/login")
def login(body: LoginBody, request: Request, response: Response, ctx: Ctx) -> dict[str, object]:
    address = request.client.host if request.client else "unknown"
    try:
        got = ctx.auth.login(body.username, body.password, address)
    except LoginRefused as exc:
        if exc.retry_after is not None:
            raise ApiError(429, exc.message, retry_after_s=math.ceil(exc.retry_after)) \
                from None
        raise ApiError(401, exc.message) from None
    secure = request.url.scheme == "https"
    response.set_cookie(TOKEN_COOKIE, got.token, httponly=True, samesite="strict",
                        secure=secure, path="/")
    response.set_cookie(CSRF_COOKIE, got.csrf, httponly=False, samesite="strict",
                        secure=secure, path="/")
    return {"token": got.token, "csrf": got.csrf, "user": account_json(got.account),
            "idle_expiry_s": ctx.options.idle_s}


@router.post("/logout")
def logout(request: Request, response: Response, ctx: Ctx,
           login: Authenticated) -> dict[str, object]:
    ctx.auth.logout(login.token)
    response.delete_cookie(TOKEN_COOKIE, path="/")
    response.delete_cookie(CSRF_COOKIE, path="/")
    return {"ok": True}


@router.get("/me")
def me(login: Authenticated, ctx: Ctx) -> dict[str, object]:
    return {"user": account_json(login.account), "insecure_http": ctx.options.insecure_http}
