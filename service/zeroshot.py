"""Classes defined by text at run time: a new hazard by name and prompts, no training.

An admin registers a class (`POST /v1/classes`: a name, prompts such as "a photo of a gas
cylinder", optionally its own normal prompts and threshold). The definition is kept in the
live settings (service/live.py), so it survives restarts and every process serving frames
follows it. Each such process encodes the prompts with its bundle's text tower
(text.onnx and tokenizer.json, model_export.text): no torch. A class's feature is the
normalised mean of its prompts' features; the image graph scores it per patch against the
same stage tokens as the learned classes (its `zero_shot` output), and its map is merged
and cut into instances like theirs (service.stages), marked zero-shot.

With the random weights this project can train on, such a class cannot be accurate: what
is tested here is that the mechanism is exact (README, "Classes defined by text").
"""

from __future__ import annotations

import functools
import html
import threading
from dataclasses import dataclass
from typing import Annotated, Final

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from common.bundle import Bundle, ZeroShotInfo

MAX_PROMPTS_PER_CLASS: Final = 16
MAX_PROMPT_CHARS: Final = 200
DEFAULT_THRESHOLD: Final = 0.5
"""A cell belongs to the class when it is likelier the class than its normal prompts."""

Prompt = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_PROMPT_CHARS)
]
ClassName = Annotated[
    str,
    StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,39}$"),
    Field(
        description="lower case letters, digits and _, starting with a letter; not a class "
        "of the bundle",
        examples=["gas_cylinder"],
    ),
]


class TextClass(BaseModel):
    """A class defined by text: what it is called and how it is described."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: ClassName
    prompts: tuple[Prompt, ...] = Field(
        min_length=1,
        max_length=MAX_PROMPTS_PER_CLASS,
        description="descriptions of the class, as a photo caption would say it",
        examples=[["a photo of a gas cylinder.", "a steel gas bottle with a valve."]],
    )
    normal_prompts: tuple[Prompt, ...] | None = Field(
        None,
        max_length=MAX_PROMPTS_PER_CLASS,
        description="what it is told apart from (null: the bundle's normal prompts)",
    )
    threshold: float = Field(
        DEFAULT_THRESHOLD,
        ge=0,
        le=1,
        description="the probability of the class from which a cell is on",
    )


class PromptError(ValueError):
    """A prompt the text tower cannot read whole; the message names it."""


class TextTower:
    """The bundle's tokenizer and text tower: prompts -> normalised features."""

    def __init__(self, bundle: Bundle, threads: int = 0) -> None:
        from tokenizers import Tokenizer

        from service.engine import ort_session

        info = bundle.manifest.zero_shot
        if info is None:
            raise ValueError(f"{bundle.root}: the bundle has no text tower")
        self.info: ZeroShotInfo = info
        self._tokenizer = Tokenizer.from_file(str(bundle.path(info.tokenizer_file)))
        self._session = ort_session(bundle.path(info.text_file), "cpu", threads)
        self._lock = threading.Lock()
        self._end = self._tokenizer.token_to_id("<end_of_text>")

    def tokens(self, prompts: list[str]) -> npt.NDArray[np.int64]:
        """(P, context) ids as open_clip makes them; PromptError for one too long to keep whole."""
        n = self.info.context_length
        encoded = self._tokenizer.encode_batch([html.unescape(p) for p in prompts])
        out = np.zeros((len(prompts), n), np.int64)
        for k, (prompt, e) in enumerate(zip(prompts, encoded, strict=True)):
            if len(e.ids) > n:
                raise PromptError(
                    f"prompt {prompt[:40]!r}: {len(e.ids) - 2} tokens, the text tower reads {n - 2}"
                )
            out[k, : len(e.ids)] = e.ids
        return out

    def features(self, prompts: list[str]) -> npt.NDArray[np.float32]:
        """(P, D) each prompt's normalised feature."""
        ids = self.tokens(prompts)
        parts = []
        with self._lock:  # one session, called from request and runner threads
            for start in range(0, len(ids), self.info.max_prompts):
                chunk = ids[start : start + self.info.max_prompts]
                parts.append(self._session.run(["features"], {"tokens": chunk})[0])
        return np.asarray(np.concatenate(parts), np.float32)

    @functools.lru_cache(maxsize=256)  # noqa: B019 (one tower per bundle, kept while served)
    def class_feature(self, prompts: tuple[str, ...]) -> npt.NDArray[np.float32]:
        """(D,) the normalised mean of the prompts' features (CLIP's prompt ensemble)."""
        mean = self.features(list(prompts)).mean(axis=0)
        feature = np.asarray(mean / max(float(np.linalg.norm(mean)), 1e-12), np.float32)
        feature.flags.writeable = False
        return feature

    def rule(self, classes: tuple[TextClass, ...]) -> TextRule | None:
        """How a frame scores `classes` (the first `slots` of them); None when there are none."""
        used = classes[: self.info.slots]
        if not used:
            return None
        text = np.zeros((self.info.slots, 2, self.info.width), np.float32)
        for k, c in enumerate(used):
            text[k, 0] = self.class_feature(c.normal_prompts or self.info.normal_prompts)
            text[k, 1] = self.class_feature(c.prompts)
        text.flags.writeable = False
        return TextRule(
            tuple(c.name for c in used), tuple(c.threshold for c in used), text, len(classes)
        )


@dataclass(frozen=True, slots=True, eq=False)
class TextRule:
    """The text-defined classes a frame is scored with."""

    names: tuple[str, ...]
    thresholds: tuple[float, ...]
    text: npt.NDArray[np.float32]
    """(slots, 2, D) the graph's zero_shot_text input: slot k is names[k], the rest zeros."""
    registered: int
    """How many were registered (more than the slots: the rest are not scored)."""
