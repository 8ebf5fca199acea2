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


def test_a_shadow_candidate_is_kept_logged_and_ended_by_its_activation(tmp_path):
    repo = Repository(tmp_path)
    for v in ("v1", "v2", "v3"):
        add(tmp_path, "yard", v)
    repo.activate("yard", "v1", "setup")
    assert repo.shadow() is None and repo.stop_shadow("admin") is None
    for share in (0, -0.1, 1.5):
        with pytest.raises(RepositoryError, match="more than 0, at most 1"):
            repo.start_shadow("yard", "v2", share, "admin")
    with pytest.raises(UnknownVersion):
        repo.start_shadow("yard", "v9", 0.5, "admin")
    plan = repo.start_shadow("yard", "v2", 0.25, "admin")
    assert repo.shadow() == plan and (plan.version, plan.share, plan.by) == ("v2", 0.25, "admin")
    assert repo.start_shadow("yard", "v3", 1.0, "ops").version == "v3"  # in place of v2
    stopped = repo.stop_shadow("ops")
    assert stopped is not None and (stopped.version, stopped.share) == ("v3", 1.0)
    assert repo.shadow() is None
    repo.start_shadow("yard", "v2", 0.5, "admin")
    repo.activate("yard", "v3", "admin")  # another version: the candidate stays
    assert repo.shadow() is not None and repo.shadow().version == "v2"
    repo.activate("yard", "v2", "admin")  # the candidate itself: its shadow ends
    assert repo.shadow() is None
    assert [(e["action"], e["version"]) for e in repo.state()["log"]] == [
        ("activate", "v1"),
        ("shadow", "v2"),
        ("shadow", "v3"),
        ("shadow_stop", "v3"),
        ("shadow", "v2"),
        ("activate", "v3"),
        ("activate", "v2"),
        ("shadow_stop", "v2"),
    ]
