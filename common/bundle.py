"""The model bundle: a folder with manifest.json and the model files it lists.

The manifest says what the model is (classes, geometry, normalisation, thresholds,
prompts, the training metrics) and lists every file with its sha256. `load_bundle`
checks the schema and every hash and refuses a bundle that does not match, naming the
file. `model_export` writes bundles; the service only reads them and never imports
training code.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Final, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from common.jsonfile import JSONFileError, read_json

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"

INPUT_NAMES: Final = ("images",)
"""The model's input: (N, 3, input_size, input_size) float32, normalised with mean/std."""
OUTPUT_NAMES: Final = ("class_probs", "anomaly", "scores")
"""The model's outputs: (N, C, grid, grid) class probabilities (normal first), the
(N, grid, grid) anomaly map, and (N, C) scores."""

ZERO_SHOT_INPUT: Final = "zero_shot_text"
"""With text-class slots (manifest `zero_shot`): (K, 2, D) float32, per slot the features of
the normal prompts and of the class's prompts (zeros for an unused slot)."""
ZERO_SHOT_OUTPUT: Final = "zero_shot"
"""With text-class slots: (N, K, grid, grid) each slot's probability map."""

PARITY_TOLERANCE: Final = {"fp32": 1e-4, "fp16": 1e-2}
"""How far a file of the bundle may answer from the model (max abs difference of any output)
at each precision: checked by the export, and by an engine that lowers the precision at load."""
MIN_ARGMAX_AGREEMENT: Final = 0.999
"""The least share of cells whose most likely class a lower-precision run must keep."""

FileKind = Literal[
    "onnx", "torch_export", "tensorrt", "bed_model", "region_encoder", "text_encoder", "tokenizer"
]
Precision = Literal["fp32", "fp16", "int8", "fp8"]
Flip = Literal["horizontal", "vertical", "both"]
"""A mirrored view of a tile: left-right, top-bottom, or both (a half turn)."""


def _once_each(flips: tuple[Flip, ...]) -> tuple[Flip, ...]:
    if len(set(flips)) != len(flips):
        raise ValueError(f"lists a view twice: {list(flips)}")
    return flips


Flips = Annotated[tuple[Flip, ...], AfterValidator(_once_each)]
"""Test-time flips, each view at most once (manifest, export options, results)."""


class BundleError(ValueError):
    """A bundle cannot be used; the message names the file and the problem."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelInfo(_Strict):
    """Which model this is and where it came from."""

    name: str
    version: str
    created_at: datetime
    clip_model: str
    prompt_mode: Literal["multiclass", "binary"]
    binary_mode: str
    source: dict[str, Any] = {}
    """The checkpoint, its training step, the git revision of the run."""


Probability = Annotated[float, Field(ge=0, le=1)]


class Refine(_Strict):
    """Edge-aware refinement of the merged maps: a guided filter with the frame as its guide.

    The model scores a 512 px tile on a 37 x 37 grid (cells of about 14 px), so a cable 6 px
    wide lights a band several times its width. The guided filter (He, Sun and Tang, 2013)
    makes each map locally a linear function of the frame's colours, so the lit band
    narrows to the pixels that look like what lit it.
    """

    radius_px: Annotated[int, Field(ge=1)]
    """The filter's window radius in frame pixels."""
    eps: Annotated[float, Field(gt=0)]
    """Its regularisation, for a guide scaled to [0, 1]: larger keeps the maps smoother."""


class Postprocess(_Strict):
    """How the service turns probability maps into instances and a frame into a verdict."""

    pixel_threshold: Probability
    """The anomaly map's threshold (for every class unless `class_thresholds` are given)."""
    threshold_source: Literal["f1_max", "default", "calibrated"]
    class_thresholds: dict[str, Probability] | None = None
    """Per contaminant class: a cell is on when its anomaly probability reaches the
    threshold of its most likely class (calibrated on a validation split)."""
    min_score: Probability = 0.0
    """Instances scoring less are not reported: a frame whose instances all score less is
    clean (calibrated for a target share of clean frames flagged)."""
    reject_score: Probability | None = None
    """A frame whose strongest instance scores this or more is rejected, below it is
    inspected; None leaves it to the service's setting."""
    calibration: dict[str, Any] = {}
    """How the calibrated values were chosen: the data, the targets, the figures."""
    sigma: Annotated[float, Field(ge=0)]
    """Gaussian smoothing (pixels at input size) the model was evaluated with."""
    min_area_px: Annotated[int, Field(ge=0)]
    """Instances smaller than this (full-frame pixels) are dropped."""
    max_bed_fraction: Annotated[float, Field(gt=0, le=1)]
    """Instances covering more than this fraction of the bed are dropped: not contaminants."""
    refine: Refine | None = None
    """The merged maps' edge-aware refinement, before any threshold (None: none)."""
    flips: Flips = ()
    """Test-time flips: each tile also goes through the model mirrored these ways, and its
    maps are the mean over the views (the tile as it is among them), mirrored back; the
    model's time a tile grows with the number of views. Empty: each tile runs once."""


