"""The deployment files pass their validators, and agree with the code and with each other."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from service.queue import FRAMES, GROUP
from service.settings import ObjectStoreSettings

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
K8S_BASE = ROOT / "k8s" / "base"
CRDS = {"ScaledObject"}  # custom resources: no schema in kubernetes-validate


def tool(name: str) -> str:
    path = BIN / name if (BIN / name).exists() else shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is missing: `make test` installs it")
    return str(path)


def run(*args: str) -> None:
    done = subprocess.run(args, capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, f"{' '.join(args)}:\n{done.stdout}{done.stderr}"


def docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


@pytest.mark.parametrize("dockerfile", sorted((ROOT / "docker").glob("*.Dockerfile")), ids=str)
def test_dockerfiles_pass_hadolint(dockerfile):
    run(tool("hadolint"), str(dockerfile))
    text = dockerfile.read_text()
    assert "USER 10001" in text and "HEALTHCHECK" in text  # non-root, health-checked
    assert ":latest" not in text


def test_compose_file_matches_the_compose_spec():
    run(tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", "docker-compose.yml")
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert set(services) == {"redis", "minio", "minio-bucket", "api", "worker", "prometheus"}
    assert "./deploy/redis.conf:/usr/local/etc/redis/redis.conf:ro" in services["redis"]["volumes"]
    gpu = services["worker"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["driver"] == "nvidia" and gpu["capabilities"] == ["gpu"]
    # both serve the model repository; the API writes its active.json, the worker reads
    assert "${SCRAPSCAN_MODELS_DIR:?set SCRAPSCAN_MODELS_DIR}:/models" in services["api"]["volumes"]
    assert (
        "${SCRAPSCAN_MODELS_DIR:?set SCRAPSCAN_MODELS_DIR}:/models:ro"
        in (services["worker"]["volumes"])
    )
    for name in ("api", "worker"):
        env = services[name]["environment"]
        assert env["SCRAPSCAN_STORE"] == "redis" and env["SCRAPSCAN_REPOSITORY"] == "/models"
        # the bucket the service is told of is the one made for it, on the MinIO beside it
        objects = ObjectStoreSettings.model_validate_json(env["SCRAPSCAN_OBJECTS"])
        assert f"yard/{objects.bucket}" in services["minio-bucket"]["command"][0]
        assert objects.endpoint_url == "http://minio:9000"
        assert services[name]["depends_on"]["minio-bucket"]["condition"] == (
            "service_completed_successfully"
        )


def test_prometheus_config_and_alert_rules_pass_promtool():
    promtool = tool("promtool")
    run(promtool, "check", "config", "deploy/prometheus/prometheus.yml")
    run(promtool, "check", "rules", "deploy/prometheus/alerts.yml")
    run(promtool, "test", "rules", "deploy/prometheus/alerts_test.yml")


def test_redis_persists_every_write_wherever_it_is_deployed():
    conf = (ROOT / "deploy" / "redis.conf").read_text()
    assert "appendonly yes" in conf and "appendfsync always" in conf
    assert (K8S_BASE / "redis.conf").read_text() == conf


K8S_FILES = sorted(
    p for p in K8S_BASE.glob("*.yaml") if p.name != "kustomization.yaml" and p.name != "keda.yaml"
)


@pytest.mark.parametrize("manifest", K8S_FILES, ids=lambda p: p.name)
def test_kubernetes_manifests_validate_strictly(manifest):
    run(tool("kubernetes-validate"), "--strict", "--quiet", str(manifest))


def test_kustomizations_name_files_that_exist_and_pods_are_locked_down():
    base = yaml.safe_load((K8S_BASE / "kustomization.yaml").read_text())
    for name in base["resources"] + base["configMapGenerator"][0]["files"]:
        assert (K8S_BASE / name).is_file(), name
    overlay_dir = ROOT / "k8s" / "overlays" / "gpu-host"
    overlay = yaml.safe_load((overlay_dir / "kustomization.yaml").read_text())
    assert (overlay_dir / overlay["resources"][0]).resolve() == K8S_BASE
    kinds = {(d["kind"], d["metadata"]["name"]) for p in K8S_FILES for d in docs(p)}
    for patch in overlay["patches"]:
        assert (overlay_dir / patch["path"]).is_file()
        assert (patch["target"]["kind"], patch["target"]["name"]) in kinds
    for p in K8S_FILES:
        for d in docs(p):
            if d["kind"] not in ("Deployment", "StatefulSet"):
                continue
            pod = d["spec"]["template"]["spec"]
            assert pod["securityContext"]["runAsNonRoot"] is True
            for c in pod["containers"]:
                sc = c["securityContext"]
                assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"]
                assert c["resources"]["requests"] and c["resources"]["limits"]
    worker = next(d for d in docs(K8S_BASE / "worker.yaml") if d["kind"] == "Deployment")
    container = worker["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert {"startupProbe", "readinessProbe", "livenessProbe"} <= set(container)


def test_kubernetes_api_and_workers_share_the_model_repository():
    (config, _) = docs(K8S_BASE / "config.yaml")
    assert config["data"]["SCRAPSCAN_REPOSITORY"] == "/models"
    worker = {d["kind"]: d for d in docs(K8S_BASE / "worker.yaml")}
    claim = worker["PersistentVolumeClaim"]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]  # the API writes active.json
    for name, read_only in (("api.yaml", False), ("worker.yaml", True)):
        pod = next(d for d in docs(K8S_BASE / name) if d["kind"] == "Deployment")["spec"]
        spec = pod["template"]["spec"]
        volume = next(v for v in spec["volumes"] if v["name"] == "models")
        assert volume["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
        mount = next(m for m in spec["containers"][0]["volumeMounts"] if m["name"] == "models")
        assert mount["mountPath"] == "/models" and mount.get("readOnly", False) is read_only


def test_kubernetes_api_and_workers_use_the_bucket_the_job_makes():
    (config, _) = docs(K8S_BASE / "config.yaml")
    objects = ObjectStoreSettings.model_validate_json(config["data"]["SCRAPSCAN_OBJECTS"])
    minio = {d["kind"]: d for d in docs(K8S_BASE / "minio.yaml")}
    assert (
        f"yard/{objects.bucket}"
        in minio["Job"]["spec"]["template"]["spec"]["containers"][0]["args"][0]
    )
    assert objects.endpoint_url == f"http://{minio['Service']['metadata']['name']}:9000"
    secret = minio["Secret"]["metadata"]["name"]
    for name in ("api.yaml", "worker.yaml"):
        deployment = next(d for d in docs(K8S_BASE / name) if d["kind"] == "Deployment")
        sources = deployment["spec"]["template"]["spec"]["containers"][0]["envFrom"]
        assert {"secretRef": {"name": secret}} in sources


def test_keda_scales_workers_on_the_stream_the_workers_read():
    (scaled,) = docs(K8S_BASE / "keda.yaml")
    assert scaled["kind"] in CRDS
    trigger = scaled["spec"]["triggers"][0]
    assert trigger["type"] == "redis-streams"
    assert trigger["metadata"]["stream"] == FRAMES
    assert trigger["metadata"]["consumerGroup"] == GROUP
    assert int(trigger["metadata"]["lagCount"]) > 0
    assert scaled["spec"]["scaleTargetRef"]["name"] == "scrapscan-worker"


BLOCKED_API_IMPORTS = """
import sys
class Block:
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in ("onnxruntime", "torch", "torchvision", "training",
                                  "model_export", "open_clip"):
            raise ImportError("not in the API image: " + name)
