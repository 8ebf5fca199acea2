"""Training configuration: a YAML file validated field by field on load.

`load_config(path)` returns a `RunConfig` or raises `ConfigError` naming the file and,
for each wrong field, its dotted path and what is wrong with it. Unknown fields are
errors too (a misspelt key would otherwise be ignored silently).
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from common.imaging import DEFAULT_OVERLAP, INPUT_SIZE, TILE_SIZE


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BinaryMode(StrEnum):
    """How the binary anomaly score is formed at test time."""

    AVERAGED_PROMPT = "averaged_prompt"
    """The paper: the binary prompt "object which is not steel" with the three anomaly
    prompts' learned context averaged; 2-way softmax against the normal prompt."""
    CLASS_SUM = "class_sum"
    """1 - p(normal) of the 4-way softmax: the three classes' probabilities summed."""


class PromptConfig(_Strict):
    """Learnable text prompts (CoOp context plus deep prompts in the text tower)."""

    normal: str = "object which is made of steel"
    anomaly: str = "object which is not steel but {}"
    """Template filled with each anomaly class's words (motor, cable, spray can)."""
    binary_anomaly: str = "object which is not steel"
    context_length: Annotated[int, Field(ge=1, le=40)] = 16
    """Learnable context tokens before each prompt's words."""
    deep_depth: Annotated[int, Field(ge=1)] = 9
    """Deep prompts replace tokens in text layers 1..deep_depth-1 (1 = no deep prompts)."""
    deep_length: Annotated[int, Field(ge=1)] = 4
    """Tokens replaced per layer, right after the start token."""

    @field_validator("anomaly")
    @classmethod
    def _has_slot(cls, v: str) -> str:
        if v.count("{}") != 1:
            raise ValueError("must contain exactly one {} where the class name goes")
        return v

    @model_validator(mode="after")
    def _deep_fits_context(self) -> PromptConfig:
        if self.deep_length > self.context_length:
            raise ValueError(
                f"deep_length ({self.deep_length}) cannot exceed context_length "
                f"({self.context_length}): deep prompts replace context tokens"
            )
        return self


