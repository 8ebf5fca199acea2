"""Service settings: environment variables prefixed SCRAPSCAN_ and an optional file.

Read once at start. Precedence: environment, then the settings file
(SCRAPSCAN_SETTINGS_FILE, YAML or JSON), then the defaults below. Nested values come
from the environment as JSON (SCRAPSCAN_CAMERAS='{"cam-1": {"bed": "polygon", ...}}')
or with a double underscore (SCRAPSCAN_BATCH__MAX_BATCH=16).
"""

from __future__ import annotations

import os
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
"""camera_id and truck_id: letters, digits, dot, dash, underscore; 1 to 64; no path characters."""


Fraction = Annotated[float, Field(ge=0, le=1)]
"""A share of the frame's width or height."""


class CameraBed(BaseModel):
    """How the truck bed is found in one camera's frames."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    bed: Literal["auto", "full", "polygon", "learned"] = "auto"
    """"auto": "learned" when the bundle has a bed model, else "full"; "full": the whole
    frame; "polygon": a fixed bed outline (the camera does not move); "learned": the
    bundle's bed model finds the bed in each frame (trucks park anywhere)."""
    polygon: Annotated[tuple[tuple[Fraction, Fraction], ...], Field(min_length=3)] | None = None
    """Bed corners as (x, y) fractions of the frame width and height, for bed: polygon
    (at least 3)."""

    def model_post_init(self, _: Any) -> None:
        """A polygon strategy needs its polygon."""
        if self.bed == "polygon" and self.polygon is None:
            raise ValueError("bed: polygon needs polygon: [[x, y], ...]")


class BatchSettings(BaseModel):
    """The dynamic batcher: tiles of many frames share engine batches."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_batch: Annotated[int, Field(ge=1, le=1024)] = 8
    max_wait_ms: Annotated[float, Field(ge=0, le=10_000)] = 10.0
    """How long the first tile of a batch waits for more tiles."""


class QueueSettings(BaseModel):
    """The frame queue: backpressure in both modes; with store redis, the workers' stream."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_backlog: Annotated[int, Field(ge=1)] = 500
    """Frames accepted and not yet ended; beyond it POST /v1/frames answers 429."""
    retry_after_s: Annotated[int, Field(ge=1, le=3600)] = 5
    """The Retry-After of a 429 (and of a 503 while Redis is unreachable)."""
    claim_idle_s: Annotated[float, Field(gt=0, le=86_400)] = 60.0
    """A frame held this long by a worker that stopped answering is taken over by another.
    Live workers renew their frames every third of it, so it need not exceed a frame's time."""
    max_frame_s: Annotated[float, Field(gt=0, le=86_400)] = 300.0
    """A worker stops renewing a frame it has worked on this long (another worker takes it
    over) and its /healthz fails, so that a hung worker is restarted."""
    max_attempts: Annotated[int, Field(ge=1, le=100)] = 3
    """Tries at a frame before it is marked failed (with Redis, also put on the dead-letter
    stream); a frame that cannot be decoded fails at once."""
    block_ms: Annotated[int, Field(ge=10, le=4000)] = 1000
    """How long a worker's read waits for new frames before it looks for stalled ones."""


