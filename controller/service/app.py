"""The clinic service's HTTP application: the routers, the JSON errors, the body limit.

OpenAPI is served at `/openapi.json` (FastAPI's own), the interactive docs are off (they
load scripts from a CDN, which a clinic network may not reach and should not trust).
"""

from __future__ import annotations

from fastapi import FastAPI

from controller.service import (
    api_auth,
    api_clinic,
    api_devices,
    api_plans,
    api_rooms,
    api_sessions,
    api_technician,
    http_errors,
)
from controller.service.console import pages as console
from controller.service.context import ServiceContext

API_VERSION = "1"


def create_app(ctx: ServiceContext) -> FastAPI:
    app = FastAPI(title="modctl clinic service", version=API_VERSION, docs_url=None,
                  redoc_url=None, openapi_url="/openapi.json")
    app.state.ctx = ctx
    http_errors.install(app)
    for module in (api_auth, api_devices, api_technician, api_sessions, api_plans,
                   api_clinic, api_rooms):
        app.include_router(module.router)
    console.install(app)
    app.add_middleware(http_errors.BodyLimit)
    return app
