"""Checkpoint files of scrapscan-train: writing, resuming, and loading a trained model.

RUN_DIR/checkpoint.pt holds the model's and the optimizer's state, where the run stands
(`Position`) and the run's configuration, so a checkpoint alone rebuilds its model.
`init_weights` starts a new run from a trained model: a checkpoint, or the bundle a yard
serves (its model.pt2).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from common.bundle import BundleError, read_manifest
from training.config import BinaryMode, ConfigError, RunConfig, parse_config
from training.model import ScrapAnomalyModel, build_model

CHECKPOINT = "checkpoint.pt"
"""The checkpoint's name in a run folder."""


@dataclass(slots=True)
class Position:
    """Where training stands: epochs done, batches done in the current epoch, steps in all."""

    epoch: int = 0
    batch: int = 0
    step: int = 0


class CheckpointError(ValueError):
    """A checkpoint file cannot be used; the message names the file."""


def save_checkpoint(
    path: Path, model: ScrapAnomalyModel, optimizer: Any, pos: Position, cfg: RunConfig
) -> None:
    """Write the checkpoint atomically. Model and optimizer must be in eval mode."""
    tmp = path.with_suffix(".tmp")
    torch.save(
        {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "position": {"epoch": pos.epoch, "batch": pos.batch, "step": pos.step},
            "config": cfg.model_dump(mode="json"),
        },
        tmp,
    )
    os.replace(tmp, path)


def load_checkpoint(path: Path, model: ScrapAnomalyModel, optimizer: Any | None = None) -> Position:
    """Restore weights (and optimizer state) from `path`; returns where the run stood."""
    state = torch.load(path, map_location="cpu", weights_only=False)
    model.load_state_dict(state["model"])
    if optimizer is not None:
        optimizer.load_state_dict(state["optimizer"])
    return Position(**state["position"])


def _read_checkpoint(path: Path) -> dict[str, Any]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such file or folder") from None
    except Exception as err:  # torch.load raises many kinds on a foreign file
        raise CheckpointError(f"{path}: not a checkpoint ({type(err).__name__}: {err})") from err
    if not isinstance(state, dict) or not {"model", "config", "position"} <= state.keys():
        raise CheckpointError(f"{path}: not a scrapscan-train checkpoint (no model or config)")
    return state


def load_trained(
    path: Path, device: torch.device | str = "cpu", binary_mode: BinaryMode | None = None
) -> tuple[ScrapAnomalyModel, RunConfig]:
    """The model of a scrapscan-train checkpoint, in eval mode, and its configuration.

    `binary_mode` replaces the trained config's way of forming the binary anomaly map
    (it changes no weight: the map is formed from the same outputs at inference).
    """
    state = _read_checkpoint(path)
    try:
        cfg = parse_config(state["config"], str(path))
    except ConfigError as err:
        raise CheckpointError(str(err)) from err
    if binary_mode is not None:
        cfg = cfg.model_copy(
            update={"model": cfg.model.model_copy(update={"binary_mode": binary_mode})}
        )
    model = build_model(cfg.model.model_copy(update={"pretrained": None}))
    model.load_state_dict(state["model"])
    return model.to(device).eval(), cfg


PROMPT_FIT_STEPS = 1000
"""At most this many Adam steps fit the prompts to a bundle's text features."""
PROMPT_FIT_LOSS = 1e-5
"""The fit stops once the summed (1 - cosine) of all the features is below this."""
PROMPT_FIT_COSINE = 0.999
"""The least cosine of a fitted feature with the bundle's for the run to start."""


