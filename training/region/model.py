"""The region encoder: CLIP's image tower with an alpha input, and its text tower.

AlphaCLIP's construction: a second patch convolution reads the region's mask (1 inside,
0 outside, normalised as AlphaCLIP does) and its output is added to the RGB patch
convolution's, before the class token and the positional embeddings. Initialised to zero,
the untouched model is CLIP itself. Training adapts the image tower with LoRA (peft) or,
at rank 0, as a whole; the text tower stays as loaded (the descriptions' embeddings are
constants of a trained model).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import open_clip
import torch
import torch.nn.functional as F
from torch import nn

from training.model import WeightsError, create_clip
from training.region.config import LoraConfig, RegionModelConfig

ALPHA_MEAN = 0.5
ALPHA_STD = 0.26
"""AlphaCLIP's normalisation of the mask channel."""


class RegionEncoder(nn.Module):
    """A region (image crop and its mask) and a text into one embedding space."""

    def __init__(self, clip: Any, cfg: RegionModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.clip = clip
        conv = clip.visual.conv1
        self.conv1_alpha = nn.Conv2d(
            1, conv.out_channels, conv.kernel_size, conv.stride, bias=False
        )
        nn.init.zeros_(self.conv1_alpha.weight)
        for name, p in clip.named_parameters():  # the text tower, as loaded
            if not name.startswith("visual."):
                p.requires_grad_(False)
        self.tokenizer = open_clip.get_tokenizer(cfg.clip_model)

    @property
    def visual(self) -> Any:
        """CLIP's image tower."""
        return self.clip.visual

    def encode_region(self, images: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        """(B, D) L2-normalised embeddings of regions.

        `images`: (B, 3, S, S) CLIP-normalised crops; `alpha`: (B, 1, S, S) masks in [0, 1].
        """
        v = self.visual
        a = (alpha - ALPHA_MEAN) / ALPHA_STD
        x = v.conv1(images) + self.conv1_alpha(a.to(images.dtype))
        x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
        cls = v.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + v.positional_embedding.to(x.dtype)
        x = v.ln_pre(v.patch_dropout(x))
        x = v.transformer(x)
        pooled, _ = v._pool(x)
        if v.proj is not None:
            pooled = pooled @ v.proj
        return F.normalize(pooled, dim=-1)

    @torch.no_grad()
    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        """(N, D) L2-normalised embeddings of the texts (the frozen text tower)."""
        device = self.conv1_alpha.weight.device
        tokens = self.tokenizer(texts).to(device)
        return F.normalize(self.clip.encode_text(tokens), dim=-1)

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """What learns, by learning rate: alpha, rgb (the patch convolution), tower."""
        rgb = list(self.visual.conv1.parameters())
        alpha = list(self.conv1_alpha.parameters())
        taken = {id(p) for p in rgb + alpha}
        tower = [p for p in self.visual.parameters() if p.requires_grad and id(p) not in taken]
        return {"alpha": alpha, "rgb": rgb, "tower": tower}


def add_lora(encoder: RegionEncoder, lora: LoraConfig) -> None:
    """LoRA adapters on the image tower's blocks, the rest of the tower frozen (rank > 0).

    The patch convolutions keep learning at their own rates, as in the paper.
    """
    if lora.rank == 0:
        return
    from peft import LoraConfig as PeftLora
    from peft import inject_adapter_in_model

    peft_cfg = PeftLora(
        r=lora.rank,
        lora_alpha=lora.alpha,  # type: ignore[arg-type]  # peft reads it as a number
        lora_dropout=lora.dropout,
        target_modules=list(lora.targets),
    )
    inject_adapter_in_model(peft_cfg, encoder.visual.transformer)
    for name, p in encoder.visual.named_parameters():
        p.requires_grad_("lora_" in name or name.startswith("conv1."))


def load_alpha_weights(encoder: RegionEncoder, path: Path) -> None:
    """An AlphaCLIP image-tower file over the encoder's image tower (WeightsError if not one).

    Keys as AlphaCLIP saves them (conv1_alpha.weight, conv1.weight, transformer...), with
    or without a "visual." prefix.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise WeightsError(f"{path}: cannot read as a weights file: {err}") from err
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise WeightsError(f"{path}: not a state dict")
    state = {k.removeprefix("visual."): v for k, v in state.items()}
    if "conv1_alpha.weight" not in state:
        raise WeightsError(f"{path}: holds no conv1_alpha.weight (not an AlphaCLIP image tower)")
    alpha = state.pop("conv1_alpha.weight")
    try:
        encoder.conv1_alpha.weight.data.copy_(alpha)
        encoder.visual.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise WeightsError(f"{path}: does not fit {encoder.cfg.clip_model}: {err}") from err


def build_region_encoder(cfg: RegionModelConfig, lora: LoraConfig) -> RegionEncoder:
    """The encoder of `cfg` with its weights, LoRA added when lora.rank > 0."""
    encoder = RegionEncoder(create_clip(cfg.clip()), cfg)
    if cfg.alpha_weights is not None:
        load_alpha_weights(encoder, cfg.alpha_weights)
    add_lora(encoder, lora)
    return encoder