class BundleFile(_Strict):
    """One model file of the bundle."""

    kind: FileKind
    precision: Precision | None
    """None for a file that holds no weights (the tokenizer)."""
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    bytes: Annotated[int, Field(ge=0)]
    max_batch: int | None = None
    """Engines and exports with a bounded batch axis."""
    target: dict[str, str] = {}
    """For a TensorRT engine: the GPU and TensorRT version it was built for."""


class BedModelInfo(_Strict):
    """The learned bed cropper (bed.onnx).

    Input (N, 3, height, width) RGB in [-1, 1]; output `bed_probs` (N, 1, height, width).
    """

    file: str
    input_height: Annotated[int, Field(gt=0)]
    input_width: Annotated[int, Field(gt=0)]
    threshold: Annotated[float, Field(gt=0, lt=1)] = 0.5
    metrics: dict[str, Any] = {}


class RegionDescription(_Strict):
    """A description an instance can be given, and the class it speaks of."""

    text: str
    class_name: str


class RegionInfo(_Strict):
    """The region encoder (region.onnx, training.region): describes and checks instances.

    Input `region` (N, 4, S, S): the crop CLIP-normalised and, as the fourth channel, the
    instance's mask in [0, 1] (common.regions cuts both); output `embedding` (N, D),
    L2-normalised. An instance's description is the one of highest cosine similarity;
    its verification score is the best contaminant description's similarity minus the
    best plain one's; below `verify_margin` it is unverified, and with
    `drop_unverified` it does not count towards the frame's verdict.
    """

    file: str
    input_size: Annotated[int, Field(gt=0)]
    context: Annotated[float, Field(ge=0)]
    min_crop: Annotated[int, Field(gt=0)]
    descriptions: tuple[RegionDescription, ...]
    embeddings: tuple[tuple[float, ...], ...]
    """(len(descriptions), D) the descriptions through the text tower, L2-normalised."""
    verify_margin: float | None = None
    drop_unverified: bool = False
    metrics: dict[str, Any] = {}

    @model_validator(mode="after")
    def _one_embedding_per_description(self) -> RegionInfo:
        if len(self.embeddings) != len(self.descriptions) or not self.descriptions:
            raise ValueError(
                f"{len(self.descriptions)} descriptions but {len(self.embeddings)} embeddings"
            )
        if len({len(e) for e in self.embeddings}) != 1:
            raise ValueError("embeddings of different lengths")
        return self


class ZeroShotInfo(_Strict):
    """Classes defined by text at run time (model_export.text, service.zeroshot).

    The image graph takes `zero_shot_text` (slots, 2, width) and answers `zero_shot`
    maps; text.onnx takes `tokens` (P, context_length) int64, P <= max_prompts, made with
    tokenizer.json, and answers `features` (P, width), L2-normalised. A class's feature is
    the normalised mean of its prompts' features.
    """

    text_file: str
    tokenizer_file: str
    context_length: Annotated[int, Field(gt=2)]
    max_prompts: Annotated[int, Field(gt=0)]
    width: Annotated[int, Field(gt=0)]
    slots: Annotated[int, Field(gt=0)]
    """How many text-defined classes the graph scores at once."""
    temperature: Annotated[float, Field(gt=0)]
    normal_prompts: tuple[str, ...]
    """What a class is told apart from when its definition gives no normal prompts."""
    parity: dict[str, Any] = {}


class Manifest(_Strict):
    """manifest.json."""

    schema_version: Literal[1]
    model: ModelInfo
    classes: tuple[str, ...]
    input_size: Annotated[int, Field(gt=0)]
    tile_size: Annotated[int, Field(gt=0)]
    overlap: Annotated[int, Field(ge=0)]
    grid: Annotated[int, Field(gt=0)]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    postprocess: Postprocess
    prompts: dict[str, Any]
    metrics: dict[str, Any]
    files: dict[str, BundleFile]
    bed_model: BedModelInfo | None = None
    region: RegionInfo | None = None
    zero_shot: ZeroShotInfo | None = None

    @model_validator(mode="after")
    def _thresholds_name_the_classes(self) -> Manifest:
        given = self.postprocess.class_thresholds
        if given is not None and set(given) != set(self.classes[1:]):
            raise ValueError(
                f"postprocess.class_thresholds names {sorted(given)}, the bundle's "
                f"contaminant classes are {list(self.classes[1:])}"
            )
        if self.region is not None:
            unknown = {d.class_name for d in self.region.descriptions} - set(self.classes)
            if unknown:
                raise ValueError(f"region descriptions of unknown classes {sorted(unknown)}")
            if self.region.file not in self.files:
                raise ValueError(f"region.file {self.region.file} is not among the files")
        z = self.zero_shot
        if z is not None:
            missing = {z.text_file, z.tokenizer_file} - set(self.files)
            if missing:
                raise ValueError(f"zero_shot files {sorted(missing)} are not among the files")
        return self

    @property
    def graph_inputs(self) -> tuple[str, ...]:
        """The image graph's inputs the service feeds, in order."""
        return INPUT_NAMES if self.zero_shot is None else (*INPUT_NAMES, ZERO_SHOT_INPUT)

    @property
    def graph_outputs(self) -> tuple[str, ...]:
        """The image graph's outputs the service reads, in order."""
        return OUTPUT_NAMES if self.zero_shot is None else (*OUTPUT_NAMES, ZERO_SHOT_OUTPUT)

    def file(self, kind: FileKind, precision: Precision | None = None) -> str | None:
        """The name of the first file of `kind` (and `precision`), or None."""
        for name, f in self.files.items():
            if f.kind == kind and (precision is None or f.precision == precision):
                return name
        return None


