"""Shared fixtures: synthetic data folders built once per test run."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from training.config import RunConfig, load_config
from training.synth import write_dataset

CONFIGS = Path(__file__).resolve().parents[1] / "configs"

# OpenVINO imports absl.logging when absl is installed (tensorboard brings it here), and
# absl's handler closes the stream it was made with when logging shuts its handlers down
# (uvicorn's logging set-up does), unless that stream is still sys.stderr: under pytest's
# capture it is the capture's, which then breaks pytest's output. Point it at the real
# stderr, which it leaves open.
if importlib.util.find_spec("absl") is not None:
    import absl.logging

    absl.logging.get_absl_handler().python_handler.stream = sys.__stderr__

SMALL = (1280, 720)  # a third of 4K: same scenes, faster tests


def _has_gpu() -> bool:
    import importlib.util

    import torch

    return torch.cuda.is_available() or importlib.util.find_spec("tensorrt") is not None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip `gpu` tests without a GPU, and `no_gpu` tests (they check what a CPU-only
    machine says) on a machine with CUDA or TensorRT."""
    gpu = _has_gpu()
    for item in items:
        if "gpu" in item.keywords and not gpu:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA device"))
        if "no_gpu" in item.keywords and gpu:
            item.add_marker(pytest.mark.skip(reason="checks a machine without CUDA or TensorRT"))


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Eight synthetic frames at 1280x720, seed 7 (COCO layout with masks/)."""
    out = tmp_path_factory.mktemp("synth")
    write_dataset(out, frames=8, seed=7, width=SMALL[0], height=SMALL[1], workers=2)
    return out


@pytest.fixture(scope="session")
def tiny_config() -> RunConfig:
    """configs/tiny.yaml: the tiny CLIP with random weights."""
    return load_config(CONFIGS / "tiny.yaml")


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory, tiny_config: RunConfig) -> Path:
    """A scrapscan-train checkpoint of the tiny model as built after torch.manual_seed(0)."""
    import schedulefree
    import torch

    from training.checkpoint import Position, save_checkpoint
    from training.model import build_model

    torch.manual_seed(0)
    model = build_model(tiny_config.model).eval()
    opt = schedulefree.AdamWScheduleFree([p for p in model.parameters() if p.requires_grad])
    opt.eval()
    path = tmp_path_factory.mktemp("run") / "checkpoint.pt"
    save_checkpoint(path, model, opt, Position(1, 0, 3), tiny_config)
    return path


class Child:
    """A process a test starts; stop() asks it to end (SIGTERM), kill() does not ask."""

    proc: subprocess.Popen[bytes] | None = None
    stop_s = 10.0
    """How long stop() waits for it to end."""

    def _signal(self, proc: subprocess.Popen[bytes]) -> None:
        proc.kill()

    def kill(self) -> None:
        """SIGKILL: no shutdown, no final save (what a crash or lost node does)."""
        if self.proc is not None:
            self._signal(self.proc)
            self.proc.wait(timeout=10)
            self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=self.stop_s)
            self.proc = None


class RedisServer(Child):
    """A redis-server of its own on a free port, with the deployed settings (deploy/redis.conf:
    AOF, fsync always); kill() and start() again keep its data folder, as a restart does."""

    def __init__(self, folder: Path) -> None:
        from service.local import free_port

        server = shutil.which("redis-server")
        if server is None:
            pytest.fail(
                "redis-server is not installed: `make test` installs it "
                "(scripts/ensure-test-tools.sh), or apt-get install redis-server"
            )
        self.server = server
        self.folder = folder
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        import redis

        args = ["--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.folder)]
        self.proc = subprocess.Popen(
            [self.server, str(REDIS_CONF), *args],
            stdout=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port)
        for _ in range(200):
            try:
                client.ping()
                return
            except redis.ConnectionError:
                time.sleep(0.05)
        self.kill()
        pytest.fail("redis-server did not start")


REDIS_CONF = Path(__file__).resolve().parents[1] / "deploy" / "redis.conf"


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real redis-server (deploy/redis.conf) shared by the session's tests."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server.url
    server.stop()


@pytest.fixture(scope="session")
def s3_url() -> Iterator[str]:
    """An S3 protocol server over HTTP for the session: moto's (a dev dependency), as a
    stand-in for MinIO, whose binary cannot be installed here. Any credentials pass."""
    import os
    import sys

    import httpx

    from service.local import free_port

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            httpx.get(f"{url}/moto-api/")
            break
        except httpx.HTTPError:
            time.sleep(0.05)
    else:
        proc.kill()
        pytest.fail("the moto S3 server did not start")
    keys = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"}
    saved = {k: os.environ.get(k) for k in keys}
    os.environ.update(keys)  # boto3 needs some; the subprocesses of tests inherit them
    yield url
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture(scope="session")
def region_checkpoint(synth_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A region encoder (configs/region-tiny.yaml at 56 px) trained for 4 steps."""
    import yaml

    from training.region.train import main

    folder = tmp_path_factory.mktemp("region")
    cfg = yaml.safe_load((CONFIGS / "region-tiny.yaml").read_text())
    cfg["model"]["tiny_config"]["vision_cfg"]["image_size"] = 56
    cfg["model"]["input_size"] = 56
    cfg["train"].update(epochs=1, batch_size=4)
    (folder / "region.yaml").write_text(yaml.safe_dump(cfg))
    argv = ["--config", str(folder / "region.yaml"), "--data", str(synth_dir)]
    assert main(["train", *argv, "--out", str(folder / "run"), "--max-steps", "4"]) == 0
    return folder / "run" / "checkpoint.pt"


