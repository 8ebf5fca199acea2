"""The anomaly segmentation model: CLIP, learnable class prompts and the multi-scale mechanism.

Shapes: B images, C = 4 classes (normal, motor, cable, spray_can), g = input_size / patch
(37 for 518 px and 14 px patches), D = CLIP embedding width, S = feature stages (4).

Path of an image batch (B, 3, 518, 518):

1. The vision tower runs block by block; after each block in `feature_layers` its patch
   tokens go through ln_post and the visual projection and are L2-normalised: one
   (B, g*g, D) map per stage. With `dpam`, the tokens come from a second path that
   accumulates value-value attention from `dpam_from_layer` on (AnomalyCLIP's DPAM).
2. The text tower (frozen) encodes one learnable prompt per class: CoOp context vectors
   before the class words, and deep prompts that replace the first context tokens in
   the first text layers. Features are L2-normalised: (C, D).
3. Per stage, patch-text cosine similarity / temperature, softmax over C: the local map.
4. Per stage, the MSM: the token grid average-pooled with each window, a cross-attention
   where pooled image tokens attend to the text features, cosine similarity with the
   text again, summed over windows and mixed by a 1x1 conv: the MSM map.

`forward` returns per-stage probabilities (for the losses), the per-class map the
service uses, and the binary anomaly map the paper evaluates. `zero_shot_maps` scores
classes defined by text at run time against the same stage tokens (the text tower run
without learned prompts: `TextEncoder.encode_plain`).

Longer than the project's 400 lines for a module: its one job is the paper's model, and
its parts (backbone loading, prompts, text tower, MSM, the forward pass above) are read
together against the paper.
"""

from __future__ import annotations

import json
import socket
import tempfile
from pathlib import Path
from typing import Any, NamedTuple

import open_clip
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from common.classes import ANOMALY_CLASSES, NUM_CLASSES
from training.config import BinaryMode, ModelConfig, MSMConfig, PromptConfig


class WeightsError(RuntimeError):
    """Pretrained weights cannot be loaded; the message says how to provide them."""


class TextFeatures(NamedTuple):
    """The prompts' normalised text features: constant once training is over."""

    classes: torch.Tensor
    """(C, D) normal first, then each anomaly class (or the binary anomaly prompt)."""
    binary: torch.Tensor
    """(2, D) normal and the binary anomaly prompt."""


class ModelOutput(NamedTuple):
    """What the model returns for a batch (C = 4 classes, or 2 with binary prompts).

    stage_probs: per stage (B, C, g, g) softmax of the patch-text similarity.
    msm_probs: per stage (B, C, g, g) softmax of the MSM map; empty when MSM is off.
    class_probs: (B, C, g, g) the stages' maps averaged (local and MSM alike).
    anomaly: (B, g, g) binary anomaly probability, as the paper evaluates.
    """

    stage_probs: tuple[torch.Tensor, ...]
    msm_probs: tuple[torch.Tensor, ...]
    class_probs: torch.Tensor
    anomaly: torch.Tensor


# --- building the CLIP backbone -------------------------------------------------------------


def register_model_config(name: str, config: dict[str, Any]) -> None:
    """Make an open_clip architecture available under `name` (e.g. a tiny test model)."""
    # open_clip reads the file into its registry at once; the file is not needed after.
    with tempfile.TemporaryDirectory(prefix="scrapscan-clip-") as folder:
        path = Path(folder) / f"{name}.json"
        path.write_text(json.dumps(config))
        open_clip.add_model_config(path)