def servable(manifest: Manifest) -> list[str]:
    """Why a service that feeds INPUT_NAMES and reads OUTPUT_NAMES cannot serve the bundle.

    (With the zero_shot section, also ZERO_SHOT_INPUT and ZERO_SHOT_OUTPUT.)

    Empty when it can. Normalisation, input size, tile geometry and thresholds are the
    bundle's own and any valid values are served as they are.
    """
    problems = []
    feeds, reads = manifest.graph_inputs, manifest.graph_outputs
    if tuple(manifest.inputs) != feeds:
        problems.append(f"inputs {list(manifest.inputs)}; the service feeds {list(feeds)}")
    if tuple(manifest.outputs) != reads:
        problems.append(f"outputs {list(manifest.outputs)}; the service reads {list(reads)}")
    if len(manifest.classes) < 2 or manifest.classes[0] != "normal":
        problems.append(
            f"classes {list(manifest.classes)}; the first must be normal, then the contaminants"
        )
    if manifest.overlap >= manifest.tile_size:
        problems.append(
            f"overlap {manifest.overlap} is not smaller than tile_size {manifest.tile_size}"
        )
    if not all(s > 0 for s in manifest.std):
        problems.append(f"std {list(manifest.std)} has a value that is not positive")
    return problems


class Bundle:
    """A checked bundle: its folder and manifest."""

    def __init__(self, root: Path, manifest: Manifest) -> None:
        self.root = root
        self.manifest = manifest

    def path(self, name: str) -> Path:
        """The path of a file the manifest lists."""
        if name not in self.manifest.files:
            raise KeyError(f"{self.root / MANIFEST} lists no file {name!r}")
        return self.root / name

    def __repr__(self) -> str:
        m = self.manifest.model
        return f"Bundle({str(self.root)!r}, {m.name} {m.version})"


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def read_manifest(root: Path) -> Manifest:
    """Parse and validate ROOT/manifest.json; BundleError names the file and each wrong field."""
    path = root / MANIFEST
    try:
        data = read_json(path, f"is {root} a model bundle?")
    except JSONFileError as err:
        raise BundleError(str(err)) from None
    if isinstance(data, dict) and data.get("schema_version") not in (SCHEMA_VERSION, None):
        raise BundleError(
            f"{path}: schema_version {data.get('schema_version')!r} is not supported "
            f"(this service reads version {SCHEMA_VERSION})"
        )
    try:
        return Manifest.model_validate(data)
    except ValidationError as err:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(top level)'}: {e['msg']}"
            for e in err.errors()
        )
        raise BundleError(f"{path}: {problems}") from None


def load_bundle(path: Path | str, verify: bool = True, serving: bool = False) -> Bundle:
    """The bundle at `path`, with every listed file present and matching its sha256.

    Raises BundleError naming the file that is missing, has another size or another hash.
    `verify=False` skips the hashes (sizes are still checked). `serving=True` also refuses
    a bundle the service cannot serve (`servable`), with the reasons.
    """
    root = Path(path)
    if not root.is_dir():
        raise BundleError(f"{root}: not a folder (a bundle is a folder with {MANIFEST})")
    manifest = read_manifest(root)
    for name, entry in manifest.files.items():
        file = root / name
        if Path(name).name != name:
            raise BundleError(f"{root / MANIFEST}: file name {name!r} is not a plain name")
        if not file.is_file():
            raise BundleError(f"{file}: listed in {MANIFEST} but missing")
        size = file.stat().st_size
        if size != entry.bytes:
            raise BundleError(
                f"{file}: {size} bytes, {MANIFEST} says {entry.bytes}; the bundle is damaged"
            )
        if verify and sha256_of(file) != entry.sha256:
            raise BundleError(
                f"{file}: sha256 differs from {MANIFEST}; the file was changed or damaged"
            )
    problems = servable(manifest) if serving else []
    if problems:
        raise BundleError(f"{root / MANIFEST}: the service cannot serve it: {'; '.join(problems)}")
    return Bundle(root, manifest)
