"""scrapscan-export: freeze a scrapscan-train checkpoint into the bundle the service loads.

BUNDLE/manifest.json          what the model is, thresholds, metrics, every file's sha256
BUNDLE/model.onnx             fp32 inference graph, batch axis dynamic (model_export.graph)
BUNDLE/model.fp16.onnx        fp16 variant, float32 inputs and outputs
BUNDLE/model.pt2              torch.export program, for the service's PyTorch engine
BUNDLE/model.<gpu>.trt<v>.<precision>.plan   with --tensorrt, on a GPU with TensorRT
BUNDLE/region.onnx            with --region, the region encoder (model_export.region), or
                              with --region-from, an existing bundle's, copied
BUNDLE/text.onnx, tokenizer.json   the text tower and its tokenizer, for classes defined by
                              text at run time (model_export.text; not with --zero-shot-slots 0)

Every exported file is checked against the PyTorch model (model_export.parity) before
the bundle is written (a part reused with --bed-from or --region-from was checked when
its bundle was made, and that bundle is checked against its manifest's sha256 now); a
file out of tolerance stops the export. The bundle is written into a temporary folder
beside BUNDLE and renamed into place, so a failed export leaves no half bundle.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import get_args

from pydantic import TypeAdapter, ValidationError

from common.bundle import BundleError, Flip, Flips, Manifest, Refine, read_manifest
from common.cli import command
from common.repository import Repository, RepositoryError
from model_export import ExportError
from model_export.export import (
    DEFAULT_MAX_BED_FRACTION,
    DEFAULT_MIN_AREA,
    DEFAULT_THRESHOLD,
    ExportOptions,
    export_bundle,
)
from model_export.parity import ParityError
from model_export.tensorrt import PRECISIONS, TensorRTError
from training.checkpoint import CheckpointError
from training.evaluate import DEFAULT_SIGMA


def build_parser() -> argparse.ArgumentParser:
    """The command's arguments."""
    p = command("scrapscan-export", __doc__)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", type=Path, metavar="FILE", help="what to export")
    source.add_argument(
        "--bundle",
        type=Path,
        metavar="BUNDLE_DIR",
        help="with --repository: add this bundle, as exported before, to the repository "
        "instead (its files checked first); e.g. models/demo",
    )
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--out", type=Path, metavar="BUNDLE_DIR", help="the bundle folder to write")
    where.add_argument(
        "--repository",
        type=Path,
        metavar="REPO_DIR",
        help="add the bundle to this model repository as REPO_DIR/<name>/<version> (an "
        "existing version is never replaced); it becomes the active version when the "
        "repository has none yet (scrapscan-serve --repository serves the active one)",
    )
    p.add_argument(
        "--report",
        type=Path,
        metavar="REPORT_JSON",
        help="scrapscan-eval report: its F1-max threshold and sigma go into the manifest "
        f"(else threshold {DEFAULT_THRESHOLD}, sigma {DEFAULT_SIGMA}), and the bundle forms "
        "the binary map as the report did (scrapscan-eval --binary-mode); without a report, "
        "as the checkpoint's config says",
    )
    p.add_argument("--name", help="model name (default: the config's name)")
    p.add_argument("--version", help="model version (default: the UTC time of the export)")
    p.add_argument("--no-fp16", action="store_true", help="leave out model.fp16.onnx")
    p.add_argument("--no-torch-export", action="store_true", help="leave out model.pt2")
    p.add_argument(
        "--no-simplify",
        action="store_true",
        help="leave model.onnx as exported (default: simplified with onnxslim, which made it "
        "18%% faster on the CPU)",
    )
    p.add_argument("--max-batch", type=int, default=32, help="largest batch (32)")
    p.add_argument(
        "--min-area",
        type=int,
        default=DEFAULT_MIN_AREA,
        metavar="PX",
        help=f"smallest instance in full-frame pixels ({DEFAULT_MIN_AREA})",
    )
    p.add_argument(
        "--max-bed-fraction",
        type=float,
        default=DEFAULT_MAX_BED_FRACTION,
        help="instances covering more of the bed are not contaminants "
        f"({DEFAULT_MAX_BED_FRACTION})",
    )
    p.add_argument(
        "--tensorrt",
        action="store_true",
        help="also build a TensorRT engine for this machine's GPU (needs tensorrt)",
    )
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="fp16",
        help="TensorRT precision (fp16); int8 and fp8 need --calibration",
    )
    p.add_argument(
        "--calibration",
        type=Path,
        metavar="DIR",
        help="labelled frames whose patches calibrate int8/fp8",
    )
    p.add_argument(
        "--thresholds",
        type=Path,
        metavar="FILE",
        help="thresholds.json of scrapscan-eval --bundle --calibrate on a bundle of this "
        "checkpoint: per-class pixel thresholds, minimum instance area, minimum and reject "
        "scores go into the manifest (over --min-area and the report's threshold)",
    )
    p.add_argument(
        "--bed-model",
        type=Path,
        metavar="FILE",
        help="the learned bed cropper (scrapscan-train-bed) to put into the bundle as bed.onnx",
    )
    p.add_argument(
        "--bed-from",
        type=Path,
        metavar="BUNDLE_DIR",
        help="reuse the bed cropper (bed.onnx and its figures) of an existing bundle",
    )
    p.add_argument(
        "--region",
        type=Path,
        metavar="FILE",
        help="a scrapscan-region checkpoint: the region encoder that describes and checks "
        "each instance, as region.onnx with its descriptions' embeddings",
    )
    p.add_argument(
        "--region-from",
        type=Path,
        metavar="BUNDLE_DIR",
        help="reuse the region encoder (region.onnx, its descriptions and figures) of an "
        "existing bundle, e.g. when only the segmentation model was retrained",
    )
    p.add_argument(
        "--zero-shot-slots",
        type=int,
        default=4,
        metavar="K",
        help="how many classes defined by text (POST /v1/classes) the service can score at "
        "once (4); 0 leaves out the text tower and the graph's text input",
    )
    p.add_argument(
        "--refine",
        nargs=2,
        metavar=("RADIUS_PX", "EPS"),
        help="the service refines the merged maps with a guided filter, the frame as its "
        "guide, before any threshold: window radius in frame pixels and regularisation "
        "(e.g. 16 0.0001; default: no refinement). A --thresholds file must have been "
        "calibrated on a bundle refined the same way",
    )
    p.add_argument(
        "--flips",
        nargs="+",
        choices=get_args(Flip),
        default=[],
        metavar="VIEW",
        help="test-time flips: the service also runs each tile mirrored these ways "
        "(horizontal, vertical, both) and averages the maps over the views, the model "
        "running once more for each (default: none). A --thresholds file must have been "
        "calibrated on a bundle with the same flips",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing bundle")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.max_batch < 1 or args.min_area < 0 or not 0 < args.max_bed_fraction <= 1:
        parser.error("--max-batch must be >= 1, --min-area >= 0, --max-bed-fraction in (0, 1]")
    if args.refine is not None:
        try:
            args.refine = Refine(radius_px=args.refine[0], eps=args.refine[1])
        except ValidationError:
            parser.error(
                f"--refine {' '.join(args.refine)}: the radius is a whole number of pixels >= 1 "
                "and eps a number > 0, e.g. --refine 16 0.0001"
            )
    try:
        args.flips = TypeAdapter(Flips).validate_python(args.flips)
    except ValidationError:
        parser.error(f"--flips {' '.join(args.flips)}: each view once")
    if args.precision != "fp16" and (not args.tensorrt or args.calibration is None):
        parser.error(f"--precision {args.precision} needs --tensorrt and --calibration DIR")
    if args.bundle is not None and (args.repository is None or args.name or args.version):
        parser.error(
            "--bundle adds a bundle as it is to a --repository (its manifest names it: no "
            "--name or --version)"
        )
    if args.repository is not None:
        return _export_to_repository(args, parser)
    if args.out.exists() and not args.overwrite:
        print(
            f"scrapscan-export: {args.out} exists; pass --overwrite to replace it", file=sys.stderr
        )
        return 2
    options = _options(args)
    staged = args.out.with_name(f".{args.out.name}.old") if args.out.exists() else None
    if staged is not None:  # parts of the bundle being replaced are read where it is moved
        for part in ("bed_from", "region_from"):
            source = getattr(options, part)
            if source is not None and source.resolve() == args.out.resolve():
                options = replace(options, **{part: staged})
    try:
        if staged is not None:
            args.out.rename(staged)
        manifest = export_bundle(args.checkpoint, args.out, options)
    except (CheckpointError, ExportError, ParityError, TensorRTError) as err:
        if staged is not None:
            staged.rename(args.out)
        print(f"scrapscan-export: {err}", file=sys.stderr)
        return 1
    except BaseException:
        if staged is not None:
            staged.rename(args.out)
        raise
    if staged is not None:
        shutil.rmtree(staged)
    _said(manifest, args.out)
    return 0


def _said(manifest: Manifest, where: Path) -> None:
    sizes = ", ".join(f"{n} {f.bytes / 1e6:.1f} MB" for n, f in manifest.files.items())
    print(f"bundle {manifest.model.name} {manifest.model.version} at {where}: {sizes}")


def _options(args: argparse.Namespace) -> ExportOptions:
    return ExportOptions(
        name=args.name,
        version=args.version,
        report=args.report,
        fp16=not args.no_fp16,
        torch_export=not args.no_torch_export,
        simplify=not args.no_simplify,
        max_batch=args.max_batch,
        tensorrt=args.tensorrt,
        precision=args.precision,
        calibration=args.calibration,
        thresholds=args.thresholds,
        min_area_px=args.min_area,
        max_bed_fraction=args.max_bed_fraction,
        bed_model=args.bed_model,
        bed_from=args.bed_from,
        region=args.region,
        region_from=args.region_from,
        zero_shot_slots=args.zero_shot_slots,
        refine=args.refine,
        flips=args.flips,
    )


def _export_to_repository(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Export into REPO/.incoming-<pid>, then move it to REPO/<name>/<version>."""
    if args.overwrite:
        parser.error("--overwrite: a repository's versions are never replaced; export a new one")
    repo = Repository(args.repository)
    try:
        repo.check()
        if args.name is not None or args.version is not None:  # refused before the work
            repo.folder(args.name or "x", args.version or "x")
    except RepositoryError as err:
        print(f"scrapscan-export: {err}", file=sys.stderr)
        return 2
    if args.bundle is None and args.name is not None and args.version is not None:
        try:  # a version the repository holds already: refused before the export's minutes
            repo.free_folder(args.name, args.version)
        except RepositoryError as err:
            print(f"scrapscan-export: {err}", file=sys.stderr)
            return 1
    incoming = args.repository / f".incoming-{os.getpid()}"
    try:
        if args.bundle is None:
            export_bundle(args.checkpoint, incoming, _options(args))
            version, _ = repo.add(incoming, "scrapscan-export", move=True)
        else:  # the user's folder stays where it is
            version, _ = repo.add(args.bundle, "scrapscan-export")
    except (
        CheckpointError,
        ExportError,
        ParityError,
        TensorRTError,
        RepositoryError,
        BundleError,
    ) as err:
        print(f"scrapscan-export: {err}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(incoming, ignore_errors=True)
    manifest, target = read_manifest(version.path), version.path
    _said(manifest, target)
    active = repo.active()
    assert active is not None
    print(f"active version: {active.name} {active.version}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