def create_clip(cfg: ModelConfig) -> Any:
    """Build the open_clip model of `cfg` with its weights.

    `cfg.pretrained` is an open_clip tag ("openai"), a path to a local weights file, or
    None for random weights. Raises WeightsError with instructions when tagged weights
    cannot be fetched (no network) or a weights file does not fit the architecture.
    """
    if cfg.tiny_config is not None:
        register_model_config(cfg.clip_model, cfg.tiny_config)
    if cfg.clip_model not in open_clip.list_models():
        raise WeightsError(f"unknown open_clip model {cfg.clip_model!r}")
    pretrained = cfg.pretrained
    if pretrained is not None and not Path(pretrained).is_file():
        tags = open_clip.list_pretrained_tags_by_model(cfg.clip_model)
        if pretrained not in tags:
            hint = f"known tags: {', '.join(tags)}" if tags else "no tags are known for it"
            raise WeightsError(
                f"pretrained={pretrained!r} is neither a file nor a weights tag of "
                f"{cfg.clip_model} ({hint})"
            )
        if not _cached(cfg.clip_model, pretrained) and not _hub_reachable():
            raise WeightsError(
                _fetch_hint(cfg.clip_model, pretrained, f"{HUB_HOST} is unreachable")
            )
    try:
        model = open_clip.create_model(
            cfg.clip_model,
            pretrained=pretrained,
            force_quick_gelu=cfg.quick_gelu,
            force_image_size=cfg.input_size,
        )
    except Exception as err:  # open_clip raises many kinds when a download fails
        if pretrained is None or Path(pretrained).is_file():
            raise WeightsError(f"cannot load weights file {pretrained}: {err}") from err
        raise WeightsError(
            _fetch_hint(cfg.clip_model, pretrained, f"{type(err).__name__}: {err}")
        ) from err
    return model


HUB_HOST = "huggingface.co"
_WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


def _cached(model: str, tag: str) -> bool:
    """Whether the tagged weights are already in the local Hugging Face cache."""
    from huggingface_hub import try_to_load_from_cache

    repo = str(open_clip.get_pretrained_cfg(model, tag).get("hf_hub", "")).strip("/")
    return bool(repo) and any(
        isinstance(try_to_load_from_cache(repo, name), str) for name in _WEIGHT_FILES
    )


def _hub_reachable(timeout: float = 3.0) -> bool:
    """A quick TCP connect to the weights hub, so that an air-gapped machine fails at once."""
    try:
        socket.create_connection((HUB_HOST, 443), timeout=timeout).close()
    except OSError:
        return False
    return True


def _fetch_hint(model: str, tag: str, why: str) -> str:
    return (
        f"cannot fetch the {tag!r} weights of {model} ({why}). On a machine without "
        f"internet access, download the weights file on one that has it (running "
        f"open_clip.create_model({model!r}, pretrained={tag!r}) puts it in the Hugging Face "
        f"cache), copy the file over and set model.pretrained to its path."
    )


# --- text side ----------------------------------------------------------------------------------


def class_words(name: str) -> str:
    """The words of a class in a prompt: spray_can -> "spray can"."""
    return name.replace("_", " ")


class PromptLearner(nn.Module):
    """Learnable prompts for the normal class and each anomaly class, and the binary prompt.

    Each prompt is [SOT] ctx_1..ctx_n <words> . [EOT]; the context vectors are learned
    per prompt, and deep prompts (shared by all prompts) replace tokens 1..deep_length at
    the input of text layers 1..deep_depth-1.
    """

    def __init__(
        self, cfg: PromptConfig, width: int, text_layers: int, binary: bool = False
    ) -> None:
        super().__init__()
        if cfg.deep_depth > text_layers:
            raise ValueError(
                f"prompts.deep_depth ({cfg.deep_depth}) exceeds the text tower's "
                f"{text_layers} layers"
            )
        self.cfg = cfg
        if binary:
            texts = [cfg.normal, cfg.binary_anomaly]
        else:
            texts = [cfg.normal] + [cfg.anomaly.format(class_words(c)) for c in ANOMALY_CLASSES]
        self.count = len(texts)
        placeholder = " ".join(["X"] * cfg.context_length)
        tokens = open_clip.tokenize([f"{placeholder} {t}." for t in [*texts, cfg.binary_anomaly]])
        self.register_buffer("tokens", tokens, persistent=False)
        self.context = nn.Parameter(torch.randn(self.count, cfg.context_length, width) * 0.02)
        self.deep = nn.Parameter(
            torch.randn(max(cfg.deep_depth - 1, 0), cfg.deep_length, width) * 0.02
        )