IAPAS_WORDS = [  # the tiny Grounding DINO's BERT vocabulary
    "[PAD]",
    "[UNK]",
    "[CLS]",
    "[SEP]",
    "[MASK]",
    ".",
    "a",
    "an",
    "of",
    "electric",
    "motor",
    "cable",
    "wire",
    "spray",
    "aerosol",
    "can",
    "among",
    "abnormal",
    "object",
    "defect",
    "steel",
    "plate",
    "beam",
    "rebar",
    "scrap",
    "metal",
    "pipe",
    "with",
    "copper",
    "windings",
]


@pytest.fixture(scope="session")
def iapas_weights(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny random Grounding DINO and SAM, written as save_pretrained writes them."""
    import torch
    from transformers import (
        BertConfig,
        BertTokenizer,
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        GroundingDinoImageProcessor,
        GroundingDinoProcessor,
        SamConfig,
        SamImageProcessor,
        SamModel,
        SamProcessor,
        SwinConfig,
    )

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("iapas")
    vocab = root / "vocab.txt"
    vocab.write_text("\n".join(IAPAS_WORDS))
    dino = GroundingDinoForObjectDetection(
        GroundingDinoConfig(
            backbone_config=SwinConfig(
                embed_dim=16,
                depths=[1, 1, 1, 1],
                num_heads=[1, 1, 1, 1],
                window_size=7,
                out_features=["stage2", "stage3", "stage4"],
            ),
            text_config=BertConfig(
                vocab_size=len(IAPAS_WORDS),
                hidden_size=32,
                num_hidden_layers=1,
                num_attention_heads=2,
                intermediate_size=64,
            ),
            d_model=32,
            encoder_layers=1,
            decoder_layers=2,
            encoder_attention_heads=2,
            decoder_attention_heads=2,
            encoder_ffn_dim=64,
            decoder_ffn_dim=64,
            num_queries=12,
            encoder_n_points=2,
            decoder_n_points=2,
        )
    )
    processor = GroundingDinoProcessor(
        image_processor=GroundingDinoImageProcessor(
            size={"shortest_edge": 224, "longest_edge": 320}
        ),
        tokenizer=BertTokenizer(str(vocab)),
    )
    dino.save_pretrained(root / "dino")
    processor.save_pretrained(root / "dino")
    sam = SamModel(
        SamConfig(
            vision_config={
                "hidden_size": 32,
                "num_hidden_layers": 1,
                "num_attention_heads": 2,
                "mlp_dim": 64,
                "image_size": 256,
                "patch_size": 16,
                "output_channels": 16,
                "global_attn_indexes": [0],
                "window_size": 4,
                "num_pos_feats": 8,
            },
            prompt_encoder_config={"hidden_size": 16, "image_size": 256, "patch_size": 16},
            mask_decoder_config={
                "hidden_size": 16,
                "num_hidden_layers": 1,
                "num_attention_heads": 2,
                "mlp_dim": 32,
                "iou_head_hidden_dim": 16,
            },
        )
    )
    sam.save_pretrained(root / "sam")
    SamProcessor(
        image_processor=SamImageProcessor(
            size={"longest_edge": 256}, pad_size={"height": 256, "width": 256}
        )
    ).save_pretrained(root / "sam")
    return {"grounding_dino": root / "dino", "sam": root / "sam"}
