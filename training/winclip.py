"""WinCLIP zero-shot baseline: anomaly maps from a plain CLIP, with no training at all.

The image is cut into windows of k x k patch tokens (k = 2 and 3 by default, stride one
token). Each window's tokens, with the class token, go through the vision transformer
alone, so the class embedding describes that window only; its similarity to two text
embeddings (normal and anomalous steel scrap, each the mean over state x template
prompts, temperature 0.07) gives the window's anomaly probability. A patch's score per
scale is the harmonic mean of the windows that cover it; the map is the mean over
scales. The paper reports this baseline with open_clip ViT-B-16-plus-240
(laion400m_e31) at 240 px; `configs/winclip.yaml` names that model, and any other
config's `model` section (the tiny one in tests) works as well.

`scrapscan-eval --winclip CONFIG` evaluates it exactly as a trained checkpoint.
"""

from __future__ import annotations

from typing import Any

import open_clip
import torch
import torch.nn.functional as F
from torch import nn

from training.config import ModelConfig
from training.model import ModelOutput, create_clip

OBJECT = "steel scrap"
NORMAL_STATES = (
    "{}",
    "clean {}",
    "ordinary {}",
    "plain {}",
    "{} with nothing unusual",
    "{} without foreign objects",
    "{} as expected",
)
ANOMALOUS_STATES = (
    "{} with a foreign object",
    "contaminated {}",
    "{} with an anomaly",
    "{} with something unusual in it",
)
TEMPLATES = (
    "a photo of {}.",
    "a cropped photo of {}.",
    "a close-up photo of {}.",
    "a photo of {} seen from above.",
    "a photo of {} in a truck.",
    "a camera image of {}.",
    "a low-resolution photo of {}.",
    "a blurry photo of {}.",
    "a bright photo of {}.",
    "a dark photo of {}.",
    "a jpeg photo of {}.",
    "an industrial photo of {}.",
)


def prompt_texts(states: tuple[str, ...], obj: str = OBJECT) -> list[str]:
    """Every template filled with every state of `obj`."""
    return [t.format(s.format(obj)) for s in states for t in TEMPLATES]


class WinCLIP(nn.Module):
    """Zero-shot window scoring; forward returns a ModelOutput with C = 2 (normal, anomaly)."""

    text: torch.Tensor

    def __init__(
        self,
        clip: Any,
        text_features: torch.Tensor,
        input_size: int,
        scales: tuple[int, ...] = (2, 3),
        temperature: float = 0.07,
    ) -> None:
        super().__init__()
        self.visual: Any = clip.visual
        self.register_buffer("text", F.normalize(text_features, dim=-1))
        self.input_size = input_size
        patch = self.visual.conv1.kernel_size[0]
        self.grid = input_size // patch
        if not scales or min(scales) < 1 or max(scales) > self.grid:
            raise ValueError(f"window scales {scales} must lie in 1..{self.grid} tokens")
        self.scales = scales
        self.temperature = temperature

    @classmethod
    def build(cls, cfg: ModelConfig, scales: tuple[int, ...] = (2, 3)) -> WinCLIP:
        """The CLIP of `cfg` (weights as create_clip loads them) with the state prompts."""
        clip = create_clip(cfg).eval()
        tokenizer = open_clip.get_tokenizer(cfg.clip_model)
        with torch.no_grad():
            text = torch.stack(
                [
                    F.normalize(clip.encode_text(tokenizer(prompt_texts(states))), dim=-1).mean(0)
                    for states in (NORMAL_STATES, ANOMALOUS_STATES)
                ]
            )
        return cls(clip, text, cfg.input_size, scales, cfg.temperature).eval()

    def window_scores(self, tokens: torch.Tensor, k: int) -> torch.Tensor:
        """(B, n, n) anomaly probability of each k x k window, n = grid - k + 1."""
        b, g, v = tokens.shape[0], self.grid, self.visual
        n = g - k + 1
        rows = torch.arange(n, device=tokens.device)
        offs = torch.arange(k, device=tokens.device)
        # token index (1 + row * g + col) of every patch of every window: (n*n, k*k)
        r = (rows[:, None, None, None] + offs[None, None, :, None]) * g
        c = rows[None, :, None, None] + offs[None, None, None, :]
        index = (1 + r + c).reshape(n * n, k * k)
        patches = tokens[:, index]  # (B, n*n, k*k, D)
        cls = tokens[:, :1, None].expand(b, n * n, 1, tokens.shape[-1])
        seq = torch.cat([cls, patches], dim=2).flatten(0, 1)
        out = v.transformer(seq)[:, 0]
        emb = F.normalize(v.ln_post(out) @ v.proj, dim=-1)
        probs = (emb @ self.text.T / self.temperature).softmax(dim=-1)[:, 1]
        return probs.reshape(b, n, n)

    def forward(self, images: torch.Tensor) -> ModelOutput:
        """images: (B, 3, H, W) CLIP-normalised, resized here to the CLIP's input size."""
        if images.shape[-1] != self.input_size or images.shape[-2] != self.input_size:
            images = F.interpolate(
                images, size=(self.input_size,) * 2, mode="bicubic", align_corners=False
            )
        tokens = self.visual._embeds(images)
        maps = []
        for k in self.scales:
            inverse = 1.0 / self.window_scores(tokens, k).clamp_min(1e-6)[:, None]
            ones = torch.ones(1, 1, k, k, dtype=inverse.dtype, device=inverse.device)
            total = F.conv_transpose2d(inverse, ones)
            covering = F.conv_transpose2d(torch.ones_like(inverse), ones)
            maps.append((covering / total)[:, 0])
        anomaly = torch.stack(maps).mean(dim=0)
        return ModelOutput((), (), torch.stack([1 - anomaly, anomaly], dim=1), anomaly)
