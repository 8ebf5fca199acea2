"""The inference graph: images in, per-class maps and pooled scores out; no text tower.

After training the prompts are constants, so their text features are computed once and
kept as buffers; the graph is the image encoder, the similarity maps and the MSM heads.

inputs   images          float32 (N, 3, S, S), CLIP-normalised RGB (S = input size, 518)
         zero_shot_text  float32 (K, 2, D)  with K > 0 slots: per class defined by text, its
                                            normal prompts' and its own prompts' features
outputs  class_probs  float32 (N, C, g, g)  softmax over normal + the anomaly classes
         anomaly      float32 (N, g, g)     binary anomaly probability, as evaluated
         scores       float32 (N, C)        per-map maxima over the g x g cells: index 0 the
                                            anomaly map's, then each anomaly class's
         zero_shot    float32 (N, K, g, g)  with K > 0 slots: each text class's map
                                            (training.model.zero_shot_maps)
Upsampling to the tile and Gaussian smoothing are left to the service's merge stage. The
learned classes' outputs do not depend on `zero_shot_text`: the same stage tokens feed
both, and the text classes' maps are computed beside them.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from common.bundle import INPUT_NAMES, OUTPUT_NAMES, ZERO_SHOT_INPUT, ZERO_SHOT_OUTPUT
from training.model import ScrapAnomalyModel, TextFeatures, zero_shot_maps

__all__ = ["INPUT_NAMES", "OUTPUT_NAMES", "InferenceGraph"]


class InferenceGraph(nn.Module):
    """A frozen copy of a trained model with its text features as constants."""

    class_text: torch.Tensor
    binary_text: torch.Tensor

    def __init__(self, model: ScrapAnomalyModel, zero_shot_slots: int = 0) -> None:
        super().__init__()
        frozen = copy.deepcopy(model).eval()
        with torch.no_grad():
            text = frozen.text_features()
        del frozen.text  # the text tower is not part of the graph
        frozen.requires_grad_(False)
        self.model = frozen
        self.register_buffer("class_text", text.classes.detach().clone())
        self.register_buffer("binary_text", text.binary.detach().clone())
        self.input_size = model.cfg.input_size
        self.grid = model.grid
        self.classes = model.classes
        self.zero_shot_slots = zero_shot_slots
        self.width = int(self.class_text.shape[1])

    @property
    def input_names(self) -> tuple[str, ...]:
        """The graph's inputs, in order."""
        return (*INPUT_NAMES, ZERO_SHOT_INPUT) if self.zero_shot_slots else INPUT_NAMES

    @property
    def output_names(self) -> tuple[str, ...]:
        """The graph's outputs, in order."""
        return (*OUTPUT_NAMES, ZERO_SHOT_OUTPUT) if self.zero_shot_slots else OUTPUT_NAMES

    def forward(
        self, images: torch.Tensor, zero_shot_text: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, ...]:
        """See the module docstring."""
        stages = self.model.stage_tokens(images)
        out = self.model.heads(stages, TextFeatures(self.class_text, self.binary_text))
        class_max = out.class_probs.flatten(2).amax(dim=2)
        anomaly_max = out.anomaly.flatten(1).amax(dim=1, keepdim=True)
        scores = torch.cat([anomaly_max, class_max[:, 1:]], dim=1)
        if not self.zero_shot_slots:
            return out.class_probs, out.anomaly, scores
        if zero_shot_text is None:
            raise ValueError(
                f"the graph has {self.zero_shot_slots} text-class slots: give their text"
            )
        maps = zero_shot_maps(stages, zero_shot_text, self.model.cfg.temperature, self.grid)
        return out.class_probs, out.anomaly, scores, maps
