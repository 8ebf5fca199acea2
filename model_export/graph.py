"""The inference graph: images in, per-class maps and pooled scores out; no text tower.

After training the prompts are constants, so their text features are computed once and
kept as buffers; the graph is the image encoder, the similarity maps and the MSM heads.

inputs   images       float32 (N, 3, S, S), CLIP-normalised RGB (S = input size, 518)
outputs  class_probs  float32 (N, C, g, g)  softmax over normal + the anomaly classes
         anomaly      float32 (N, g, g)     binary anomaly probability, as evaluated
         scores       float32 (N, C)        per-map maxima over the g x g cells: index 0 the
                                            anomaly map's, then each anomaly class's
Upsampling to the tile and Gaussian smoothing are left to the service's merge stage.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from common.bundle import INPUT_NAMES, OUTPUT_NAMES
from training.model import ScrapAnomalyModel, TextFeatures

__all__ = ["INPUT_NAMES", "OUTPUT_NAMES", "InferenceGraph"]


class InferenceGraph(nn.Module):
    """A frozen copy of a trained model with its text features as constants."""

    class_text: torch.Tensor
    binary_text: torch.Tensor

    def __init__(self, model: ScrapAnomalyModel) -> None:
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

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """See the module docstring."""
        out = self.model(images, TextFeatures(self.class_text, self.binary_text))
        class_max = out.class_probs.flatten(2).amax(dim=2)
        anomaly_max = out.anomaly.flatten(1).amax(dim=1, keepdim=True)
        scores = torch.cat([anomaly_max, class_max[:, 1:]], dim=1)
        return out.class_probs, out.anomaly, scores