class ObjectStoreSettings(BaseModel):
    """With store redis: an S3-compatible bucket for uploads, masks and overlays.

    Redis then holds only records and queues (service/objects.py). Credentials: the usual
    AWS environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY) or the host's role.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    bucket: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")]
    """The bucket (it must exist: the service checks at start)."""
    prefix: Annotated[str, Field(max_length=256, pattern=r"^([A-Za-z0-9._-]+/)*$")] = ""
    """Keys start with this folder (e.g. "yard-1/"), so that yards can share a bucket."""
    endpoint_url: Annotated[str, Field(pattern=r"^https?://")] | None = None
    """MinIO or another S3-compatible server (http://minio:9000); None: AWS S3."""
    region: str | None = None


class UploadKeeping(BaseModel):
    """Which uploads are kept result_ttl_s after their frame ends (retraining needs them).

    The rest go upload_ttl_s after it. Frames with feedback are always kept.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    flagged: bool = True
    """Frames whose verdict is inspect or reject."""
    clean_share: Annotated[float, Field(ge=0, le=1)] = 0.02
    """This share of the clean frames, chosen by frame id (uniform, and the same answer on
    every process)."""

    def keeps(self, frame_id: str, verdict: str | None) -> bool:
        """Whether this frame's upload is kept as long as its result."""
        if verdict in ("inspect", "reject") and self.flagged:
            return True
        return verdict == "clean" and int(frame_id[:8], 16) < self.clean_share * 16**8


class Settings(BaseSettings):
    """Everything the service reads at start (GET /v1/config shows it, secrets masked)."""

    model_config = SettingsConfigDict(
        env_prefix="SCRAPSCAN_", env_nested_delimiter="__", extra="forbid", frozen=True
    )

    bundle: Path = REPO_ROOT / "models" / "demo"
    """The model bundle folder (when no repository is given)."""
    repository: Path | None = None
    """A model repository (common/repository.py): its active version is served, and
    POST /v1/admin/bundles/active and /v1/admin/bundles/rollback change it while frames go on."""
    repository_poll_s: Annotated[float, Field(gt=0, le=3600)] = 2.0
    """How often a process serving from a repository looks at it besides the changes the
    API announces through Redis (a worker that missed one still follows)."""
    data_dir: Path = Path("data")
    """Uploads, masks, overlays and the SQLite store."""
    store: Literal["sqlite", "redis"] = "sqlite"
    redis_url: SecretStr = SecretStr("redis://localhost:6379/0")
    result_ttl_s: Annotated[int, Field(ge=60)] = 7 * 86400
    """Uploads, results, masks and overlays are kept this long after a frame ends (7 days);
    then only what truck reports need of the frame stays."""
    report_ttl_s: Annotated[int, Field(ge=60)] = 90 * 86400
    """Truck reports are kept this long (90 days)."""
    upload_ttl_s: Annotated[int, Field(ge=0)] = 3600
    """An upload that keep_uploads does not keep is kept this long after its frame ends (1
    hour), for operators to judge the frame; feedback keeps it with the frame for good."""
    keep_uploads: UploadKeeping = UploadKeeping()
    objects: ObjectStoreSettings | None = None
    """With store redis: the bucket for uploads, masks and overlays (a 4K JPEG is 1 to 3 MB;
    a week of 8 cameras does not fit in Redis memory). None: Redis keeps them."""
    engine: Literal["auto", "onnxruntime", "openvino", "tensorrt", "torch", "iap-as"] = "auto"
    """auto: TensorRT or PyTorch on a GPU; on the CPU the faster of ONNX Runtime and
    OpenVINO, timed at load. iap-as: the zero-shot IAP-AS pipeline in place of the bundle's
    model, under `scrapscan-iap-as serve|worker` (tools/iapas_serve.py), which plugs it in."""
    precision: Literal["auto", "fp32", "fp16", "bf16"] = "auto"
    """Which ONNX file the ONNX Runtime engine loads (fp16 pays on GPUs only; else fp32),
    and the precision OpenVINO runs at when it keeps parity with fp32 (auto: bf16 where
    the CPU has it); fp32 for exact fp32 everywhere."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: Annotated[int, Field(ge=0)] = 0
    """CPU threads of the engine; 0 lets the runtime choose."""
    workers: Annotated[int, Field(ge=1, le=64)] = 2
    """Frames processed at once by the embedded worker or by each scrapscan-worker (their
    tiles share engine batches)."""
    batch: BatchSettings = BatchSettings()
    queue: QueueSettings = QueueSettings()
    map_stride: Annotated[int, Field(ge=1, le=8)] = 4
    """Anomaly maps are merged and thresholded with one cell per stride x stride frame
    pixels (the model sees about 14 frame pixels per cell of its 37 x 37 grid); 1 works at
    full resolution, 16 times slower at merge and postprocess. mask.png is full size
    either way."""
    overlay_max_side: Annotated[int, Field(ge=256, le=16384)] = 1920
    """overlay.jpg is scaled down to this many pixels on its longer side (a 4K frame's
    overlay is 1920x1080): what a dashboard shows, at a quarter of the drawing cost."""
    max_upload_bytes: Annotated[int, Field(ge=1024)] = 40 * 1024 * 1024
    max_pixels: Annotated[int, Field(ge=64 * 64)] = 8192 * 8192
    cameras: dict[str, CameraBed] = {}
    """Per camera_id; cameras not listed use default_bed."""
    default_bed: CameraBed = CameraBed()
    reject_score: Annotated[float, Field(ge=0, le=1)] | None = None
    """A frame whose strongest instance scores this or more is "reject"; below, "inspect".
    None: the bundle's calibrated reject score, else 0.8."""
    max_text_classes: Annotated[int, Field(ge=0, le=64)] = 4
    """Classes defined by text (POST /v1/classes) an admin may register; a bundle scores as
    many as its text-class slots (scrapscan-export --zero-shot-slots, 4 by default)."""
    wait_timeout_s: Annotated[float, Field(gt=0, le=600)] = 60.0
    """How long POST /v1/frames?wait=true waits for the result before answering 202."""
    api_keys_file: Path | None = None
    """JSON: role -> sha256 hex digests of its keys (service/auth.py). None: no keys, which
    scrapscan-serve allows only when bound to localhost."""
    cors_origins: tuple[str, ...] = ()
    """Browser origins allowed to call the API (a dashboard on another host); none by default."""

    def model_post_init(self, _: Any) -> None:
        """A bucket serves the scaled-out shape only."""
        if self.objects is not None and self.store != "redis":
            raise ValueError(
                "objects (a bucket) needs store redis; the embedded store keeps files on disk"
            )

    @field_validator("map_stride")
    @classmethod
    def _divides_tiles(cls, v: int) -> int:
        if v not in (1, 2, 4, 8):
            raise ValueError("map_stride is 1, 2, 4 or 8 (it must divide the tile geometry)")
        return v

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Arguments, environment, then the settings file."""
        return init_settings, env_settings, _FileSource(settings_cls)

    def bed_for(self, camera_id: str) -> CameraBed:
        """The bed strategy of a camera."""
        return self.cameras.get(camera_id, self.default_bed)

    def public(self) -> dict[str, Any]:
        """The settings as JSON, secrets masked (a URL keeps its scheme and host only)."""
        data = self.model_dump(mode="json")
        url = self.redis_url.get_secret_value()
        scheme, _, rest = url.partition("://")
        host = rest.rsplit("@", 1)[-1].split("/", 1)[0]
        data["redis_url"] = f"{scheme}://***@{host}" if "@" in rest else f"{scheme}://{host}"
        return data


class _FileSource(YamlConfigSettingsSource):
    """SCRAPSCAN_SETTINGS_FILE: a YAML (or JSON, which YAML reads) mapping of the same fields.

    pydantic-settings' YAML source, made strict: a named file that is missing or holds
    something other than a mapping is an error naming the file, not silently no settings.
    """

    def __init__(self, settings_cls: type[BaseSettings]) -> None:
        name = os.environ.get("SCRAPSCAN_SETTINGS_FILE")
        if name and not Path(name).is_file():
            raise ValueError(f"{name}: SCRAPSCAN_SETTINGS_FILE names no file")
        super().__init__(settings_cls, yaml_file=Path(name) if name else None)

    def _read_file(self, file_path: Path | Traversable) -> dict[str, Any]:
        data = super()._read_file(file_path)
        if not isinstance(data, dict):
            raise ValueError(f"{file_path}: the settings file must hold a mapping")
        return data