sys.meta_path.insert(0, Block())
from fastapi.testclient import TestClient
from service.app import create_app
from service.settings import Settings
app = create_app(Settings(store="redis", redis_url=sys.argv[1]))
with TestClient(app) as client:
    assert client.get("/readyz").json() == {"status": "ready"}
print("ok")
"""


def test_the_api_image_needs_no_model_runtime(redis_url):
    """docker/api.Dockerfile installs .[serve] only: the API must run without them."""
    done = subprocess.run(
        [sys.executable, "-c", BLOCKED_API_IMPORTS, redis_url],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
    assert '".[serve]"' in (ROOT / "docker" / "api.Dockerfile").read_text()
    assert '".[serve,gpu]"' in (ROOT / "docker" / "worker.Dockerfile").read_text()


def test_readme_commands_table_lists_every_console_script():
    """One table (a blank line would end it), one row per script, each module runnable."""
    import importlib.util
    import re
    import tomllib

    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    section = (ROOT / "README.md").read_text().split("\n## Commands\n", 1)[1].split("\n## ", 1)[0]
    tables = [t for t in section.split("\n\n") if t.startswith("| command |")]
    assert len(tables) == 1
    rows = tables[0].splitlines()[2:]
    assert all(r.startswith("| `scrapscan-") for r in rows), rows
    names = [re.match(r"\| `(scrapscan-[a-z-]+)", r).group(1) for r in rows]
    assert sorted(names) == sorted(scripts)
    for row in rows:
        module = re.search(r"\| `([a-z_.]+)` \|", row).group(1)
        assert importlib.util.find_spec(module) is not None, module


def test_imports_go_one_way_and_a_back_import_breaks_the_contracts(tmp_path):
    """lint-imports (make lint) keeps its contracts here, and fails on a tree with the
    service importing training, or with a frame's work importing the web framework."""
    packages = ("common", "training", "model_export", "service", "tools")
    for name in packages:
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    lint = Path(sys.executable).with_name("lint-imports")

    def run(where):
        env = {**os.environ, "PYTHONPATH": str(where)}
        return subprocess.run([lint], cwd=where, env=env, capture_output=True, text=True)

    kept = run(ROOT)
    assert kept.returncode == 0, kept.stdout[-2000:]
    assert "5 kept, 0 broken" in kept.stdout
    stages = tmp_path / "service" / "stages.py"
    stages.write_text(stages.read_text() + "\nimport training.metrics  # noqa: E402\n")
    runner = tmp_path / "service" / "runner.py"
    runner.write_text(runner.read_text() + "\nimport fastapi  # noqa: E402\n")
    broken = run(tmp_path)
    assert broken.returncode != 0
    assert "the service imports only common BROKEN" in broken.stdout
    assert "service.stages -> training.metrics" in broken.stdout
    assert "no HTTP type below the API layer BROKEN" in broken.stdout
    assert "service.runner -> fastapi" in broken.stdout
