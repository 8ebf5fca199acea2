"""Live settings: thresholds, camera beds and text classes changed while the service runs.

The bundle's calibration gives the thresholds a model starts with; a yard tunes them
(a class that raises too many false alarms, a reject score the operators find too eager)
and moves cameras without a restart. Each change is a new version kept in the store
with who made it, when, and the settings before and after (the audit log); every
process serving frames (the embedded runner, each scrapscan-worker) follows the latest
version within SETTINGS_POLL_S, and each result names the version it was made with.
"""

from __future__ import annotations

import time
from typing import Annotated, Final

from pydantic import BaseModel, ConfigDict, Field

from common.classes import ANOMALY_CLASSES
from service.settings import CameraBed
from service.zeroshot import TextClass

SETTINGS_POLL_S: Final = 2.0
"""How often a runner looks for a newer version of the live settings."""

Probability = Annotated[float, Field(ge=0, le=1)]


class ClassThresholds(BaseModel):
    """A threshold per contaminant class; a class left out keeps the bundle's."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    motor: Probability | None = None
    cable: Probability | None = None
    spray_can: Probability | None = None


assert tuple(ClassThresholds.model_fields) == ANOMALY_CLASSES, "one field per class"


class LiveSettings(BaseModel):
    """What an admin may change while frames go on.

    What is left out keeps the bundle's or the service's own value.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    class_thresholds: ClassThresholds | None = Field(
        None,
        description="per contaminant class, the anomaly probability from which a cell is on "
        "(a class left out keeps the bundle's)",
        examples=[{"cable": 0.97}],
    )
    min_score: Probability | None = Field(
        None, description="instances scoring less are not reported (the bundle's if null)"
    )
    reject_score: Probability | None = Field(
        None, description="a frame whose strongest instance scores this or more is rejected"
    )
    cameras: dict[str, CameraBed] = Field(
        default_factory=dict,
        description="per camera, how its bed is found (in place of the service's setting)",
    )
    text_classes: tuple[TextClass, ...] | None = Field(
        None,
        description="the classes defined by text, in the order they were registered (changed "
        "through /v1/classes; null in a PUT keeps those registered)",
    )

    def thresholds(self) -> dict[str, float]:
        """The class thresholds given, by class name."""
        if self.class_thresholds is None:
            return {}
        return self.class_thresholds.model_dump(exclude_none=True)


class SettingsChange(BaseModel):
    """One version of the live settings: what it is, who made it and when, what it replaced."""

    version: int = Field(ge=1)
    at: float = Field(description="when (epoch seconds)")
    by: str = Field(description="the role of the key that made the change")
    settings: LiveSettings
    previous: LiveSettings = Field(description="the settings this version replaced")


def next_change(last: SettingsChange | None, settings: LiveSettings, by: str) -> SettingsChange:
    """The version that follows `last` (None: the first) with `settings`."""
    return SettingsChange(
        version=1 if last is None else last.version + 1,
        at=time.time(),
        by=by,
        settings=settings,
        previous=LiveSettings() if last is None else last.settings,
    )
