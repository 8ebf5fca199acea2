"""Finetuning the CLIP-based anomaly segmentation model on a yard's labelled frames.

Subpackages: `training.synth` (synthetic crane frames), `training.data` (reading labelled
frames and cutting training patches). Importing this package does not import torch.
"""
