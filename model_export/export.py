"""Export a trained checkpoint into a bundle: the files, their parity checks, the manifest.

`export_bundle` is what scrapscan-export (model_export/cli.py) runs: the files it writes
are listed there. Every exported file is checked against the PyTorch model
(model_export.parity) before the bundle is written; a file out of tolerance stops the
export. The bundle is written into a temporary folder beside its target and renamed
into place, so a failed export leaves no half bundle.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from common.bundle import (
    MANIFEST,
    Bundle,
    BundleError,
    BundleFile,
    Flips,
    Manifest,
    Refine,
    load_bundle,
    sha256_of,
)
from common.classes import CLASS_NAMES
from common.imaging import CLIP_MEAN, CLIP_STD, normalize
from common.jsonfile import JSONFileError, read_json
from model_export import ExportError
from model_export.bed import BED_FILE, export_bed_model, read_bed_model
from model_export.graph import InferenceGraph
from model_export.onnx_export import convert_fp16, export_onnx, simplify
from model_export.parity import (
    Parity,
    compare,
    onnx_runner,
    parity_inputs,
    torch_runner,
    zero_shot_check_text,
)
from model_export.region import REGION_FILE, export_region_encoder, read_region_encoder
from model_export.tensorrt import build_engine, require_tensorrt
from model_export.text import TEXT_FILE, TOKENIZER_FILE, export_text_tower
from training.checkpoint import load_trained
from training.config import BinaryMode
from training.evaluate import DEFAULT_SIGMA

DEFAULT_THRESHOLD = 0.5
DEFAULT_MIN_AREA = 400
DEFAULT_MAX_BED_FRACTION = 0.5


@dataclass(frozen=True, slots=True)
class ExportOptions:
    """What to put into the bundle."""

    name: str | None = None
    version: str | None = None
    report: Path | None = None
    fp16: bool = True
    torch_export: bool = True
    simplify: bool = True
    max_batch: int = 32
    tensorrt: bool = False
    precision: str = "fp16"
    calibration: Path | None = None
    thresholds: Path | None = None
    min_area_px: int = DEFAULT_MIN_AREA
    max_bed_fraction: float = DEFAULT_MAX_BED_FRACTION
    bed_model: Path | None = None
    bed_from: Path | None = None
    region: Path | None = None
    """A scrapscan-region checkpoint: the region encoder that describes each instance."""
    region_from: Path | None = None
    """An existing bundle whose region encoder (file, descriptions, figures) is reused."""
    zero_shot_slots: int = 4
    """Classes defined by text the service can score at once (0: none, no text tower)."""
    refine: Refine | None = None
    """The guided filter of the merged maps the service applies before any threshold."""
    flips: Flips = ()
    """The mirrored views the service also runs each tile as, averaging the maps."""


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        data = read_json(path, what)
    except JSONFileError as err:
        raise ExportError(str(err)) from None
    if not isinstance(data, dict):
        raise ExportError(f"{path}: expected a JSON object ({what})")
    return data


def _evaluation(report: Path) -> dict[str, Any]:
    data = _read_json(report, "a scrapscan-eval report.json")
    pixel = data.get("pixel")
    if not isinstance(pixel, dict) or not isinstance(pixel.get("f1_threshold"), int | float):
        raise ExportError(f"{report}: no pixel.f1_threshold; is it a scrapscan-eval report?")
    if data.get("checkpoint") is None:
        raise ExportError(f"{report}: evaluates no checkpoint (a WinCLIP report?)")
    modes = [m.value for m in BinaryMode]
    if data.get("binary_mode") not in modes:
        raise ExportError(
            f"{report}: binary_mode {data.get('binary_mode')!r} is not one of {', '.join(modes)}"
        )
    return data


def _refined_as(refine: Any) -> str:
    if not isinstance(refine, dict):
        return "not refined"
    return f"refined as --refine {refine.get('radius_px')} {refine.get('eps')}"


def _flipped_as(flips: Any) -> str:
    return f"with --flips {' '.join(map(str, flips))}" if flips else "without flips"


def _calibrated(
    path: Path,
    checkpoint: Path,
    mode: str,
    sigma: float,
    refine: Refine | None,
    flips: Flips = (),
) -> dict[str, Any]:
    """The thresholds of `scrapscan-eval --bundle --calibrate`, checked against this export.

    They hold for the maps of the bundle they were chosen on: the same checkpoint, binary
    mode, smoothing, refinement and test-time flips (a thresholds.json from before flips
    existed was calibrated without). Returns the manifest's postprocess fields they set.
    """
    data = _read_json(path, "the thresholds.json of scrapscan-eval --bundle --calibrate")
    fields = ("pixel", "classes", "min_area_px", "min_score", "reject_score", "bundle")
    missing = [k for k in fields if k not in data]
    if missing:
        raise ExportError(f"{path}: no {', '.join(missing)}; is it a thresholds.json?")
    made = data["bundle"]
    source = str((made.get("source") or {}).get("checkpoint", ""))
    if not source or Path(source).resolve() != checkpoint.resolve():
        raise ExportError(
            f"{path}: calibrated on the bundle of {source or 'an unknown checkpoint'}, not of "
            f"{checkpoint}; calibrate a bundle of this checkpoint"
        )
    if made.get("binary_mode") != mode or made.get("sigma") != sigma:
        raise ExportError(
            f"{path}: calibrated on maps formed as {made.get('binary_mode')} with sigma "
            f"{made.get('sigma')}; this export forms them as {mode} with sigma {sigma}"
        )
    theirs = made.get("refine")
    ours = None if refine is None else refine.model_dump()
    if theirs != ours:
        raise ExportError(
            f"{path}: calibrated on maps {_refined_as(theirs)}; this export's maps are "
            f"{_refined_as(ours)}"
        )
    theirs_flips = made.get("flips") or []
    if not isinstance(theirs_flips, list) or not all(isinstance(f, str) for f in theirs_flips):
        raise ExportError(f"{path}: bundle.flips must list the views by name")
    if sorted(theirs_flips) != sorted(flips):
        raise ExportError(
            f"{path}: calibrated on maps {_flipped_as(theirs_flips)}; this export's maps are "
            f"{_flipped_as(flips)}"
        )
    classes = data["classes"]
    if not isinstance(classes, list) or len(classes) != len(CLASS_NAMES) - 1:
        raise ExportError(f"{path}: classes must list one threshold per contaminant class")
    scores = [data["pixel"], *classes, data["min_score"], data["reject_score"]]
    if not all(isinstance(v, int | float) and 0 <= v <= 1 for v in scores):
        raise ExportError(f"{path}: thresholds and scores must be numbers in [0, 1]")
    if not isinstance(data["min_area_px"], int) or data["min_area_px"] < 0:
        raise ExportError(f"{path}: min_area_px must be a whole number of pixels >= 0")
    margin = data.get("verify_margin")
    if margin is not None and not isinstance(margin, int | float):
        raise ExportError(f"{path}: verify_margin must be a number or null")
    return {
        "verify_margin": margin,
        "verify_region": made.get("region"),
        "pixel_threshold": data["pixel"],
        "threshold_source": "calibrated",
        "class_thresholds": dict(zip(CLASS_NAMES[1:], classes, strict=True)),
        "min_area_px": data["min_area_px"],
        "min_score": data["min_score"],
        "reject_score": data["reject_score"],
        "calibration": data.get("calibration", {}),
    }


def _training_metrics(checkpoint: Path) -> dict[str, Any]:
    """The run's last logged losses (metrics.jsonl) and the facts of run.json, when present."""
    run = checkpoint.parent
    out: dict[str, Any] = {}
    if (run / "run.json").is_file():
        facts = _read_json(run / "run.json", "the run's facts")
        out["run"] = {k: facts[k] for k in ("git_revision", "data", "patches") if k in facts}
    if (run / "metrics.jsonl").is_file():
        lines = [json.loads(s) for s in (run / "metrics.jsonl").read_text().splitlines() if s]
        logged = [d for d in lines if "loss" in d]
        if logged:
            out["last_logged"] = logged[-1]
        done = [d["epochs_done"] for d in lines if "epochs_done" in d]
        if done:
            out["epochs_done"] = done[-1]
    return out


