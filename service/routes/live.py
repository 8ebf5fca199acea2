"""The live settings' routes: thresholds, camera beds, text classes, changed as frames go on.

Admin only. A change is kept in the store as a new version with who made it and what it
replaced; the embedded runner applies it at once, each scrapscan-worker within
SETTINGS_POLL_S, and each result names the version it was made with (service/live.py).
/v1/classes defines classes by text (service/zeroshot.py) in the same settings.
"""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from common.classes import ANOMALY_CLASSES
from service.errors import Conflict, InvalidInput, NotFound
from service.live import LiveSettings, SettingsChange
from service.routes.deps import Admin, ServiceDep, require
from service.routes.errors import CHANGE, LIST, responses
from service.runtime import Service
from service.zeroshot import PromptError, TextClass

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
    if given.text_classes is None:  # the classes are changed through /v1/classes
        current = await asyncio.to_thread(svc.store.live_settings)
        if current is not None and current.settings.text_classes:
            given = given.model_copy(update={"text_classes": current.settings.text_classes})
    else:
        await _check_classes(svc, given.text_classes)
    return await _save(svc, given, by)


async def _save(svc: Service, given: LiveSettings, by: str) -> SettingsChange:
    change = await asyncio.to_thread(svc.store.save_settings, given, by)
    if svc.runner is not None:
        svc.runner.models.use(change)
    return change


class TextClasses(BaseModel):
    """The classes a frame is scored with: the bundle's learned ones and those defined by text."""

    learned: list[str] = Field(description="the contaminant classes the model was trained on")
    text: list[TextClass] = Field(description="the classes defined by text, in order")
    limit: int = Field(description="how many may be defined (the max_text_classes setting)")
    slots: int | None = Field(
        None,
        description="how many the served bundle scores at once (null: not known here, each "
        "worker's bundle says; 0: the bundle has no text tower)",
    )
    settings_version: int | None = Field(None, description="the live settings' version")


def _listed(svc: Service, change: SettingsChange | None) -> TextClasses:
    """The classes as a version of the live settings (None: none set) defines them."""
    pipeline = svc.runner.models.pipeline if svc.runner is not None else None
    zero_shot = pipeline.bundle.manifest.zero_shot if pipeline is not None else None
    return TextClasses(
        learned=list(pipeline.classes[1:] if pipeline is not None else ANOMALY_CLASSES),
        text=list(change.settings.text_classes or ()) if change is not None else [],
        limit=svc.settings.max_text_classes,
        slots=None if pipeline is None else zero_shot.slots if zero_shot is not None else 0,
        settings_version=None if change is None else change.version,
    )


async def _current(svc: Service) -> tuple[TextClasses, LiveSettings]:
    """The classes in force, and the live settings they are part of."""
    change = await asyncio.to_thread(svc.store.live_settings)
    return _listed(svc, change), change.settings if change is not None else LiveSettings()


_CLASS_ERRORS = responses(*CHANGE)


@router.get("/v1/classes", response_model=TextClasses, responses=responses(*LIST))
async def list_classes(svc: ServiceDep) -> TextClasses:
    """The learned classes and the classes defined by text, with how many may be defined."""
    return (await _current(svc))[0]


@router.post("/v1/classes", status_code=201, response_model=TextClasses, responses=_CLASS_ERRORS)
async def add_class(svc: ServiceDep, given: TextClass, by: Admin) -> TextClasses:
    """Define a class by its name and prompts: scored from the next frames on, no training.

    The bundle's text tower encodes the prompts; each tile's patch tokens are scored
    against them beside the learned classes, and its instances are marked zero-shot. Kept
    in the live settings (a new version): it survives restarts and every worker follows
    it within seconds. With the demo model's random weights such a class cannot be
    accurate (README, "Classes defined by text").
    """
    listed, settings = await _current(svc)
    text = (*listed.text, given)
    await _check_classes(svc, text)
    return _listed(svc, await _save(svc, settings.model_copy(update={"text_classes": text}), by))


async def _check_classes(svc: Service, classes: tuple[TextClass, ...]) -> None:
    """Names unique and not learned, no more than the limit, prompts the text tower reads.

    The prompts are checked where the served bundle is at hand (embedded); scaled out each
    worker's bundle reads them, and a worker that cannot logs why it does not score them.
    """
    pipeline = svc.runner.models.pipeline if svc.runner is not None else None
    taken = {"normal", *(pipeline.classes if pipeline is not None else ANOMALY_CLASSES)}
    for c in classes:
        if c.name in taken:
            raise Conflict("class_exists", f"a class named {c.name} exists; remove it first")
        taken.add(c.name)
    limit = svc.settings.max_text_classes
    if len(classes) > limit:
        raise Conflict(
            "too_many_classes",
            f"{len(classes)} classes defined by text, the limit is {limit} "
            "(SCRAPSCAN_MAX_TEXT_CLASSES); remove one first",
        )
    if pipeline is None or not classes:
        return
    tower = pipeline.text_tower
    if tower is None:
        raise Conflict(
            "no_text_tower",
            f"the served bundle {pipeline.bundle.manifest.model.version} has no text tower; "
            "export one with scrapscan-export --zero-shot-slots K",
        )
    prompts = [p for c in classes for p in (*c.prompts, *(c.normal_prompts or ()))]
    try:
        await asyncio.to_thread(tower.tokens, prompts)
    except PromptError as err:
        raise InvalidInput("prompt_too_long", str(err)) from None


@router.delete("/v1/classes/{name}", response_model=TextClasses, responses=_CLASS_ERRORS)
async def remove_class(svc: ServiceDep, name: str, by: Admin) -> TextClasses:
    """Stop scoring a class defined by text (frames already scored keep their instances)."""
    listed, settings = await _current(svc)
    kept = tuple(c for c in listed.text if c.name != name)
    if len(kept) == len(listed.text):
        raise NotFound("class_not_found", f"no class defined by text is named {name}")
    return _listed(svc, await _save(svc, settings.model_copy(update={"text_classes": kept}), by))


LogLength = Annotated[int, Query(ge=1, le=1000, description="the latest this many")]


@router.get(
    "/v1/admin/settings/log",
    response_model=list[SettingsChange],
    responses=responses(*LIST),
)
async def settings_log(svc: ServiceDep, limit: LogLength = 100) -> list[SettingsChange]:
    """The audit log of the live settings: each version with who, when, before and after."""
    return await asyncio.to_thread(svc.store.settings_log, limit)
