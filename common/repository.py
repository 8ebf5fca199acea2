"""The model repository: bundles by name and version, and which one is served.

    REPO/<name>/<version>/manifest.json ...   a bundle (scrapscan-export --repository)
    REPO/active.json                          the version served, and how it came to be

active.json holds `history`, the activations in force oldest first (the last one is
served; a rollback takes the last one off), `shadow`, the candidate version scoring a
share of the live frames beside the served one (service/shadow.py; absent or null when
none does) and `log`, every activation, rollback and shadow started or stopped with who
asked and when (the audit trail, newest last). It is replaced atomically, so a reader
never sees half of it. A version folder is never changed once written: a new model is a
new version.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from common.bundle import MANIFEST, BundleError, load_bundle, read_manifest

ACTIVE: Final = "active.json"
NAME: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
"""A model's name or version: a folder name, nothing that climbs out of the repository."""
LOG_LIMIT: Final = 200
"""Entries of the audit log kept in active.json (the oldest go first)."""


class RepositoryError(ValueError):
    """The repository cannot do what was asked; the message says why."""


class UnknownVersion(RepositoryError):
    """No such name and version in the repository."""


@dataclass(frozen=True, slots=True)
class Version:
    """One bundle of the repository."""

    name: str
    version: str
    path: Path
    created_at: str


@dataclass(frozen=True, slots=True)
class Pointer:
    """The version served: which, since when (epoch seconds), on whose word."""

    name: str
    version: str
    at: float
    by: str

    def as_dict(self) -> dict[str, Any]:
        """For active.json and the API."""
        return {"name": self.name, "version": self.version, "at": self.at, "by": self.by}


@dataclass(frozen=True, slots=True)
class Shadow:
    """The candidate scoring a share of the live frames beside the served version."""

    name: str
    version: str
    share: float
    """Of the frames, those picked to score too (service.shadow.picked), 0 < share <= 1."""
    at: float
    by: str

    def as_dict(self) -> dict[str, Any]:
        """For active.json and the API."""
        return {
            "name": self.name,
            "version": self.version,
            "share": self.share,
            "at": self.at,
            "by": self.by,
        }


