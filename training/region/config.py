"""The region encoder's training configuration (configs/region-*.yaml).

Loaded like the segmentation model's (training.config.load_as): every wrong field is
named, unknown fields are errors.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import Field

from training.config import ModelConfig, _Strict

REPO_ROOT = Path(__file__).resolve().parents[2]


class RegionModelConfig(_Strict):
    """The CLIP backbone, its weights and how a region becomes its input."""

    clip_model: str = "ViT-L-14-336"
    pretrained: str | None = "openai"
    """"openai" (or another open_clip tag), a local weights file, or null (random)."""
    alpha_weights: Path | None = None
    """An AlphaCLIP image-tower file (its state dict holds conv1_alpha.weight): the tower's
    weights and the alpha convolution are taken from it, over `pretrained`'s."""
    quick_gelu: bool = True
    tiny_config: dict[str, Any] | None = None
    """An open_clip model config registered under clip_model before building (tests, CPU)."""
    input_size: Annotated[int, Field(ge=28)] = 336
    context: Annotated[float, Field(ge=0, le=4)] = 0.5
    """The crop: the region's box grown by this share of its longer side on each side."""
    min_crop: Annotated[int, Field(ge=8)] = 64
    """The smallest crop side in frame pixels (a tiny region keeps some surroundings)."""

    def clip(self) -> ModelConfig:
        """The backbone as training.model.create_clip reads it."""
        return ModelConfig(
            clip_model=self.clip_model,
            pretrained=self.pretrained,
            quick_gelu=self.quick_gelu,
            tiny_config=self.tiny_config,
            input_size=self.input_size,
        )


class LoraConfig(_Strict):
    """LoRA on the image tower's blocks (peft); rank 0 trains the whole tower instead."""

    rank: Annotated[int, Field(ge=0)] = 64
    alpha: Annotated[float, Field(gt=0)] = 64
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.001
    targets: tuple[str, ...] = ("attn", "c_fc", "c_proj")
    """Module names in open_clip's residual blocks (attention, MLP in and out)."""


class RegionTrainConfig(_Strict):
    """Optimisation; the defaults are the paper's (AdamW, its learning rates)."""

    epochs: Annotated[int, Field(ge=1)] = 10
    batch_size: Annotated[int, Field(ge=2)] = 32
    lr: Annotated[float, Field(gt=0)] = 1.0e-4
    """LoRA's weights (or, with rank 0, the image tower's)."""
    lr_alpha: Annotated[float, Field(gt=0)] = 1.0e-4
    """The alpha convolution."""
    lr_rgb: Annotated[float, Field(gt=0)] = 1.0e-6
    """The RGB patch convolution."""
    weight_decay: Annotated[float, Field(ge=0)] = 1.0e-4
    betas: tuple[float, float] = (0.9, 0.999)
    temperature: Annotated[float, Field(gt=0)] = 0.07
    normal_per_frame: Annotated[int, Field(ge=0)] = 2
    """Regions of plain scrap drawn from each frame's bed per epoch (class normal)."""
    seed: int = 0


class RegionRunConfig(_Strict):
    """A whole region-encoder configuration file."""

    name: str = "region"
    model: RegionModelConfig = RegionModelConfig()
    lora: LoraConfig = LoraConfig()
    train: RegionTrainConfig = RegionTrainConfig()
    descriptions: Path = REPO_ROOT / "configs" / "descriptions.yaml"
    """What each class (and plain scrap) looks like in words (training.region.describe)."""
