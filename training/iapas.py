"""IAP-AS (seed 002): zero-shot anomaly segmentation with image-aware prompts, as an evaluator.

No training: four pretrained models, each loaded from local files.

1. Tagging (step 1-1): tags of normal scrap from normal patches. The paper uses the
   Recognize Anything Model; it has no package on PyPI and its code is not here, so the
   tagger is CLIP zero-shot tagging over a vocabulary file (`tagger.vocabulary`, one tag a
   line): each normal patch's `top_k` tags by CLIP similarity, the most frequent `max_tags`
   over the patches kept, tags naming anomalies (`tagger.exclude`) left out. The report
   says which tagger ran.
2. Size threshold (step 1-2): Grounding DINO run with the tags on the normal patches; the
   largest box found (as a share of the image) is the size of a normal object, and a
   candidate anomaly box that large or larger is dropped (`thresholds.size` overrides;
   `thresholds.size_default`, the paper's 0.8, when no box is found).
3. Prompts (step 1-3): per contaminant class, its names, and `templates` over its names and
   the tags ("{thing} among {tag}"); with `prompts.llm` (an OpenAI-compatible endpoint, off
   by default) the language model's adjective clauses for the class among the tags as
   well; the fixed prompts ("abnormal object", "defect") go into an anomaly-only run. The
   prompts are written into the report; `prompts.from_report` reuses a report's, so that a
   run repeats without the language model.
4. Segmentation (steps 2-1 to 2-4): per class, Grounding DINO boxes for its prompts over
   the box and text thresholds, NMS at `thresholds.nms_iou`, boxes over the size threshold
   dropped; SAM masks inside the boxes; the score map is the sum of each box's confidence
   times its mask (the paper's Score_a), clipped to [0, 1]. A class's map sums its own
   boxes; the anomaly map all of them (and the fixed prompts').

Grounding DINO and SAM are `transformers`' own classes, read with `from_pretrained` from a
folder (weights, config, processor and tokenizer files, as `save_pretrained` writes them).
`scrapscan-eval --iap-as CONFIG` evaluates it on patches exactly as a trained checkpoint.
"""

from __future__ import annotations

import collections
import os
import random
from pathlib import Path
from typing import Annotated, Any

import cv2
import numpy as np
import numpy.typing as npt
import open_clip
import torch
from pydantic import Field

from common.classes import ANOMALY_CLASSES
from common.imaging import CLIP_MEAN, CLIP_STD, normalize
from training.config import ModelConfig, _Strict, load_as
from training.model import ModelOutput, WeightsError, create_clip

Probability = Annotated[float, Field(ge=0, le=1)]


CLASS_WORDS: dict[str, tuple[str, ...]] = {
    "motor": ("electric motor", "motor"),
    "cable": ("cable", "electric wire"),
    "spray_can": ("spray can", "aerosol can"),
}


class TaggerConfig(_Strict):
    """CLIP zero-shot tagging of normal patches over a vocabulary."""

    clip: ModelConfig = ModelConfig(clip_model="ViT-B-16", pretrained="openai", input_size=224)
    vocabulary: Path
    """One tag a line (blank lines and lines starting with # are skipped)."""
    normal_images: Annotated[int, Field(ge=1)] = 16
    top_k: Annotated[int, Field(ge=1)] = 5
    max_tags: Annotated[int, Field(ge=1)] = 8
    exclude: tuple[str, ...] = ("crack", "scratch", "defect", "damage")
    template: str = "a photo of {}."


class LLMConfig(_Strict):
    """An OpenAI-compatible chat endpoint that writes adjective clauses (off by default)."""

    url: str
    """Its base URL, e.g. http://llm.yard.local/v1 (the route is /chat/completions)."""
    model: str
    api_key_env: str | None = None
    """The environment variable holding its key, if it needs one."""
    clauses: Annotated[int, Field(ge=1, le=20)] = 4
    timeout_s: Annotated[float, Field(gt=0)] = 60.0


class PromptsConfig(_Strict):
    """How each contaminant class is asked for."""

    classes: dict[str, tuple[str, ...]] = Field(default_factory=lambda: dict(CLASS_WORDS))
    """Per contaminant class, the names it is asked for by (the first in the templates)."""
    templates: tuple[str, ...] = ("{thing} among {tag}",)
    fixed: tuple[str, ...] = ("abnormal object", "defect")
    llm: LLMConfig | None = None
    from_report: Path | None = None
    """A report.json of an earlier run: its prompts are used as they are."""