class MSMConfig(_Strict):
    """The multi-scale mechanism at each feature stage."""

    enabled: bool = True
    windows: tuple[Annotated[int, Field(ge=1, le=37)], ...] = (3, 9)
    """Average-pooling windows, one scale each."""
    stride: Literal["same", "window"] = "same"
    """"same": stride 1, the grid keeps its size; "window": stride = window, then upsampled."""
    heads: Annotated[int, Field(ge=1)] = 8
    """Heads of the scale path's cross-attention (image tokens attend to text)."""

    @field_validator("windows")
    @classmethod
    def _odd_windows(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if not v:
            raise ValueError("needs at least one window")
        if any(w % 2 == 0 for w in v):
            raise ValueError(f"windows must be odd so that they centre on a token, got {list(v)}")
        return v


class ModelConfig(_Strict):
    """The CLIP backbone and the anomaly heads."""

    clip_model: str = "ViT-L-14-336"
    """open_clip model name (a built-in config or one registered by the tiny config)."""
    pretrained: str | None = "openai"
    """"openai", another open_clip tag, a path to a local weights file, or null (random)."""
    quick_gelu: bool = True
    """The OpenAI weights were trained with QuickGELU; other activations silently degrade them."""
    tiny_config: dict[str, Any] | None = None
    """An open_clip model config registered under clip_model before building (tests, CPU)."""
    input_size: Annotated[int, Field(ge=28)] = INPUT_SIZE
    feature_layers: tuple[Annotated[int, Field(ge=1)], ...] = (6, 12, 18, 24)
    """Vision blocks (1-based) whose patch tokens feed the similarity maps."""
    temperature: Annotated[float, Field(gt=0)] = 0.07
    prompts: PromptConfig = PromptConfig()
    msm: MSMConfig = MSMConfig()
    dpam: bool = True
    """Value-value attention on a second path through the later vision blocks."""
    dpam_from_layer: Annotated[int, Field(ge=1)] = 6
    """First vision block (1-based) of the value-value path."""
    freeze_image_encoder: bool = False
    """True reproduces the AnomalyCLIP baseline: only prompts (and MSM) learn."""
    binary_mode: BinaryMode = BinaryMode.AVERAGED_PROMPT
    prompt_mode: Literal["multiclass", "binary"] = "multiclass"
    """"binary" learns two prompts (normal, binary_anomaly) on masks merged into normal
    vs anomaly; with freeze_image_encoder it is the AnomalyCLIP-style baseline."""

    @field_validator("feature_layers")
    @classmethod
    def _increasing(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if not v or list(v) != sorted(set(v)):
            raise ValueError(f"must be increasing layer numbers, got {list(v)}")
        return v


class TrainConfig(_Strict):
    """Optimisation; the defaults are the paper's."""

    epochs: Annotated[int, Field(ge=1)] = 15
    batch_size: Annotated[int, Field(ge=1)] = 4
    lr: Annotated[float, Field(gt=0)] = 1.0e-6
    weight_decay: Annotated[float, Field(ge=0)] = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: Annotated[int, Field(ge=0)] = 0
    msm_stage_weights: tuple[float, ...] = (0.1, 0.1, 0.1, 0.7)
    focal_gamma: Annotated[float, Field(ge=0)] = 2.0
    class_balance_beta: Annotated[float, Field(gt=0, lt=1)] | Literal["auto"] = "auto"
    """Class-balanced loss beta. "auto": 1 - 1 / (pixels of the largest class). The
    common 0.9999 suits counts of samples; counted in pixels (millions) every class looks
    infinitely large under it and the weights come out uniform."""
    anomaly_share: Annotated[float, Field(gt=0, lt=1)] | None = None
    """Share of each epoch's patches drawn from patches holding a contaminant (drawn again
    when they are fewer). None: every patch once per epoch, the data's own mix, as the
    paper trains."""
    hard_negative_share: Annotated[float, Field(gt=0, lt=1)] | None = None
    """Share of each epoch's patches drawn from patches holding a region a served model
    reported where the labels have nothing (scrapscan-train --hard-negatives, the
    false_regions.json of scrapscan-eval --bundle on the training frames); a patch
    holding both such a region and a contaminant counts here. None: not drawn apart."""
    hard_negative_min_score: Annotated[float, Field(ge=0, le=1)] = 0.0
    """Only the false regions scoring at least this count as hard negatives."""
    bf16: bool = True
    """bf16 autocast on CUDA devices (ignored on the CPU)."""
    grad_checkpointing: bool = False
    seed: int = 0
    num_workers: Annotated[int, Field(ge=0)] = 2

    @model_validator(mode="after")
    def _shares_leave_room(self) -> TrainConfig:
        shares = (self.anomaly_share or 0.0) + (self.hard_negative_share or 0.0)
        if shares >= 1.0:
            raise ValueError(
                f"anomaly_share + hard_negative_share must stay under 1, got {shares:g}"
            )
        return self


class AugmentConfig(_Strict):
    """Training-patch augmentation (training.data.augment); the defaults change nothing."""

    symmetries: bool = False
    """Turns by 90 degrees and mirroring, image and mask alike (a top-down camera)."""
    brightness: Annotated[float, Field(ge=0, lt=1)] = 0.0
    """Largest relative change of the patch's mean brightness."""
    contrast: Annotated[float, Field(ge=0, lt=1)] = 0.0
    """Largest relative change of the spread around the mean."""
    blur: Annotated[float, Field(ge=0, le=1)] = 0.0
    """Share of patches blurred (Gaussian, sigma 0.5 to 1.5 px)."""
    jpeg: Annotated[float, Field(ge=0, le=1)] = 0.0
    """Share of patches re-encoded as JPEG at a quality drawn from `jpeg_quality`."""
    jpeg_quality: tuple[
        Annotated[int, Field(ge=1, le=100)], Annotated[int, Field(ge=1, le=100)]
    ] = (
        50,
        95,
    )

    @field_validator("jpeg_quality")
    @classmethod
    def _ordered(cls, v: tuple[int, int]) -> tuple[int, int]:
        if v[0] > v[1]:
            raise ValueError(f"must be [lowest, highest], got {list(v)}")
        return v

    @property
    def active(self) -> bool:
        """Whether any change is enabled."""
        return self.symmetries or any((self.brightness, self.contrast, self.blur, self.jpeg))


class DataConfig(_Strict):
    """How frames become patches (common.tiling geometry), and how they are augmented."""

    tile_size: Annotated[int, Field(ge=16)] = TILE_SIZE
    overlap: Annotated[int, Field(ge=0)] = DEFAULT_OVERLAP
    min_bed_fraction: Annotated[float, Field(ge=0, le=1)] = 0.25
    augment: AugmentConfig = AugmentConfig()

    @model_validator(mode="after")
    def _overlap_fits(self) -> DataConfig:
        if self.overlap >= self.tile_size:
            raise ValueError(
                f"overlap ({self.overlap}) must be smaller than tile_size ({self.tile_size})"
            )
        return self


class RunConfig(_Strict):
    """A whole training configuration file."""

    name: str = "run"
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    data: DataConfig = DataConfig()

    @model_validator(mode="after")
    def _stage_weights_match_layers(self) -> RunConfig:
        if len(self.train.msm_stage_weights) != len(self.model.feature_layers):
            raise ValueError(
                f"train.msm_stage_weights has {len(self.train.msm_stage_weights)} weights but "
                f"model.feature_layers has {len(self.model.feature_layers)} stages"
            )
        return self


Config = TypeVar("Config", bound=BaseModel)


class ConfigError(ValueError):
    """A configuration file cannot be used; the message names the file and each wrong field."""


def _describe(err: ValidationError) -> list[str]:
    lines = []
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown field (misspelt?)"
        lines.append(f"{where}: {msg}")
    return lines


def parse_config(data: Any, source: str = "<config>") -> RunConfig:
    """Validate a parsed YAML/JSON training configuration (ConfigError: every wrong field)."""
    return parse_as(RunConfig, data, source)


def load_config(path: Path | str) -> RunConfig:
    """Read and validate a YAML training configuration file."""
    return load_as(RunConfig, path)


def parse_as(schema: type[Config], data: Any, source: str) -> Config:
    """Validate a parsed YAML/JSON mapping; raises ConfigError listing every wrong field."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of sections")
    try:
        return schema.model_validate(data)
    except ValidationError as err:
        details = "\n".join(f"  {line}" for line in _describe(err))
        raise ConfigError(f"{source}: {err.error_count()} wrong field(s):\n{details}") from None


def read_yaml(path: Path, error: type[Exception] = ConfigError) -> Any:
    """A YAML file's data; `error` with a message naming the file if it cannot be had."""
    try:
        text = path.read_text()
    except OSError as err:
        raise error(f"{path}: cannot read ({err.strerror})") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise error(f"{path}: not valid YAML: {err}") from None


def load_as(schema: type[Config], path: Path | str) -> Config:
    """Read and validate a YAML configuration file of `schema`."""
    path = Path(path)
    return parse_as(schema, read_yaml(path), str(path))