def _calibration_patches(folder: Path, input_size: int, limit: int = 256) -> npt.NDArray[Any]:
    from training.data import PatchSet, load_frames

    patches = PatchSet(load_frames(folder), input_size=input_size)
    picks = np.linspace(0, len(patches) - 1, min(limit, len(patches))).astype(int)
    return np.stack([normalize(patches[int(i)].image) for i in picks])


_PARTS = {"bed_model": ("--bed-from", "bed model"), "region": ("--region-from", "region encoder")}


def _reused(bundle_dir: Path, part: str) -> tuple[Bundle, Any]:
    """An existing bundle and its `part` (a manifest field: "bed_model" or "region").

    The bundle is checked against its manifest (its files' sha256) before anything of it is
    copied.
    """
    flag, what = _PARTS[part]
    try:
        bundle = load_bundle(bundle_dir)
    except BundleError as err:
        raise ExportError(f"{flag}: {err}") from None
    info = getattr(bundle.manifest, part)
    if info is None:
        raise ExportError(f"{bundle_dir / MANIFEST}: {flag}: the bundle has no {what}")
    return bundle, info


def _copy_part(
    reused: tuple[Bundle, Any],
    work: Path,
    name: str,
    kind: str,
    files: dict[str, BundleFile],
    parity: dict[str, dict[str, object]],
) -> dict[str, Any]:
    """Copy a part of another bundle (`_reused`) into `work` as `name`, as it is.

    Its parity figures are the ones of the bundle it comes from (checked when that bundle
    was exported), with which bundle that is; returns the part's manifest entry.
    """
    source, info = reused
    shutil.copyfile(source.path(info.file), work / name)
    made = source.manifest.model
    parity[name] = {
        **source.manifest.metrics.get("parity", {}).get(info.file, {}),
        "from": f"{source.root} ({made.name} {made.version})",
    }
    files[name] = _entry(work / name, kind, "fp32")
    return {**info.model_dump(mode="json"), "file": name}