class ThresholdConfig(_Strict):
    """The detection thresholds (the paper's values for objects)."""

    box: Probability = 0.2
    text: Probability = 0.2
    nms_iou: Probability = 0.5
    size: Probability | None = None
    """A box covering this share of the image or more is dropped; None: fitted (step 1-2)."""
    size_default: Probability = 0.8


class IAPASConfig(_Strict):
    """configs/iap-as.yaml."""

    name: str = "iap-as"
    grounding_dino: Path
    sam: Path
    tagger: TaggerConfig
    prompts: PromptsConfig = PromptsConfig()
    thresholds: ThresholdConfig = ThresholdConfig()
    seed: int = 111


def load_iapas_config(path: Path) -> IAPASConfig:
    """The config, with every weights folder and file it names checked before any work.

    ConfigError naming the file and field for a wrong field; WeightsError for a missing
    weights folder or file.
    """
    cfg = load_as(IAPASConfig, path)
    for field, folder in (("grounding_dino", cfg.grounding_dino), ("sam", cfg.sam)):
        if not (folder / "config.json").is_file():
            raise WeightsError(
                f"{path}: {field}: {folder} is not a folder of weights (no config.json); "
                f"give the folder that from_pretrained reads, as save_pretrained writes it"
            )
    if not cfg.tagger.vocabulary.is_file():
        raise WeightsError(f"{path}: tagger.vocabulary: {cfg.tagger.vocabulary} is not a file")
    weights, clip_model = cfg.tagger.clip.pretrained, cfg.tagger.clip.clip_model
    tags = open_clip.list_pretrained_tags_by_model(clip_model)
    if weights is not None and not Path(weights).is_file() and weights not in tags:
        raise WeightsError(
            f"{path}: tagger.clip.pretrained: {weights} is neither a file nor a weights tag "
            f"of {clip_model}"
        )
    if cfg.prompts.from_report is not None and not cfg.prompts.from_report.is_file():
        raise WeightsError(f"{path}: prompts.from_report: {cfg.prompts.from_report} is not a file")
    return cfg


def _load(cls: Any, folder: Path, device: torch.device) -> Any:
    """A transformers model from a save_pretrained folder, on `device`, in eval mode."""
    return cls.from_pretrained(folder).to(device).eval()


def _rgb(x: torch.Tensor) -> list[npt.NDArray[np.uint8]]:
    """CLIP-normalised (B, 3, S, S) back to (S, S, 3) uint8 RGB images."""
    mean = torch.tensor(CLIP_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=x.device).view(1, 3, 1, 1)
    images = ((x * std + mean).clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1)
    return list(images.cpu().numpy())


