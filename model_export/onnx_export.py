"""ONNX files of the inference graph: fp32 with a dynamic batch axis, fp16, and checks.

fp32 comes from torch's dynamo exporter; fp16 is the fp32 graph converted by
onnxconverter-common with float32 inputs and outputs kept (the service feeds both the
same way). `simplify` runs onnxslim; BENCHMARKS.md says whether it pays.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from pathlib import Path

import onnx
import torch

from model_export.graph import INPUT_NAMES, OUTPUT_NAMES

OPSET = 18
# ConstantOfShape keeps a float32 value attribute the converter does not rewrite
_FP16_KEEP_FP32 = ("ConstantOfShape",)


def export_onnx(
    module: torch.nn.Module,
    path: Path,
    input_shape: tuple[int, ...],
    max_batch: int,
    input_names: Sequence[str] = INPUT_NAMES,
    output_names: Sequence[str] = OUTPUT_NAMES,
    example: torch.Tensor | None = None,
    fixed: Sequence[torch.Tensor] = (),
) -> None:
    """Write `module` as fp32 ONNX with batch axis 1..max_batch and check it with onnx.checker.

    `input_shape` is one item's shape, e.g. (3, 518, 518); `example` a batch of two to
    trace with (zeros of that shape by default). `fixed`: further inputs, their shapes
    fixed (no batch axis).
    """
    if example is None:
        example = torch.zeros(2, *input_shape)
    batch = torch.export.Dim("batch", min=1, max=max_batch)
    quiet = logging.getLogger("onnxscript")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # constant-folding notes, one per Split node
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module,
                (example, *fixed),
                str(path),
                dynamo=True,
                opset_version=OPSET,
                input_names=list(input_names),
                output_names=list(output_names),
                dynamic_shapes=({0: batch}, *(None for _ in fixed)),
                external_data=False,
                verbose=False,
            )
    finally:
        quiet.setLevel(level)
    onnx.checker.check_model(str(path), full_check=True)


def convert_fp16(src: Path, dst: Path) -> None:
    """Write the fp16 variant of `src` (float32 inputs and outputs) and check it."""
    from onnxconverter_common import float16

    model = onnx.load(str(src))
    # the exporter's intermediate type annotations would go stale around the kept-fp32 ops
    del model.graph.value_info[:]
    _detach_outputs(model.graph)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # one line per weight rounded to fp16's range
        half = float16.convert_float_to_float16(
            model,
            keep_io_types=True,
            op_block_list=[*float16.DEFAULT_OP_BLOCK_LIST, *_FP16_KEEP_FP32],
        )
    onnx.save(half, str(dst))
    onnx.checker.check_model(str(dst), full_check=True)


def _detach_outputs(graph: onnx.GraphProto) -> None:
    """Give each graph output that other nodes also read an Identity node of its own.

    The converter casts outputs back to float32 in place, so a node reading an output
    (the scores read the maps) would otherwise get float32 where it expects float16.
    """
    outputs = {o.name for o in graph.output}
    read = {name for node in graph.node for name in node.input} & outputs
    for name in read:
        inner = f"{name}_inner"
        for node in graph.node:
            node.output[:] = [inner if o == name else o for o in node.output]
            node.input[:] = [inner if i == name else i for i in node.input]
        graph.node.append(onnx.helper.make_node("Identity", [inner], [name], name=f"{name}_out"))


def simplify(path: Path) -> None:
    """Simplify the graph in place with onnxslim (constant folding, dead nodes)."""
    import onnxslim

    slim = onnxslim.slim(onnx.load(str(path)))
    onnx.save(slim, str(path))
    onnx.checker.check_model(str(path), full_check=True)
