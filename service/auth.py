"""API keys with roles.

SCRAPSCAN_API_KEYS_FILE names a JSON file mapping each role to the sha256 hex digests of
its keys (the keys themselves are never stored):

    {"camera": ["9f86d0..."], "dashboard": [], "operator": ["..."], "admin": ["..."]}

A digest is made with `printf %s "$KEY" | sha256sum`. Clients send
`Authorization: Bearer <key>`. The presented key's digest is compared with every digest
in the file in constant time. The file is read again when it changes (looked at no more
than once a second) and on SIGHUP, so keys rotate without a restart; a file that turns
invalid is reported in the log and the keys in force stay.

What each role may do (admin may do everything):
    camera     POST /v1/frames
    dashboard  read frames, their files and feedback, the results feed and its stream,
               the service's status, truck reports and the truck list
    operator   what dashboard reads but the feed, and give feedback (a frame's instances,
               a truck's decision)
    admin      all of the above, GET /v1/config and the feedback export
/healthz, /readyz, /metrics and the OpenAPI docs need no key (probes and Prometheus
reach them inside the plant network; the network policy keeps them there).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import re
import threading
import time
from pathlib import Path
from typing import Literal

log = logging.getLogger("scrapscan.auth")

Role = Literal["camera", "dashboard", "operator", "admin"]
ROLES: tuple[Role, ...] = ("camera", "dashboard", "operator", "admin")
Permission = Literal["submit", "frames", "feed", "reports", "feedback", "config", "export"]
ACCESS: dict[Permission, frozenset[Role]] = {
    "submit": frozenset({"camera", "admin"}),
    "frames": frozenset({"dashboard", "operator", "admin"}),
    "feed": frozenset({"dashboard", "admin"}),
    "reports": frozenset({"dashboard", "operator", "admin"}),
    "feedback": frozenset({"operator", "admin"}),
    "config": frozenset({"admin"}),
    "export": frozenset({"admin"}),
}
HEX64 = re.compile(r"^[0-9a-f]{64}$")


class KeysFileError(ValueError):
    """The keys file cannot be used; the message names the file and the problem."""


def load_keys(path: Path) -> dict[Role, tuple[bytes, ...]]:
    """Read and check a keys file: {role: [sha256 hex, ...]} with known roles only."""
    try:
        data = json.loads(path.read_text())
    except OSError as err:
        raise KeysFileError(f"{path}: cannot read the API keys file: {err.strerror}") from None
    except json.JSONDecodeError as err:
        raise KeysFileError(f"{path}: not JSON: {err}") from None
    if not isinstance(data, dict):
        raise KeysFileError(f"{path}: must be a JSON object mapping a role to a list of digests")
    unknown = sorted(set(data) - set(ROLES))
    if unknown:
        raise KeysFileError(f"{path}: unknown roles {unknown}; the roles are {list(ROLES)}")
    keys: dict[Role, tuple[bytes, ...]] = {}
    for role in ROLES:
        digests = data.get(role, [])
        if not isinstance(digests, list):
            raise KeysFileError(f"{path}: {role} must be a list of sha256 hex digests")
        for d in digests:
            if not isinstance(d, str) or not HEX64.match(d):
                raise KeysFileError(
                    f"{path}: {role}: {str(d)[:80]!r} is not a sha256 hex digest (64 lowercase "
                    "hex digits; printf %s KEY | sha256sum)"
                )
        keys[role] = tuple(bytes.fromhex(d) for d in digests)
    if not any(keys.values()):
        raise KeysFileError(f"{path}: holds no key at all")
    return keys


class KeyRing:
    """The keys in force, read again when their file changes."""

    def __init__(self, path: Path | None, check_every_s: float = 1.0) -> None:
        self.path = path
        self.check_every_s = check_every_s
        self._keys: dict[Role, tuple[bytes, ...]] = {}
        self._stamp: tuple[int, int, int] | None = None
        self._checked = 0.0
        self._lock = threading.Lock()
        if path is not None:
            self._keys = load_keys(path)
            self._stamp = _stamp(path)

    @property
    def enabled(self) -> bool:
        """False when no keys file is configured (every route is open)."""
        return self.path is not None

    def reload(self) -> bool:
        """Read the file again; on error keep the keys in force. True if the keys changed."""
        if self.path is None:
            return False
        try:
            keys = load_keys(self.path)
            stamp = _stamp(self.path)
        except (KeysFileError, OSError) as err:
            log.error("API keys not reloaded, the keys in force stay: %s", err)
            return False
        with self._lock:
            changed = keys != self._keys
            self._keys, self._stamp = keys, stamp
        if changed:
            log.info("API keys reloaded from %s", self.path)
        return changed

    def roles(self, key: str) -> frozenset[Role]:
        """The roles of a presented key (empty for an unknown key)."""
        self._maybe_reload()
        digest = hashlib.sha256(key.encode()).digest()
        found: set[Role] = set()
        with self._lock:
            keys = self._keys
        for role, digests in keys.items():  # every digest compared: no early exit
            for d in digests:
                if hmac.compare_digest(d, digest):
                    found.add(role)
        return frozenset(found)

    def _maybe_reload(self) -> None:
        if self.path is None:
            return
        now = time.monotonic()
        if now - self._checked < self.check_every_s:
            return
        self._checked = now
        try:
            stamp = _stamp(self.path)
        except OSError:
            stamp = None
        if stamp != self._stamp:
            self.reload()


def allowed(roles: frozenset[Role], permission: Permission) -> bool:
    """Whether any of the roles grants the permission."""
    return bool(roles & ACCESS[permission])


def _stamp(path: Path) -> tuple[int, int, int]:
    st = os.stat(path)  # follows the symlinks a mounted Kubernetes Secret is made of
    return st.st_mtime_ns, st.st_size, st.st_ino