class IAPAS:
    """The IAP-AS pipeline: a Scorer for training.evaluate (normalised patches in)."""

    def __init__(self, cfg: IAPASConfig, device: torch.device | str = "cpu") -> None:
        from transformers import (
            GroundingDinoForObjectDetection,
            GroundingDinoProcessor,
            SamModel,
            SamProcessor,
        )

        self.cfg = cfg
        self.device = torch.device(device)
        self.dino = _load(GroundingDinoForObjectDetection, cfg.grounding_dino, self.device)
        self.dino_processor = GroundingDinoProcessor.from_pretrained(cfg.grounding_dino)
        self.sam = _load(SamModel, cfg.sam, self.device)
        self.sam_processor = SamProcessor.from_pretrained(cfg.sam)
        self.tags: list[str] = []
        self.prompts: dict[str, list[str]] = {}
        self.prompt_source = "templates"
        self.size_threshold = cfg.thresholds.size_default
        self.size_source = "default"

    # --- stage 1: preprocessing ---------------------------------------------------------

    def prepare(self, normal: list[npt.NDArray[np.uint8]]) -> None:
        """Steps 1-1 to 1-3 on normal RGB patches: tags, size threshold, prompts."""
        self.tags = self.tag(normal)
        t = self.cfg.thresholds
        if t.size is not None:
            self.size_threshold, self.size_source = t.size, "config"
        else:
            sizes = [
                float(b[2] - b[0]) * float(b[3] - b[1]) / (image.shape[0] * image.shape[1])
                for image in normal
                for b, _ in self.detect(image, self.tags)
            ]
            if sizes:
                self.size_threshold = max(sizes)
                self.size_source = f"fitted: the largest of {len(sizes)} boxes of normal objects"
            else:
                self.size_source = "default: Grounding DINO found no normal object"
        self.prompts, self.prompt_source = self.make_prompts(self.tags)

    def tag(self, images: list[npt.NDArray[np.uint8]]) -> list[str]:
        """Step 1-1: CLIP zero-shot tags over the vocabulary, the most frequent kept."""
        c = self.cfg.tagger
        lines = c.vocabulary.read_text().splitlines()
        vocab = [w.strip() for w in lines if w.strip() and not w.startswith("#")]
        vocab = [w for w in vocab if w not in c.exclude]
        clip = create_clip(c.clip).to(self.device).eval()
        tokens = open_clip.tokenize([c.template.format(w) for w in vocab]).to(self.device)
        size = c.clip.input_size
        counts: collections.Counter[str] = collections.Counter()
        with torch.no_grad():
            text = torch.nn.functional.normalize(clip.encode_text(tokens), dim=-1)
            for image in images:
                small = np.asarray(
                    cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA), np.uint8
                )
                x = torch.from_numpy(normalize(small)[None]).to(self.device)
                feature = torch.nn.functional.normalize(clip.encode_image(x), dim=-1)
                best = (feature @ text.T)[0].topk(min(c.top_k, len(vocab))).indices
                counts.update(vocab[int(i)] for i in best)
        return [w for w, _ in counts.most_common(c.max_tags)]

    def make_prompts(self, tags: list[str]) -> tuple[dict[str, list[str]], str]:
        """Step 1-3: per class, its prompts (and "anomaly": the fixed ones); and their source."""
        p = self.cfg.prompts
        if p.from_report is not None:
            return read_stage_one(p.from_report)[1], str(p.from_report)
        out: dict[str, list[str]] = {}
        for name in ANOMALY_CLASSES:
            things = p.classes.get(name, (name.replace("_", " "),))
            phrases = list(things)
            phrases += [t.format(thing=things[0], tag=tag) for t in p.templates for tag in tags]
            if p.llm is not None:
                phrases += [f"{things[0]} {c}" for c in self._clauses(p.llm, things[0], tags)]
            out[name] = list(dict.fromkeys(phrases))
        out["anomaly"] = list(p.fixed)
        return out, "templates" if p.llm is None else f"templates and {p.llm.model} at {p.llm.url}"

    @staticmethod
    def _clauses(llm: LLMConfig, thing: str, tags: list[str]) -> list[str]:
        """The language model's adjective clauses for `thing` among the tags (Eq. 1)."""
        import httpx

        ask = (
            f"A crane camera looks down on a truck of steel scrap: {', '.join(tags)}. "
            f"Write {llm.clauses} short adjective clauses, one a line and nothing else, that "
            f"describe how a {thing} would look lying among them (for example: 'with copper "
            f"windings', 'half buried under rusty plates')."
        )
        headers = {}
        if llm.api_key_env:
            headers["Authorization"] = f"Bearer {os.environ.get(llm.api_key_env, '')}"
        body = {"model": llm.model, "messages": [{"role": "user", "content": ask}]}
        url = f"{llm.url.rstrip('/')}/chat/completions"
        try:
            r = httpx.post(
                url, json={**body, "temperature": 0}, headers=headers, timeout=llm.timeout_s
            )
            r.raise_for_status()
            text = str(r.json()["choices"][0]["message"]["content"])
        except (httpx.HTTPError, ValueError, KeyError, IndexError, TypeError) as err:
            raise ValueError(
                f"prompts.llm: {url}: no clauses ({type(err).__name__}: {err})"
            ) from None
        lines = [s.strip().lstrip("-*0123456789. ").strip() for s in text.splitlines()]
        return [s for s in lines if s][: llm.clauses]

    def use_report(self, path: Path) -> None:
        """Stage 1's outcome from a report of `scrapscan-eval --iap-as` (read_stage_one)."""
        self.tags, self.prompts, self.size_threshold = read_stage_one(path)
        self.prompt_source = self.size_source = str(path)

    # --- stage 2: segmentation ------------------------------------------------------------

    def detect(self, image: npt.NDArray[np.uint8], phrases: list[str]) -> list[tuple[Any, float]]:
        """Step 2-1 and NMS: (x0, y0, x1, y1) boxes in pixels and their confidence."""
        from torchvision.ops import nms  # type: ignore[import-untyped]

        if not phrases:
            return []
        t = self.cfg.thresholds
        text = ". ".join(phrases) + "."
        inputs = self.dino_processor(images=image, text=text, return_tensors="pt").to(self.device)
        with torch.no_grad():
            out = self.dino(**inputs)
        found = self.dino_processor.post_process_grounded_object_detection(
            out,
            inputs["input_ids"],
            threshold=t.box,
            text_threshold=t.text,
            target_sizes=[image.shape[:2]],
        )[0]
        boxes, scores = found["boxes"], found["scores"]
        if len(boxes) == 0:
            return []
        keep = nms(boxes.float(), scores.float(), t.nms_iou)
        return [(boxes[i].tolist(), float(scores[i])) for i in keep]

    def segment(self, image: npt.NDArray[np.uint8], boxes: list[Any]) -> npt.NDArray[np.bool_]:
        """Step 2-3: (K, H, W) SAM masks inside the boxes."""
        inputs = self.sam_processor(images=image, input_boxes=[boxes], return_tensors="pt")
        inputs = inputs.to(self.device)
        with torch.no_grad():
            out = self.sam(**inputs, multimask_output=False)
        masks = self.sam_processor.image_processor.post_process_masks(
            out.pred_masks.cpu(),
            inputs["original_sizes"].cpu(),
            inputs["reshaped_input_sizes"].cpu(),
        )[0]
        return np.asarray(masks[:, 0].numpy(), bool)

    def score(self, image: npt.NDArray[np.uint8]) -> dict[str, npt.NDArray[np.float32]]:
        """Per class (and "anomaly"), the sum of box confidence times SAM mask (step 2-4)."""
        h, w = image.shape[:2]
        maps = {}
        for name, phrases in self.prompts.items():
            kept = [
                (b, s)
                for b, s in self.detect(image, phrases)
                if (b[2] - b[0]) * (b[3] - b[1]) / (h * w) < self.size_threshold  # step 2-2
            ]
            total = np.zeros((h, w), np.float32)
            if kept:
                masks = self.segment(image, [b for b, _ in kept])
                for mask, (_, s) in zip(masks, kept, strict=True):
                    total += np.float32(s) * mask
            maps[name] = total
        return maps

    def __call__(self, x: torch.Tensor) -> ModelOutput:
        """Maps for CLIP-normalised (B, 3, S, S) patches, as a trained model answers."""
        anomalies, classes = [], []
        for image in _rgb(x):
            maps = self.score(image)
            per_class = np.stack(
                [maps.get(c, np.zeros(image.shape[:2], np.float32)) for c in ANOMALY_CLASSES]
            )
            anomaly = np.clip(per_class.sum(0) + maps.get("anomaly", 0.0), 0, 1)
            per_class = np.clip(per_class, 0, 1)
            classes.append(np.concatenate([1 - anomaly[None], per_class]))
            anomalies.append(anomaly)
        anomaly_t = torch.from_numpy(np.stack(anomalies))
        class_t = torch.from_numpy(np.stack(classes))
        return ModelOutput((), (), class_t, anomaly_t)

    def describe(self) -> dict[str, Any]:
        """What the report keeps of this run: enough to repeat it."""
        c = self.cfg
        return {
            "config": c.name,
            "grounding_dino": str(c.grounding_dino),
            "sam": str(c.sam),
            "tagger": (
                f"CLIP zero-shot tagging ({c.tagger.clip.clip_model}, "
                f"{c.tagger.clip.pretrained or 'random weights'}) over {c.tagger.vocabulary}; "
                "the paper's Recognize Anything Model has no package to load it with"
            ),
            "tags": self.tags,
            "prompts": self.prompts,
            "prompt_source": self.prompt_source,
            "size_threshold": round(self.size_threshold, 6),
            "size_source": self.size_source,
            "thresholds": c.thresholds.model_dump(mode="json"),
            "seed": c.seed,
        }


