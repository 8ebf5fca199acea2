import pytest
from pydantic import ValidationError

from service.settings import Settings


def test_defaults_env_and_file(tmp_path, monkeypatch):
    assert Settings().bundle.name == "demo" and Settings().batch.max_batch == 8
    f = tmp_path / "settings.yaml"
    f.write_text(
        "workers: 3\n"
        "batch: {max_batch: 16}\n"
        "cameras:\n  crane-2: {bed: polygon, polygon: [[0.1, 0.1], [0.9, 0.1], [0.5, 0.9]]}\n"
    )
    monkeypatch.setenv("SCRAPSCAN_SETTINGS_FILE", str(f))
    monkeypatch.setenv("SCRAPSCAN_WORKERS", "5")  # the environment wins over the file
    monkeypatch.setenv("SCRAPSCAN_BATCH__MAX_WAIT_MS", "25")
    s = Settings()
    assert s.workers == 5 and s.batch.max_batch == 16 and s.batch.max_wait_ms == 25
    assert s.bed_for("crane-2").bed == "polygon" and s.bed_for("crane-9").bed == "auto"


def test_secrets_are_masked():
    s = Settings(redis_url="redis://:hunter2@redis.plant:6379/1")
    assert s.public()["redis_url"] == "redis://***@redis.plant:6379"
    assert "hunter2" not in repr(s) and "hunter2" not in str(s.public())


@pytest.mark.parametrize(
    ("env", "value", "field"),
    [
        ("SCRAPSCAN_WORKERS", "0", "workers"),
        ("SCRAPSCAN_ENGINE", "tpu", "engine"),
        ("SCRAPSCAN_CAMERAS", '{"c": {"bed": "polygon"}}', "needs polygon"),
        ("SCRAPSCAN_MAX_UPLOAD_BYTES", "lots", "max_upload_bytes"),
    ],
)
def test_wrong_settings_name_the_field(monkeypatch, env, value, field):
    monkeypatch.setenv(env, value)
    with pytest.raises(ValidationError, match=field):
        Settings()


def test_serve_refuses_a_bad_bundle_naming_it(tmp_path, capsys):
    from service.cli import main

    assert main(["--bundle", str(tmp_path)]) == 1
    assert f"{tmp_path}/manifest.json: no such file" in capsys.readouterr().err


def test_a_json_settings_file_is_read_and_a_wrong_one_is_named(tmp_path, monkeypatch):
    f = tmp_path / "settings.json"
    f.write_text('{"workers": 4, "reject_score": 0.7}')
    monkeypatch.setenv("SCRAPSCAN_SETTINGS_FILE", str(f))
    assert (Settings().workers, Settings().reject_score) == (4, 0.7)
    f.write_text("- workers\n- 4\n")
    with pytest.raises(ValueError, match=r"settings.json: the settings file must hold a mapping"):
        Settings()
    monkeypatch.setenv("SCRAPSCAN_SETTINGS_FILE", str(tmp_path / "typo.yaml"))
    with pytest.raises(ValueError, match=r"typo.yaml: SCRAPSCAN_SETTINGS_FILE names no file"):
        Settings()
    f.write_text("")  # an empty file: no settings
    monkeypatch.setenv("SCRAPSCAN_SETTINGS_FILE", str(f))
    assert Settings().workers == Settings.model_fields["workers"].default