class Repository:
    """A model repository folder."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def check(self) -> None:
        """RepositoryError unless the folder exists and active.json, if any, reads."""
        if not self.root.is_dir():
            raise RepositoryError(f"{self.root}: no such folder (a model repository)")
        self._state()

    def folder(self, name: str, version: str) -> Path:
        """Where a version's bundle lives (it may not exist yet)."""
        for what, value in (("name", name), ("version", version)):
            if not NAME.match(value):
                raise RepositoryError(
                    f"model {what} {value!r}: 1 to 64 letters, digits, '.', '_' or '-', "
                    "not starting with '.', '_' or '-'"
                )
        return self.root / name / version

    def free_folder(self, name: str, version: str) -> Path:
        """`folder`, refused (RepositoryError) when the repository holds that version already."""
        target = self.folder(name, version)
        if target.exists():
            raise RepositoryError(
                f"{target} exists: model {name} version {version} is in the "
                "repository already (a version is never replaced; export another)"
            )
        return target

    def path(self, name: str, version: str) -> Path:
        """The bundle folder of a version; UnknownVersion when it has none."""
        folder = self.folder(name, version)
        if not (folder / MANIFEST).is_file():
            raise UnknownVersion(f"{self.root}: no model {name} version {version}")
        return folder

    def versions(self) -> list[Version]:
        """Every bundle in the repository, oldest first (a folder that is none is skipped)."""
        found = []
        for manifest in sorted(self.root.glob(f"*/*/{MANIFEST}")):
            folder = manifest.parent
            try:
                m = read_manifest(folder)
            except BundleError:
                continue
            found.append(
                Version(folder.parent.name, folder.name, folder, m.model.created_at.isoformat())
            )
        return sorted(found, key=lambda v: (v.created_at, v.name, v.version))

    def add(self, bundle: Path, by: str, move: bool = False) -> tuple[Version, Pointer | None]:
        """Put the bundle folder `bundle` in as <name>/<version>, as its manifest says.

        Its files are checked first (BundleError names a wrong one); a version the
        repository holds already is refused (RepositoryError). Copied through a hidden
        folder beside the versions, or moved (`move`, a folder on the same file system
        that nobody needs after). The first version of a repository becomes the active
        one: then its Pointer is returned too.
        """
        self.check()
        m = load_bundle(bundle).manifest
        target = self.free_folder(m.model.name, m.model.version)
        incoming = self.root / f".incoming-{os.getpid()}-copy"
        try:
            if not move:
                shutil.copytree(bundle, incoming)
                bundle = incoming
            target.parent.mkdir(exist_ok=True)
            bundle.rename(target)
        finally:
            shutil.rmtree(incoming, ignore_errors=True)
        version = Version(m.model.name, m.model.version, target, m.model.created_at.isoformat())
        with self._locked():
            first = not self._state()["history"]
        return version, self.activate(version.name, version.version, by) if first else None

    def active(self) -> Pointer | None:
        """The version served, or None before the first activation."""
        history = self._state()["history"]
        return _pointer(history[-1]) if history else None

    def shadow(self) -> Shadow | None:
        """The candidate scoring beside the served version, or None."""
        entry = self._state().get("shadow")
        return None if not entry else _shadow(entry)

    def start_shadow(self, name: str, version: str, share: float, by: str) -> Shadow:
        """Score `share` of the frames with this version too (in place of any candidate)."""
        if not 0 < share <= 1:
            raise RepositoryError(f"shadow share {share}: more than 0, at most 1")
        self.path(name, version)
        with self._locked():
            state = self._state()
            plan = Shadow(name, version, share, time.time(), by)
            state["shadow"] = plan.as_dict()
            self._write(state, {"action": "shadow", **plan.as_dict()})
        return plan

    def stop_shadow(self, by: str) -> Shadow | None:
        """No candidate scores any more; the one that did, or None."""
        with self._locked():
            state = self._state()
            entry = state.get("shadow")
            if not entry:
                return None
            state["shadow"] = None
            was = _shadow(entry)
            event = {"action": "shadow_stop", **was.as_dict(), "at": time.time(), "by": by}
            self._write(state, event)
        return was

    def state(self) -> dict[str, Any]:
        """active.json as it stands (history and log), empty lists before any activation."""
        return self._state()

    def activate(self, name: str, version: str, by: str) -> Pointer:
        """Serve this version from now on (the one served before stays a rollback away).

        A candidate in shadow that is activated stops scoring in shadow.
        """
        self.path(name, version)
        with self._locked():
            state = self._state()
            now = Pointer(name, version, time.time(), by)
            state["history"].append(now.as_dict())
            events = [{"action": "activate", **now.as_dict()}]
            shadow = state.get("shadow")
            if shadow and (shadow["name"], shadow["version"]) == (name, version):
                state["shadow"] = None
                events.append({"action": "shadow_stop", **shadow, "at": now.at, "by": by})
            self._write(state, *events)
        return now

    def rollback(self, by: str) -> Pointer:
        """Serve again the version that was served before the current one."""
        with self._locked():
            state = self._state()
            if len(state["history"]) < 2:
                raise RepositoryError(f"{self.root}: no earlier version to roll back to")
            state["history"].pop()
            back = _pointer(state["history"][-1])
            self.path(back.name, back.version)  # still there
            event = {"action": "rollback", **back.as_dict(), "at": time.time(), "by": by}
            self._write(state, event)
        return back

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """One change at a time, across processes sharing the folder."""
        with (self.root / ".lock").open("a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def _state(self) -> dict[str, Any]:
        path = self.root / ACTIVE
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return {"history": [], "log": []}
        except (OSError, ValueError) as err:
            raise RepositoryError(f"{path}: not readable JSON ({err})") from None
        if (
            not isinstance(data, dict)
            or not isinstance(data.get("history"), list)
            or not isinstance(data.get("log"), list)
        ):
            raise RepositoryError(f"{path}: needs the lists history and log")
        return data

    def _write(self, state: dict[str, Any], *events: dict[str, Any]) -> None:
        state["log"] = [*state["log"], *events][-LOG_LIMIT:]
        tmp = self.root / f".{ACTIVE}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(state, indent=1))
        os.replace(tmp, self.root / ACTIVE)


def _shadow(entry: dict[str, Any]) -> Shadow:
    return Shadow(
        str(entry["name"]),
        str(entry["version"]),
        float(entry["share"]),
        float(entry["at"]),
        str(entry["by"]),
    )


def _pointer(entry: dict[str, Any]) -> Pointer:
    return Pointer(str(entry["name"]), str(entry["version"]), float(entry["at"]), str(entry["by"]))
