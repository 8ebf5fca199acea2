"""The live settings' routes: thresholds and camera beds changed while frames go on.

Admin only. A change is kept in the store as a new version with who made it and what it
replaced; the embedded runner applies it at once, each scrapscan-worker within
SETTINGS_POLL_S, and each result names the version it was made with (service/live.py).
"""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Query

from service.live import LiveSettings, SettingsChange
from service.routes.deps import Admin, ServiceDep, require
from service.routes.errors import LIST, responses

router = APIRouter(tags=["settings"], dependencies=[require("config")])
"""Every route here is the admin's (the config permission)."""


@router.get(
    "/v1/admin/settings",
    response_model=SettingsChange | None,
    responses=responses(*LIST),
)
async def live_settings(svc: ServiceDep) -> SettingsChange | None:
    """The live settings in force: their version, who set them and when.

    Null when none were set: the bundle's thresholds and the service's settings apply.
    """
    return await asyncio.to_thread(svc.store.live_settings)


@router.put("/v1/admin/settings", response_model=SettingsChange, responses=responses(*LIST))
async def set_live_settings(svc: ServiceDep, given: LiveSettings, by: Admin) -> SettingsChange:
    """Replace the live settings with a new version.

    Per-class thresholds, minimum and reject scores, per-camera beds; what is left out
    keeps the bundle's or the service's value. Kept across restarts; every process
    serving frames applies it within seconds (the embedded one at once), to the frames
    that start after.
    """
    change = await asyncio.to_thread(svc.store.save_settings, given, by)
    if svc.runner is not None:
        svc.runner.models.use(change)
    return change


LogLength = Annotated[int, Query(ge=1, le=1000, description="the latest this many")]


@router.get(
    "/v1/admin/settings/log",
    response_model=list[SettingsChange],
    responses=responses(*LIST),
)
async def settings_log(svc: ServiceDep, limit: LogLength = 100) -> list[SettingsChange]:
    """The audit log of the live settings: each version with who, when, before and after."""
    return await asyncio.to_thread(svc.store.settings_log, limit)
