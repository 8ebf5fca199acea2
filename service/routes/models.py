"""The model repository's routes: which versions there are, which one serves, change it.

Admin only. Embedded, an activation loads and warms the new engine beside the old one and
swaps it in between frames (service/runner.py); with store redis the API checks the
bundle and moves the pointer, and every scrapscan-worker follows it within seconds. A
candidate put in shadow scores a share of the frames beside the served version, and its
answers are compared, not served (service/shadow.py).
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from common.classes import ANOMALY_CLASSES
from common.repository import NAME, Pointer, Shadow
from service.result import ModelRef
from service.routes.deps import Admin, ServiceDep, require
from service.routes.errors import CHANGE, ONE, responses
from service.shadow import ShadowFrame, ShadowSummary, summarise
from service.store import SHADOW_KEEP

router = APIRouter(tags=["models"], dependencies=[require("config")])
"""Every route here is the admin's (the config permission)."""


class Activation(BaseModel):
    """A version of a model."""

    name: str = Field(pattern=NAME.pattern, examples=["yard1"])
    version: str = Field(pattern=NAME.pattern, examples=["20261204.1"])


class Active(Activation):
    """The version served: which, since when, on whose word."""

    at: float = Field(description="when it was activated (epoch seconds)")
    by: str = Field(description="the role of the key that activated it")


class ModelVersion(Activation):
    """One version of the repository."""

    created_at: str = Field(description="when it was exported (ISO 8601)")
    active: bool


class Models(BaseModel):
    """The repository as it stands."""

    active: Active | None = Field(description="the version the repository says to serve")
    serving: ModelRef | None = Field(
        description="the model this process serves (embedded); None with store redis, whose "
        "workers say theirs in /readyz and scrapscan_model_info"
    )
    versions: list[ModelVersion] = Field(description="oldest first")
    log: list[dict[str, Any]] = Field(
        description="activations and rollbacks, newest last: action, name, version, at, by"
    )


def _active(pointer: Pointer) -> Active:
    return Active(**pointer.as_dict())


@router.get(
    "/v1/admin/bundles",
    response_model=Models,
    responses=responses(*ONE),
)
async def models(svc: ServiceDep) -> Models:
    """The repository's versions, the one active and the audit log of changes."""
    repo = svc.repository()
    state, versions = await asyncio.gather(
        asyncio.to_thread(repo.state), asyncio.to_thread(repo.versions)
    )
    active = state["history"][-1] if state["history"] else None
    pipeline = svc.runner.models.pipeline if svc.runner is not None else None
    serving = pipeline.bundle.manifest.model if pipeline is not None else None
    return Models(
        active=Active(**active) if active else None,
        serving=ModelRef(name=serving.name, version=serving.version) if serving else None,
        versions=[
            ModelVersion(
                name=v.name,
                version=v.version,
                created_at=v.created_at,
                active=active is not None
                and (v.name, v.version) == (active["name"], active["version"]),
            )
            for v in versions
        ],
        log=state["log"],
    )


@router.post("/v1/admin/bundles/active", response_model=Active, responses=responses(*CHANGE))
async def activate(svc: ServiceDep, given: Activation, by: Admin) -> Active:
    """Serve this version from now on, without stopping.

    Embedded, the new engine is loaded and warmed beside the old one; frames that start
    after it is ready run on it, frames under way finish on the old one. A bundle that
    fails to load or warm is refused (409 bundle_refused, with the reason) and the old one
    serves on. With store redis the bundle is checked here and each worker loads it.
    """
    return _active(await svc.activate(given.name, given.version, by))


@router.post("/v1/admin/bundles/rollback", response_model=Active, responses=responses(*CHANGE))
async def rollback(svc: ServiceDep, by: Admin) -> Active:
    """Serve again the version served before the current one (409 when there is none)."""
    return _active(await svc.rollback(by))


class ShadowRequest(Activation):
    """The candidate to score in shadow, and on how many of the frames."""

    share: float = Field(
        gt=0, le=1, description="of the frames, the share the candidate scores too", examples=[0.2]
    )


class ShadowPlan(ShadowRequest):
    """The candidate in shadow: which, on what share, since when, on whose word."""

    at: float = Field(description="when it was put in shadow (epoch seconds)")
    by: str = Field(description="the role of the key that did it")