def read_stage_one(path: Path) -> tuple[list[str], dict[str, list[str]], float]:
    """The tags, prompts and size threshold a `scrapscan-eval --iap-as` report keeps.

    ValueError naming the file when it cannot be read or holds no IAP-AS run.
    """
    import json

    try:
        given = json.loads(path.read_text()).get("iap_as")
    except (OSError, ValueError, AttributeError) as err:
        raise ValueError(f"{path}: not a readable report.json ({err})") from None
    if not isinstance(given, dict) or not {"tags", "prompts", "size_threshold"} <= set(given):
        raise ValueError(f"{path}: no iap_as tags, prompts and size_threshold in it")
    prompts = {str(k): [str(v) for v in vs] for k, vs in dict(given["prompts"]).items()}
    return [str(t) for t in given["tags"]], prompts, float(given["size_threshold"])


def normal_patches(patches: Any, count: int, seed: int) -> list[npt.NDArray[np.uint8]]:
    """Up to `count` RGB patches without a contaminant pixel, drawn with `seed` (all if none)."""
    clean = [i for i, row in enumerate(patches.pixel_counts()) if row[1:].sum() == 0]
    pool = clean or list(range(len(patches)))
    picks = random.Random(seed).sample(pool, min(count, len(pool)))
    return [patches[i].image for i in sorted(picks)]
