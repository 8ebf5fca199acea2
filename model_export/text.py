"""The text tower into the bundle, so that the service scores classes defined by text.

A yard names a new hazard ("gas cylinder") and gives prompts; the service tokenises them
(tokenizer.json, read by the `tokenizers` package: no torch), encodes them with
text.onnx (the model's frozen CLIP text tower, run without learned prompts) and feeds the
features to the image graph's `zero_shot_text` input (model_export.graph). Both files are
checked here: the tokenizer's ids against open_clip's own tokenizer on a set of prompts,
the ONNX features against PyTorch's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import open_clip
import torch

from model_export.onnx_export import export_onnx
from model_export.parity import single_output

TEXT_FILE = "text.onnx"
TOKENIZER_FILE = "tokenizer.json"
PARITY_LIMIT = 1e-4
MAX_PROMPTS = 64
"""The text graph's batch axis: prompts encoded in one call."""
DEFAULT_NORMAL_PROMPTS = (
    "a photo of steel scrap.",
    "a photo of a pile of scrap metal.",
    "a photo of rusty steel plates and beams.",
)
"""What a text-defined class is told apart from, unless its definition gives its own."""
CHECK_PROMPTS = (
    "a photo of a gas cylinder.",
    "Gas  Cylinder!!",
    "a battery, 12V lead-acid",
    "it's a rusty old tank's valve",
    "électrique moteur",
    "café naïve 123 4.5",
    "tab\tseparated\nlines",
    "a b c d " * 40,  # longer than the context: truncated with the end token kept
    *DEFAULT_NORMAL_PROMPTS,
)


class TextGraph(torch.nn.Module):
    """(P, L) int64 token ids -> (P, D) L2-normalised text features."""

    def __init__(self, text_encoder: Any) -> None:
        super().__init__()
        self.text = text_encoder

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """The plain text tower (training.model.TextEncoder.encode_plain)."""
        return self.text.encode_plain(tokens)  # type: ignore[no-any-return]


def write_tokenizer(out: Path) -> None:
    """open_clip's BPE tokenizer as a `tokenizers` file (transformers builds CLIP's pipeline)."""
    from transformers import CLIPTokenizer  # from transformers 5 on, the tokenizers-backed one

    bpe = open_clip.tokenizer._tokenizer
    merges = sorted(bpe.bpe_ranks, key=bpe.bpe_ranks.get)
    start, end = "<start_of_text>", "<end_of_text>"
    fast = CLIPTokenizer(
        vocab=dict(bpe.encoder),
        merges=[tuple(m) for m in merges],  # type: ignore[misc]  # typed str, takes pairs
        bos_token=start,
        eos_token=end,
        unk_token=end,
        pad_token=end,
    )
    fast.backend_tokenizer.save(str(out))


def tokenize(tokenizer_file: Path, prompts: list[str], context: int) -> np.ndarray[Any, Any]:
    """(P, context) int64 ids as the service makes them (service.zeroshot does the same)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_file))
    tok.enable_truncation(context)
    tok.enable_padding(length=context, pad_id=0)
    return np.array([e.ids for e in tok.encode_batch(prompts)], np.int64)


def export_text_tower(
    text_encoder: Any, work: Path, slots: int, temperature: float
) -> dict[str, Any]:
    """Write text.onnx and tokenizer.json into `work`; returns the manifest's zero_shot.

    Raises ValueError when the tokenizer or the ONNX file do not agree with PyTorch.
    """
    context = int(text_encoder.positional_embedding.shape[0])
    write_tokenizer(work / TOKENIZER_FILE)
    ids = tokenize(work / TOKENIZER_FILE, list(CHECK_PROMPTS), context)
    reference = open_clip.tokenize(list(CHECK_PROMPTS), context_length=context).numpy()
    if not np.array_equal(ids, reference):
        bad = [p for p, a, b in zip(CHECK_PROMPTS, ids, reference, strict=True) if (a != b).any()]
        raise ValueError(f"{TOKENIZER_FILE}: ids differ from open_clip's for {bad}")
    graph = TextGraph(text_encoder).eval()
    export_onnx(
        graph,
        work / TEXT_FILE,
        (context,),
        MAX_PROMPTS,
        input_names=("tokens",),
        output_names=("features",),
        example=torch.from_numpy(ids[:2]),
    )
    _, ref, diff = single_output(work / TEXT_FILE, graph, "tokens", ids)
    if diff > PARITY_LIMIT:
        raise ValueError(f"{TEXT_FILE}: max abs difference {diff:.2e} against PyTorch")
    return {
        "text_file": TEXT_FILE,
        "tokenizer_file": TOKENIZER_FILE,
        "context_length": context,
        "max_prompts": MAX_PROMPTS,
        "width": int(ref.shape[1]),
        "slots": slots,
        "temperature": temperature,
        "normal_prompts": list(DEFAULT_NORMAL_PROMPTS),
        "parity": {"max_abs": diff, "prompts": len(ids)},
    }
