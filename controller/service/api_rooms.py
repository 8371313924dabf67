"""The rooms sharing the records database, read-only: `GET /api/rooms` (docs/service.md,
"Several rooms"). Another room's devices are shown, never controlled: every control endpoint
acts only on the slots this service holds."""

from __future__ import annotations

from fastapi import APIRouter

from controller.service.api_auth import Authenticated, Ctx
from controller.service.rooms import rooms_json

router = APIRouter(prefix="/api", tags=["rooms"])


@router.get("/rooms")
def rooms(ctx: Ctx, login: Authenticated) -> dict[str, object]:
    """Every room with its last heartbeat (`age_s`, `stale`), whether it is this service's
    (`this_room`), and what each of its devices is doing (patient, operator, remaining time
    of a running session)."""
    return rooms_json(ctx)
