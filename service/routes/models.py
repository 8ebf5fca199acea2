"""The model repository's routes: which versions there are, which one serves, change it.

Admin only. Embedded, an activation loads and warms the new engine beside the old one and
swaps it in between frames (service/runner.py); with store redis the API checks the
bundle and moves the pointer, and every scrapscan-worker follows it within seconds.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from common.repository import NAME, Pointer
from service.result import ModelRef
from service.routes.deps import ServiceDep, require
from service.routes.errors import CHANGE, ONE, responses

router = APIRouter(tags=["models"])

Admin = Annotated[str, require("config")]
"""Who changes the model: the caller's key (it must hold the admin role)."""


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
    "/v1/models",
    response_model=Models,
    responses=responses(*ONE),
    dependencies=[require("config")],
)
async def models(svc: ServiceDep) -> Models:
    """The repository's versions, the one active and the audit log of changes."""
    repo = svc.repository()
    state, versions = await asyncio.gather(
        asyncio.to_thread(repo.state), asyncio.to_thread(repo.versions)
    )
    active = state["history"][-1] if state["history"] else None
    pipeline = svc.runner.pipeline if svc.runner is not None else None
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


@router.post("/v1/models/active", response_model=Active, responses=responses(*CHANGE))
async def activate(svc: ServiceDep, given: Activation, by: Admin) -> Active:
    """Serve this version from now on, without stopping.

    Embedded, the new engine is loaded and warmed beside the old one; frames that start
    after it is ready run on it, frames under way finish on the old one. A bundle that
    fails to load or warm is refused (409 bundle_refused, with the reason) and the old one
    serves on. With store redis the bundle is checked here and each worker loads it.
    """
    return _active(await svc.activate(given.name, given.version, by))


@router.post("/v1/models/rollback", response_model=Active, responses=responses(*CHANGE))
async def rollback(svc: ServiceDep, by: Admin) -> Active:
    """Serve again the version served before the current one (409 when there is none)."""
    return _active(await svc.rollback(by))