def init_weights(path: Path, model: ScrapAnomalyModel) -> dict[str, Any]:
    """Load a trained model's weights into `model` (on the CPU) to start a new run from.

    `path` is a scrapscan-train checkpoint (every weight is taken; into a model with
    k times its vision blocks as well, see `_deepened`) or a bundle folder
    with model.pt2: its image encoder and MSM weights are taken as they are; it keeps the
    text side only as the features the prompts produced, so the prompts are fitted to
    reproduce them through `model`'s frozen text tower. That works when the tower is the
    one the bundle's run had: the same pretrained CLIP, or for a config with random
    weights the same train.seed (cosine above 0.9999 in seconds for the tiny config;
    another seed's tower reaches about 0.96 and is refused). Returns what was done, for
    run.json. CheckpointError names the file when the model does not fit `model`'s
    configuration.
    """
    if path.is_dir():
        return _init_from_bundle(path, model)
    state = _read_checkpoint(path)
    weights, ratio = _deepened(state, model, path)
    _load(model, weights, path)
    done: dict[str, Any] = {
        "from": str(path.resolve()),
        "kind": "checkpoint",
        "step": state["position"]["step"],
    }
    if ratio > 1:
        blocks = len(model.visual.transformer.resblocks)
        done["deepened"] = {"from_blocks": blocks // ratio, "to_blocks": blocks}
    return done


_BLOCKS = "visual.transformer.resblocks."


def _deepened(
    state: dict[str, Any], model: ScrapAnomalyModel, path: Path
) -> tuple[dict[str, torch.Tensor], int]:
    """A checkpoint's weights laid out for `model`, and how many of its blocks each old one is.

    A model with k times the vision blocks of the checkpoint's (the same width) takes the
    old block i as its block k*i; the k-1 blocks after it keep their own initial weights
    but for zero output projections (attention and MLP), so they add nothing to
    the tokens and the deeper model answers as the checkpoint's did, as long as its
    feature layers and DPAM start are the old ones times k (checked here).
    """
    weights: dict[str, torch.Tensor] = state["model"]
    old = {int(k[len(_BLOCKS) :].split(".", 1)[0]) for k in weights if k.startswith(_BLOCKS)}
    blocks = len(model.visual.transformer.resblocks)
    if not old or blocks == len(old) or blocks % len(old):
        return weights, 1  # the same depth, or none this can lay out (_load says why)
    ratio = blocks // len(old)
    try:
        source = parse_config(state["config"], str(path)).model
    except ConfigError as err:
        raise CheckpointError(str(err)) from err
    cfg = model.cfg
    wanted: dict[str, object] = {
        "feature_layers": [layer * ratio for layer in source.feature_layers],
        "dpam": source.dpam,
    }
    if source.dpam:
        wanted["dpam_from_layer"] = (source.dpam_from_layer - 1) * ratio + 1
    have = {
        "feature_layers": list(cfg.feature_layers),
        "dpam": cfg.dpam,
        "dpam_from_layer": cfg.dpam_from_layer,
    }
    differ = [f"{k} {v!r} (this config: {have[k]!r})" for k, v in wanted.items() if v != have[k]]
    if differ:
        raise CheckpointError(
            f"{path}: {len(old)} vision blocks to this configuration's {blocks} keep its "
            f"answers only with {'; '.join(differ)}"
        )
    laid = dict(model.state_dict())
    for key, value in weights.items():
        if key.startswith(_BLOCKS):
            index, rest = key[len(_BLOCKS) :].split(".", 1)
            key = f"{_BLOCKS}{int(index) * ratio}.{rest}"
        laid[key] = value
    silent = ("attn.out_proj.weight", "attn.out_proj.bias", "mlp.c_proj.weight", "mlp.c_proj.bias")
    for key in [f"{_BLOCKS}{i}.{n}" for i in range(blocks) if i % ratio for n in silent]:
        if key in laid:  # a projection without bias has no bias entry
            laid[key] = torch.zeros_like(laid[key])
    return laid, ratio


def _load(model: ScrapAnomalyModel, state: dict[str, torch.Tensor], path: Path) -> None:
    try:
        model.load_state_dict(state)
    except RuntimeError as err:  # missing, unexpected or differently shaped weights
        detail = " ".join(str(err).split())
        raise CheckpointError(
            f"{path}: its model is not this configuration's ({detail[:600]})"
        ) from None


def _init_from_bundle(root: Path, model: ScrapAnomalyModel) -> dict[str, Any]:
    try:
        manifest = read_manifest(root)
    except BundleError as err:
        raise CheckpointError(str(err)) from None
    name = manifest.file("torch_export")
    if name is None:
        raise CheckpointError(
            f"{root}: the bundle has no model.pt2 (exported with --no-torch-export); "
            "start from its checkpoint instead"
        )
    cfg = model.cfg
    wanted = {
        "clip_model": (manifest.model.clip_model, cfg.clip_model),
        "prompt_mode": (manifest.model.prompt_mode, cfg.prompt_mode),
        "input_size": (manifest.input_size, cfg.input_size),
    } | {
        f"prompts.{k}": (manifest.prompts.get(k), v)
        for k, v in cfg.prompts.model_dump(mode="json").items()
    }
    differ = [f"{k} {a!r} (this config: {b!r})" for k, (a, b) in wanted.items() if a != b]
    if differ:
        raise CheckpointError(f"{root / 'manifest.json'}: {'; '.join(differ)}")
    try:
        program = torch.export.load(root / name)
    except Exception as err:  # a damaged or foreign archive
        raise CheckpointError(f"{root / name}: cannot be read ({type(err).__name__})") from err
    weights = {k.removeprefix("model."): v for k, v in program.state_dict.items()}
    target = (weights.pop("class_text", None), weights.pop("binary_text", None))
    if target[0] is None or target[1] is None:
        raise CheckpointError(f"{root / name}: holds no class_text and binary_text")
    image = {k for k in model.state_dict() if not k.startswith("text.")}
    if weights.keys() != image:
        raise CheckpointError(
            f"{root / name}: its image side has other weights than this configuration's "
            f"(missing {sorted(image - weights.keys())[:5]}, "
            f"extra {sorted(weights.keys() - image)[:5]})"
        )
    _load(model, {**model.state_dict(), **weights}, root / name)
    cosine = _fit_prompts(model, target[0], target[1])
    if cosine < PROMPT_FIT_COSINE:
        raise CheckpointError(
            f"{root / name}: the prompts cannot give its text features through this config's "
            f"text tower (cosine {cosine:.4f} at best, {PROMPT_FIT_COSINE} needed): train "
            "with the CLIP weights and train.seed of the run that made the bundle"
        )
    return {
        "from": str(root.resolve()),
        "kind": "bundle",
        "version": manifest.model.version,
        "prompt_fit_cosine": round(cosine, 6),
    }


def _fit_prompts(model: ScrapAnomalyModel, classes: torch.Tensor, binary: torch.Tensor) -> float:
    """Fit the prompts so the text tower gives these features; returns the lowest cosine."""
    params = list(model.text.prompts.parameters())
    optimizer = torch.optim.Adam(params, lr=1e-2)
    with torch.enable_grad():
        for _ in range(PROMPT_FIT_STEPS):
            got = model.text_features()
            loss = (1 - F.cosine_similarity(got.classes, classes)).sum() + (
                1 - F.cosine_similarity(got.binary, binary)
            ).sum()
            if loss.item() < PROMPT_FIT_LOSS:
                break
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
    with torch.no_grad():
        got = model.text_features()
        cos = torch.cat(
            [F.cosine_similarity(got.classes, classes), F.cosine_similarity(got.binary, binary)]
        )
    return float(cos.min())