def _entry(path: Path, kind: str, precision: str | None, **extra: Any) -> BundleFile:
    return BundleFile.model_validate(
        {
            "kind": kind,
            "precision": precision,
            "sha256": sha256_of(path),
            "bytes": path.stat().st_size,
            **extra,
        }
    )


def export_bundle(
    checkpoint: Path, out: Path, options: ExportOptions = ExportOptions(), log: Any = print
) -> Manifest:
    """Write the bundle for `checkpoint` to `out` (which must not exist); returns its manifest."""
    if options.tensorrt:
        require_tensorrt()  # fail before the slow part
    evaluation = _evaluation(options.report) if options.report else None
    # the report's threshold holds for the map it evaluated: the bundle forms that map
    mode = BinaryMode(evaluation["binary_mode"]) if evaluation else None
    model, cfg = load_trained(checkpoint, binary_mode=mode)
    threshold = DEFAULT_THRESHOLD
    sigma = DEFAULT_SIGMA
    if evaluation is not None:
        threshold = float(evaluation["pixel"]["f1_threshold"])
        sigma = float(evaluation.get("sigma", DEFAULT_SIGMA))
    if options.bed_model is not None and options.bed_from is not None:
        raise ExportError("give the bed cropper once: --bed-model or --bed-from, not both")
    reused = None if options.bed_from is None else _reused(options.bed_from, "bed_model")
    if options.region is not None and options.region_from is not None:
        raise ExportError("give the region encoder once: --region or --region-from, not both")
    kept_region = None if options.region_from is None else _reused(options.region_from, "region")
    bed = None if options.bed_model is None else read_bed_model(options.bed_model)
    try:  # the parts' files are read before the slow part, so a wrong one costs nothing
        region = None if options.region is None else read_region_encoder(options.region)
    except ValueError as err:
        raise ExportError(f"--region: {err}") from None
    calibrated = (  # checked before the slow part
        {}
        if options.thresholds is None
        else _calibrated(
            options.thresholds,
            checkpoint,
            cfg.model.binary_mode.value,
            sigma,
            options.refine,
            options.flips,
        )
    )
    margin, verified_with = (
        calibrated.pop("verify_margin", None),
        calibrated.pop("verify_region", None),
    )
    # the region encoder's checkpoint, whether exported now or reused from a bundle
    region_source = options.region
    if kept_region is not None:  # None when that bundle does not say which checkpoint
        made_from = kept_region[1].metrics.get("checkpoint")
        region_source = None if made_from is None else Path(str(made_from))
    if margin is not None and (
        region_source is None or Path(str(verified_with)).resolve() != region_source.resolve()
    ):
        raise ExportError(
            f"{options.thresholds}: its verify_margin was chosen for the region encoder "
            f"{verified_with}; pass that checkpoint as --region (or a bundle of it as "
            "--region-from)"
        )
    graph = InferenceGraph(model, options.zero_shot_slots).eval()
    slots = options.zero_shot_slots
    text = zero_shot_check_text(slots, graph.width) if slots else None
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    work.chmod(0o755)  # mkdtemp makes it private; a bundle is read by the service user
    try:
        files: dict[str, BundleFile] = {}
        parity: dict[str, dict[str, object]] = {}
        inputs = parity_inputs(cfg.model.input_size)
        reference = torch_runner(graph, text)

        def checked(name: str, precision: str, result: Parity) -> None:
            result.check(precision, str(out / name))
            parity[name] = result.as_dict()
            log(
                f"  {name}: parity max abs {max(result.max_abs.values()):.1e}, argmax "
                f"agreement {result.argmax_agreement:.4%} on {result.inputs} inputs"
            )

        start = time.perf_counter()
        size = cfg.model.input_size
        fixed = () if text is None else (torch.from_numpy(text),)
        export_onnx(
            graph,
            work / "model.onnx",
            (3, size, size),
            options.max_batch,
            graph.input_names,
            graph.output_names,
            fixed=fixed,
        )
        if options.simplify:
            simplify(work / "model.onnx")
        got = compare(reference, onnx_runner(work / "model.onnx", text), inputs)
        checked("model.onnx", "fp32", got)
        files["model.onnx"] = _entry(work / "model.onnx", "onnx", "fp32")
        if options.fp16:
            convert_fp16(work / "model.onnx", work / "model.fp16.onnx")
            got = compare(reference, onnx_runner(work / "model.fp16.onnx", text), inputs)
            checked("model.fp16.onnx", "fp16", got)
            files["model.fp16.onnx"] = _entry(work / "model.fp16.onnx", "onnx", "fp16")
        if options.torch_export:
            example = torch.zeros(2, 3, cfg.model.input_size, cfg.model.input_size)
            batch = torch.export.Dim("batch", min=1, max=options.max_batch)
            program = torch.export.export(
                graph, (example, *fixed), dynamic_shapes=({0: batch}, *(None for _ in fixed))
            )
            program.example_inputs = None  # else saved with the program: 6 MB of zeros
            torch.export.save(program, work / "model.pt2")
            loaded = torch.export.load(work / "model.pt2").module()
            checked("model.pt2", "fp32", compare(reference, torch_runner(loaded, text), inputs))
            files["model.pt2"] = _entry(
                work / "model.pt2", "torch_export", "fp32", max_batch=options.max_batch
            )
        bed_info: dict[str, Any] | None = None
        if bed is not None:
            bed_info = export_bed_model(bed, work / BED_FILE)
            parity[BED_FILE] = bed_info.pop("parity")
            files[BED_FILE] = _entry(work / BED_FILE, "bed_model", "fp32")
            log(f"  {BED_FILE}: parity max abs {parity[BED_FILE]['max_abs']:.1e}")
        elif reused is not None:
            bed_info = _copy_part(reused, work, BED_FILE, "bed_model", files, parity)
            log(f"  {BED_FILE}: from {reused[0]}")
        region_info: dict[str, Any] | None = None
        if region is not None:
            try:
                region_info = export_region_encoder(region, work / REGION_FILE, options.max_batch)
            except ValueError as err:
                raise ExportError(f"--region: {err}") from None
            parity[REGION_FILE] = region_info.pop("parity")
            region_info.update(verify_margin=margin, drop_unverified=margin is not None)
            files[REGION_FILE] = _entry(work / REGION_FILE, "region_encoder", "fp32")
            log(f"  {REGION_FILE}: parity max abs {parity[REGION_FILE]['max_abs']:.1e}")
        elif kept_region is not None:
            region_info = _copy_part(
                kept_region, work, REGION_FILE, "region_encoder", files, parity
            )
            # the margin is this export's calibration's, not the source bundle's
            region_info.update(verify_margin=margin, drop_unverified=margin is not None)
            log(f"  {REGION_FILE}: from {kept_region[0]}")
        zero_shot: dict[str, Any] | None = None
        if slots:
            try:
                zero_shot = export_text_tower(model.text, work, slots, cfg.model.temperature)
            except ValueError as err:
                raise ExportError(f"text tower: {err}") from None
            files[TEXT_FILE] = _entry(work / TEXT_FILE, "text_encoder", "fp32")
            files[TOKENIZER_FILE] = _entry(work / TOKENIZER_FILE, "tokenizer", None)
            log(f"  {TEXT_FILE}: parity max abs {zero_shot['parity']['max_abs']:.1e}")
        if options.tensorrt:
            calib = (
                _calibration_patches(options.calibration, cfg.model.input_size)
                if options.calibration
                else None
            )
            engine = build_engine(
                work / "model.onnx",
                work,
                cfg.model.input_size,
                options.precision,
                options.max_batch,
                calib,
            )
            files[engine.name] = _entry(
                work / engine.name,
                "tensorrt",
                engine.precision,
                max_batch=engine.max_batch,
                target={"gpu": engine.gpu, "tensorrt": engine.tensorrt},
            )
        log(f"  exported and checked in {time.perf_counter() - start:.1f} s")

        manifest = Manifest.model_validate(
            {
                "schema_version": 1,
                "model": {
                    "name": options.name or cfg.name,
                    "version": options.version or datetime.now(UTC).strftime("%Y%m%d.%H%M%S"),
                    "created_at": datetime.now(UTC),
                    "clip_model": cfg.model.clip_model,
                    "prompt_mode": cfg.model.prompt_mode,
                    "binary_mode": cfg.model.binary_mode.value,
                    "source": {"checkpoint": str(checkpoint), "config": cfg.name},
                },
                "classes": CLASS_NAMES
                if graph.classes == len(CLASS_NAMES)
                else ("normal", "anomaly"),
                "input_size": cfg.model.input_size,
                "tile_size": cfg.data.tile_size,
                "overlap": cfg.data.overlap,
                "grid": graph.grid,
                "mean": CLIP_MEAN,
                "std": CLIP_STD,
                "inputs": graph.input_names,
                "outputs": graph.output_names,
                "postprocess": {
                    "pixel_threshold": threshold,
                    "threshold_source": "f1_max" if evaluation is not None else "default",
                    "sigma": sigma,
                    "min_area_px": options.min_area_px,
                    "max_bed_fraction": options.max_bed_fraction,
                    "refine": options.refine,
                    "flips": options.flips,
                    **calibrated,
                },
                "prompts": cfg.model.prompts.model_dump(mode="json"),
                "metrics": {
                    "training": _training_metrics(checkpoint),
                    "evaluation": None
                    if evaluation is None
                    else {
                        k: evaluation.get(k)
                        for k in ("data", "patches", "sigma", "pixel", "per_class_ap")
                    },
                    "parity": parity,
                },
                "files": files,
                "bed_model": bed_info,
                "region": region_info,
                "zero_shot": zero_shot,
            }
        )
        (work / MANIFEST).write_text(manifest.model_dump_json(indent=2) + "\n")
        load_bundle(work)  # what the service will do
        work.rename(out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return manifest