class ShadowStatus(BaseModel):
    """The candidate in shadow, and how its answers compare with the served ones."""

    shadow: ShadowPlan | None = Field(description="the candidate scoring now, if any")
    summary: ShadowSummary | None = Field(
        description=f"its last {SHADOW_KEEP:,} shadow frames counted (or those of the version "
        "asked for)"
    )


def _plan(shadow: Shadow | None) -> ShadowPlan | None:
    return None if shadow is None else ShadowPlan(**shadow.as_dict())


async def _candidate(svc: ServiceDep, name: str | None, version: str | None) -> ModelRef | None:
    if name and version:
        return ModelRef(name=name, version=version)
    plan = await asyncio.to_thread(svc.repository().shadow)
    return None if plan is None else ModelRef(name=plan.name, version=plan.version)


async def _status(svc: ServiceDep, plan: Shadow | None, candidate: ModelRef) -> ShadowStatus:
    """`plan` with the figures of `candidate`'s shadow frames."""
    frames = await asyncio.to_thread(svc.store.shadow_frames, candidate)
    return ShadowStatus(shadow=_plan(plan), summary=summarise(candidate, frames, ANOMALY_CLASSES))


Version = Annotated[
    str | None,
    Query(pattern=NAME.pattern, description="another candidate than the one in shadow now"),
]


@router.get(
    "/v1/admin/bundles/shadow",
    response_model=ShadowStatus,
    responses=responses(*ONE),
)
async def shadow(svc: ServiceDep, name: Version = None, version: Version = None) -> ShadowStatus:
    """The candidate in shadow and its answers counted against the served ones.

    Per frame scored: both verdicts (agreement, and a table of served verdict by
    candidate verdict) and the instances matched (mask IoU from 0.25), reclassified,
    added by the candidate or dropped by it, in all and per class. `name` and `version`
    ask for the figures of an earlier candidate.
    """
    repo = svc.repository()
    plan = await asyncio.to_thread(repo.shadow)
    candidate = await _candidate(svc, name, version)
    if candidate is None:
        return ShadowStatus(shadow=None, summary=None)
    return await _status(svc, plan, candidate)


@router.get(
    "/v1/admin/bundles/shadow/frames",
    response_model=list[ShadowFrame],
    responses=responses(*ONE),
)
async def shadow_frames(
    svc: ServiceDep,
    name: Version = None,
    version: Version = None,
    limit: Annotated[int, Query(ge=1, le=SHADOW_KEEP)] = 100,
) -> list[ShadowFrame]:
    """The candidate's last `limit` shadow frames, oldest first.

    Each frame's two verdicts and its instances matched, added and dropped: what the
    summary counts.
    """
    candidate = await _candidate(svc, name, version)
    if candidate is None:
        return []
    return await asyncio.to_thread(svc.store.shadow_frames, candidate, limit)


@router.put("/v1/admin/bundles/shadow", response_model=ShadowPlan, responses=responses(*CHANGE))
async def start_shadow(svc: ServiceDep, given: ShadowRequest, by: Admin) -> ShadowPlan:
    """Score `share` of the frames with this version too, in place of any candidate before.

    Its answers are kept and compared, never served. Embedded its engine is loaded and
    warmed first; a bundle that fails is refused (409 bundle_refused) and any candidate
    before it stays; with store redis each worker loads it. The version served cannot be
    its own candidate (409 shadow_is_served); activating the candidate ends its shadow.
    """
    plan = await svc.start_shadow(given.name, given.version, given.share, by)
    out = _plan(plan)
    assert out is not None
    return out


@router.delete("/v1/admin/bundles/shadow", response_model=ShadowStatus, responses=responses(*ONE))
async def stop_shadow(svc: ServiceDep, by: Admin) -> ShadowStatus:
    """No candidate scores any more.

    Answers the candidate that did with its figures (which stay readable by name and
    version); none: nothing changed.
    """
    stopped = await svc.stop_shadow(by)
    if stopped is None:
        return ShadowStatus(shadow=None, summary=None)
    candidate = ModelRef(name=stopped.name, version=stopped.version)
    frames = await asyncio.to_thread(svc.store.shadow_frames, candidate)
    return ShadowStatus(
        shadow=_plan(stopped), summary=summarise(candidate, frames, ANOMALY_CLASSES)
    )
