"""Synthetic crane frames: steel scrap in truck beds, with motors, cables and spray cans.

`render_frame` draws one frame and its labels in memory; `write_dataset` writes a data
folder in the layout every scrapscan tool reads (images/, masks/, annotations.json).
"""

from training.synth.frame import Instance, SyntheticFrame, render_frame
from training.synth.writer import write_dataset

__all__ = ["Instance", "SyntheticFrame", "render_frame", "write_dataset"]
