"""Descriptions of the classes in words (configs/descriptions.yaml), checked on load."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from common.classes import CLASS_NAMES
from training.config import read_yaml

NORMAL = CLASS_NAMES[0]
MAX_CHARS = 200
"""A description longer than this would not fit CLIP's 77 tokens."""


class DescriptionError(ValueError):
    """The descriptions file cannot be used; the message names the file and the problem."""


@dataclass(frozen=True, slots=True)
class Descriptions:
    """Per class (normal first, then the contaminants in CLASS_NAMES order), its texts."""

    texts: tuple[tuple[str, ...], ...]

    @property
    def flat(self) -> list[tuple[int, str]]:
        """Every (class index, description), class by class."""
        return [(k, t) for k, texts in enumerate(self.texts) for t in texts]


def load_descriptions(path: Path) -> Descriptions:
    """Read a descriptions file: a mapping of every class name to a list of texts."""
    data = read_yaml(path, DescriptionError)
    if not isinstance(data, dict):
        raise DescriptionError(f"{path}: must map each class name to a list of descriptions")
    problems = [f"unknown class {k!r}" for k in data if k not in CLASS_NAMES]
    out = []
    for name in CLASS_NAMES:
        texts = data.get(name)
        if not isinstance(texts, list) or not texts:
            problems.append(f"{name}: needs a list of at least one description")
            continue
        bad = [t for t in texts if not isinstance(t, str) or not t.strip() or len(t) > MAX_CHARS]
        if bad:
            problems.append(f"{name}: not a text of 1 to {MAX_CHARS} characters: {bad[0]!r}")
        out.append(tuple(str(t).strip() for t in texts))
    if problems:
        raise DescriptionError(f"{path}: " + "; ".join(problems))
    return Descriptions(tuple(out))
