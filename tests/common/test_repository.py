import json
import shutil
from pathlib import Path

import pytest

from common.repository import ACTIVE, Repository, RepositoryError, UnknownVersion

DEMO = Path(__file__).resolve().parents[2] / "models" / "demo"


def add(root: Path, name: str, version: str) -> Path:
    """The demo bundle as version `version` of model `name`."""
    folder = root / name / version
    shutil.copytree(DEMO, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["model"].update(
        name=name, version=version, created_at=f"2026-12-0{version[-1]}T00:00:00Z"
    )
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def test_versions_activations_and_rollbacks_are_kept_with_who_and_when(tmp_path):
    repo = Repository(tmp_path)
    repo.check()
    add(tmp_path, "yard", "v2")
    add(tmp_path, "yard", "v1")
    (tmp_path / "yard" / "notes").mkdir()  # not a bundle: left out
    assert [(v.name, v.version) for v in repo.versions()] == [("yard", "v1"), ("yard", "v2")]
    assert repo.active() is None and repo.state() == {"history": [], "log": []}

    repo.activate("yard", "v1", "admin")
    second = repo.activate("yard", "v2", "admin")
    assert repo.active() == second and (second.name, second.version, second.by) == (
        "yard",
        "v2",
        "admin",
    )
    back = repo.rollback("ops")
    assert (back.name, back.version) == ("yard", "v1") and repo.active() == back
    state = json.loads((tmp_path / ACTIVE).read_text())
    assert [(e["action"], e["version"], e["by"]) for e in state["log"]] == [
        ("activate", "v1", "admin"),
        ("activate", "v2", "admin"),
        ("rollback", "v1", "ops"),
    ]
    with pytest.raises(RepositoryError, match="no earlier version to roll back to"):
        repo.rollback("ops")
    assert repo.active() == back  # a refused rollback changes nothing


def test_unknown_versions_bad_names_and_a_broken_pointer_are_refused(tmp_path):
    repo = Repository(tmp_path)
    add(tmp_path, "yard", "v1")
    with pytest.raises(UnknownVersion, match="no model yard version v9"):
        repo.activate("yard", "v9", "admin")
    for name, version in [("..", "v1"), ("yard", "../../etc"), ("", "v1"), ("yard", "-v")]:
        with pytest.raises(RepositoryError, match="letters, digits"):
            repo.path(name, version)
    assert not (tmp_path / ACTIVE).exists()
    (tmp_path / ACTIVE).write_text("{not json")
    with pytest.raises(RepositoryError, match=f"{tmp_path / ACTIVE}: not readable JSON"):
        repo.active()
    (tmp_path / ACTIVE).write_text('{"history": {}}')
    with pytest.raises(RepositoryError, match="needs the lists history and log"):
        repo.check()
    with pytest.raises(RepositoryError, match="no such folder"):
        Repository(tmp_path / "none").check()