class TextEncoder(nn.Module):
    """The frozen CLIP text tower, run with learnable prompts."""

    def __init__(self, clip: Any, prompts: PromptConfig, binary: bool = False) -> None:
        super().__init__()
        self.token_embedding = clip.token_embedding
        self.positional_embedding = clip.positional_embedding
        self.transformer = clip.transformer
        self.ln_final = clip.ln_final
        self.text_projection = clip.text_projection
        self.register_buffer("attn_mask", clip.attn_mask, persistent=False)
        for p in self.parameters():
            p.requires_grad_(False)
        self.prompts = PromptLearner(
            prompts, clip.token_embedding.embedding_dim, len(clip.transformer.resblocks), binary
        )

    def _encode(self, tokens: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        n = context.shape[1]
        x = self.token_embedding(tokens)
        x = torch.cat([x[:, :1], context.to(x.dtype), x[:, 1 + n :]], dim=1)
        x = x + self.positional_embedding
        deep = self.prompts.deep
        length = self.prompts.cfg.deep_length
        for i, block in enumerate(self.transformer.resblocks):
            if 1 <= i <= deep.shape[0]:
                d = deep[i - 1].to(x.dtype).expand(x.shape[0], -1, -1)
                x = torch.cat([x[:, :1], d, x[:, 1 + length :]], dim=1)
            x = block(x, attn_mask=self.attn_mask)
        return self._pool(x, tokens)

    def _pool(self, x: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """The end token's output, projected and normalised: the text's feature."""
        x = self.ln_final(x)
        eot = x[torch.arange(x.shape[0]), tokens.argmax(dim=-1)]
        proj = self.text_projection
        out = proj(eot) if isinstance(proj, nn.Linear) else eot @ proj
        return F.normalize(out, dim=-1)

    def encode_plain(self, tokens: torch.Tensor) -> torch.Tensor:
        """(P, D) normalised features of tokenised text as CLIP encodes it: no learned prompt.

        What a class defined by text at run time is scored with (`zero_shot_maps`).
        """
        x = self.token_embedding(tokens) + self.positional_embedding
        for block in self.transformer.resblocks:
            x = block(x, attn_mask=self.attn_mask)
        return self._pool(x, tokens)

    def class_features(self) -> torch.Tensor:
        """(K, D) normalised features of the normal prompt and the anomaly prompt(s)."""
        tokens: torch.Tensor = self.prompts.tokens  # type: ignore[assignment]
        return self._encode(tokens[: self.prompts.count], self.prompts.context)

    def binary_features(self) -> torch.Tensor:
        """(2, D): normal, and the binary anomaly prompt with the classes' context averaged."""
        tokens: torch.Tensor = self.prompts.tokens  # type: ignore[assignment]
        if self.prompts.count == 2:  # binary prompts: they are the class features
            return self.class_features()
        ctx = self.prompts.context
        context = torch.stack([ctx[0], ctx[1:].mean(dim=0)])
        return self._encode(torch.stack([tokens[0], tokens[NUM_CLASSES]]), context)


# --- image side ---------------------------------------------------------------------------------


def value_value_attention(block: Any, x: torch.Tensor) -> torch.Tensor:
    """The block's attention with values as queries and keys (DPAM), on (B, L, W) tokens."""
    attn: nn.MultiheadAttention = block.attn
    h = block.ln_1(x)
    width = h.shape[-1]
    w_v = attn.in_proj_weight[2 * width :]
    b_v = attn.in_proj_bias[2 * width :] if attn.in_proj_bias is not None else None
    v = F.linear(h, w_v, b_v)
    heads = attn.num_heads
    b, length, _ = v.shape
    v = v.view(b, length, heads, width // heads).transpose(1, 2)
    out = F.scaled_dot_product_attention(v, v, v)
    out = out.transpose(1, 2).reshape(b, length, width)
    out = attn.out_proj(out)
    ls = getattr(block, "ls_1", None)
    scaled: torch.Tensor = ls(out) if ls is not None else out
    return scaled


class MSMHead(nn.Module):
    """The multi-scale mechanism of one stage: pooled tokens attend to the class texts."""

    def __init__(self, dim: int, cfg: MSMConfig, classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.cfg = cfg
        self.classes = classes
        self.norm = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, cfg.heads, batch_first=True)
        self.mix = nn.Conv2d(classes, classes, kernel_size=1)
        with torch.no_grad():  # start as the plain sum of the scales' similarity maps
            self.mix.weight.copy_(torch.eye(classes).view(classes, classes, 1, 1))
            if self.mix.bias is not None:
                nn.init.zeros_(self.mix.bias)

    def forward(self, grid: torch.Tensor, text: torch.Tensor, temperature: float) -> torch.Tensor:
        """Map (B, D, g, g) normalised tokens and (C, D) texts to (B, C, g, g) logits."""
        b, _, g, _ = grid.shape
        total = grid.new_zeros(b, self.classes, g, g)
        keys = text.unsqueeze(0).expand(b, -1, -1).to(grid.dtype)
        for w in self.cfg.windows:
            if self.cfg.stride == "same":
                pooled = F.avg_pool2d(grid, w, stride=1, padding=w // 2, count_include_pad=False)
            else:
                pooled = F.avg_pool2d(grid, w, stride=w, ceil_mode=True, count_include_pad=False)
            h, wd = pooled.shape[-2:]
            q = pooled.flatten(2).transpose(1, 2)
            attended, _ = self.attn(self.norm(q), keys, keys, need_weights=False)
            feat = F.normalize(q + attended, dim=-1)
            logits = (
                (feat @ keys.transpose(1, 2) / temperature).transpose(1, 2).reshape(b, -1, h, wd)
            )
            if (h, wd) != (g, g):
                logits = F.interpolate(logits, size=(g, g), mode="bilinear", align_corners=False)
            total = total + logits
        out: torch.Tensor = self.mix(total)
        return out


class ScrapAnomalyModel(nn.Module):
    """CLIP image encoder + learnable class prompts + MSM, trained end to end."""

    def __init__(self, clip: Any, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.visual = clip.visual
        blocks = len(self.visual.transformer.resblocks)
        if cfg.feature_layers[-1] > blocks:
            raise ValueError(
                f"feature_layers {list(cfg.feature_layers)} exceed the "
                f"{blocks} vision blocks of {cfg.clip_model}"
            )
        patch = self.visual.patch_size[0]
        if cfg.input_size % patch:
            raise ValueError(
                f"input_size {cfg.input_size} is not a multiple of the patch size {patch}"
            )
        self.grid = cfg.input_size // patch
        self.text = TextEncoder(clip, cfg.prompts, binary=cfg.prompt_mode == "binary")
        self.classes = self.text.prompts.count
        dim = self.visual.output_dim
        self.msm = nn.ModuleList(
            [MSMHead(dim, cfg.msm, self.classes) for _ in cfg.feature_layers]
            if cfg.msm.enabled
            else []
        )
        if cfg.freeze_image_encoder:
            for p in self.visual.parameters():
                p.requires_grad_(False)
        for p in self._unreachable_parameters():
            p.requires_grad_(False)
        self.grad_checkpointing = False

    def _unreachable_parameters(self) -> list[nn.Parameter]:
        """Vision parameters that cannot affect the output.

        Blocks after the last feature layer and, on the value-value path, the last feature
        block's MLP half.
        """
        blocks = self.visual.transformer.resblocks
        last = self.cfg.feature_layers[-1]
        out = [p for block in blocks[last:] for p in block.parameters()]
        if self.cfg.dpam:
            final = blocks[last - 1]
            out += [*final.ln_2.parameters(), *final.mlp.parameters()]
        return out

    def parameter_groups(self) -> dict[str, int]:
        """Trainable parameter counts per part: image encoder, prompts, MSM."""

        def count(m: nn.Module) -> int:
            return sum(p.numel() for p in m.parameters() if p.requires_grad)

        return {
            "image_encoder": count(self.visual),
            "prompts": count(self.text.prompts),
            "msm": count(self.msm),
        }

    def stage_tokens(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Per feature stage, (B, g*g, D) projected, L2-normalised patch tokens."""
        v = self.visual
        x = v._embeds(images)
        dpam_start = self.cfg.dpam_from_layer - 1 if self.cfg.dpam else None
        side: torch.Tensor | None = None
        wanted = {layer - 1 for layer in self.cfg.feature_layers}
        out = []
        last = max(wanted)
        for i, block in enumerate(v.transformer.resblocks):
            if dpam_start is not None and i >= dpam_start:
                side = (x if side is None else side) + value_value_attention(block, x)
            if i < last or side is None:  # the main path's last output feeds nothing on DPAM
                if self.grad_checkpointing and self.training:
                    x = checkpoint(block, x, use_reentrant=False)
                else:
                    x = block(x)
            if i in wanted:
                tokens = side if side is not None else x
                tokens = v.ln_post(tokens[:, 1:]) @ v.proj
                out.append(F.normalize(tokens, dim=-1))
            if i == last:
                break
        return out

    def text_features(self) -> TextFeatures:
        """The prompts through the text tower (what an exported model keeps as constants)."""
        return TextFeatures(self.text.class_features(), self.text.binary_features())

    def forward(
        self, images: torch.Tensor, text_features: TextFeatures | None = None
    ) -> ModelOutput:
        """images: (B, 3, input_size, input_size) CLIP-normalised.

        `text_features` given, the text tower is not run (training needs it run: the
        prompts learn).
        """
        return self.heads(self.stage_tokens(images), text_features)

    def heads(
        self, stages: list[torch.Tensor], text_features: TextFeatures | None = None
    ) -> ModelOutput:
        """The maps of `stage_tokens`' output: local similarity, MSM, their average."""
        b, g, t = stages[0].shape[0], self.grid, self.cfg.temperature
        text, binary = text_features if text_features is not None else self.text_features()
        stage_probs, msm_probs, binary_probs = [], [], []
        for s, tokens in enumerate(stages):
            tokens = tokens.to(text.dtype)
            logits = (tokens @ text.T / t).transpose(1, 2).reshape(b, self.classes, g, g)
            stage_probs.append(logits.softmax(dim=1))
            binary_probs.append((tokens @ binary.T / t).softmax(dim=-1)[..., 1].reshape(b, g, g))
            if self.msm:
                grid = tokens.transpose(1, 2).reshape(b, -1, g, g)
                msm_probs.append(self.msm[s](grid, text, t).softmax(dim=1))
        local = torch.stack(stage_probs).mean(dim=0)
        class_probs = (local + torch.stack(msm_probs).mean(dim=0)) / 2 if msm_probs else local
        if self.cfg.binary_mode == BinaryMode.AVERAGED_PROMPT and self.classes > 2:
            anomaly = torch.stack(binary_probs).mean(dim=0)
            if msm_probs:
                anomaly = (anomaly + 1 - torch.stack(msm_probs).mean(dim=0)[:, 0]) / 2
        else:
            anomaly = 1 - class_probs[:, 0]
        return ModelOutput(tuple(stage_probs), tuple(msm_probs), class_probs, anomaly)


def zero_shot_maps(
    stages: list[torch.Tensor], text: torch.Tensor, temperature: float, grid: int
) -> torch.Tensor:
    """(B, K, g, g) maps of K classes defined by text, from `stage_tokens`' output.

    `text` (K, 2, D): per class, the normalised features of its normal prompts and of its
    own prompts. Per stage, a cell's probability of the class is the softmax of its
    cosine similarity to the two over `temperature`, as the learned classes' local maps
    are formed; the stages are averaged. The MSM heads are not used: they were trained on
    the learned classes' texts, and a new key would change what they attend to.
    """
    b = stages[0].shape[0]
    probs = []
    for tokens in stages:
        logits = torch.einsum("bld,kcd->bklc", tokens, text.to(tokens.dtype)) / temperature
        probs.append(logits.softmax(dim=-1)[..., 1])
    return torch.stack(probs).mean(dim=0).reshape(b, text.shape[0], grid, grid)


def build_model(cfg: ModelConfig) -> ScrapAnomalyModel:
    """Create the CLIP backbone of `cfg` (with its weights) and wrap it."""
    return ScrapAnomalyModel(create_clip(cfg), cfg)


def upsample(maps: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear upsampling of (B, C, g, g) or (B, g, g) maps to size x size."""
    squeeze = maps.dim() == 3
    x = maps.unsqueeze(1) if squeeze else maps
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return x.squeeze(1) if squeeze else x
