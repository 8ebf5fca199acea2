import json
import shutil

import numpy as np
import onnxruntime as ort
import pytest
import torch

from common.bundle import BundleError, Refine, load_bundle
from model_export import parity as checks
from model_export.cli import main
from model_export.export import ExportOptions, export_bundle
from model_export.graph import OUTPUT_NAMES, InferenceGraph
from model_export.tensorrt import TensorRTError, build_engine, engine_name
from training.checkpoint import load_trained
from training.config import BinaryMode

from ..conftest import CONFIGS

pytestmark = pytest.mark.slow

DEMO = CONFIGS.parent / "models" / "demo"


@pytest.fixture(scope="module")
def checkpoint(tiny_checkpoint):
    return tiny_checkpoint


@pytest.fixture(scope="module")
def bundle(checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("bundles") / "tiny"
    export_bundle(checkpoint, out, ExportOptions(name="tiny-test", version="1"), log=lambda _: None)
    return out


@pytest.fixture(scope="module")
def graph(checkpoint):
    model, _ = load_trained(checkpoint)
    return InferenceGraph(model, zero_shot_slots=4).eval()


TEXT = checks.zero_shot_check_text(4, 64, seed=7)
"""Other text-class features than the export checked itself with."""


@pytest.fixture(scope="module")
def fresh_inputs():
    """Other inputs than the export checked itself on: other noise, other frames."""
    return checks.parity_inputs(518, random=3, synthetic=5, seed=11)


def test_graph_outputs_and_no_text_tower(graph):
    x = torch.randn(2, 3, 518, 518)
    with torch.no_grad():
        probs, anomaly, scores, texts = graph(x, torch.from_numpy(TEXT))
    assert probs.shape == (2, 4, 37, 37) and anomaly.shape == (2, 37, 37)
    assert texts.shape == (2, 4, 37, 37) and 0 <= texts.min() <= texts.max() <= 1
    torch.testing.assert_close(probs.sum(1), torch.ones(2, 37, 37))
    torch.testing.assert_close(scores[:, 0], anomaly.flatten(1).amax(1))
    torch.testing.assert_close(scores[:, 1:], probs[:, 1:].flatten(2).amax(2))
    assert not any(name.startswith("model.text.") for name, _ in graph.named_parameters())


def test_fp32_onnx_matches_pytorch(bundle, graph, fresh_inputs):
    parity = checks.compare(
        checks.torch_runner(graph, TEXT),
        checks.onnx_runner(bundle / "model.onnx", TEXT),
        fresh_inputs,
    )
    assert max(parity.max_abs.values()) <= 1e-4
    assert parity.argmax_agreement >= 0.999
    parity.check("fp32", "model.onnx")


def test_fp16_onnx_matches_pytorch(bundle, graph, fresh_inputs):
    parity = checks.compare(
        checks.torch_runner(graph, TEXT),
        checks.onnx_runner(bundle / "model.fp16.onnx", TEXT),
        fresh_inputs,
    )
    assert max(parity.max_abs.values()) <= 1e-2
    assert parity.argmax_agreement >= 0.999
    assert max(parity.max_abs.values()) > 0  # it is another precision, not the same file


def test_torch_export_matches_pytorch(bundle, graph, fresh_inputs):
    program = torch.export.load(bundle / "model.pt2").module()
    parity = checks.compare(
        checks.torch_runner(graph, TEXT), checks.torch_runner(program, TEXT), fresh_inputs
    )
    assert set(parity.max_abs) == {"class_probs", "anomaly", "scores", "zero_shot"}
    assert max(parity.max_abs.values()) <= 1e-4


@pytest.mark.parametrize("n", [1, 5])
def test_onnx_batch_axis_is_dynamic(bundle, n):
    session = ort.InferenceSession(str(bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == [*OUTPUT_NAMES, "zero_shot"]
    x = np.zeros((n, 3, 518, 518), np.float32)
    out = session.run(None, {"images": x, "zero_shot_text": TEXT})
    assert [o.shape for o in out] == [(n, 4, 37, 37), (n, 37, 37), (n, 4), (n, 4, 37, 37)]


def test_manifest_describes_the_bundle(bundle):
    loaded = load_bundle(bundle)
    m = loaded.manifest
    assert m.model.name == "tiny-test" and m.classes == ("normal", "motor", "cable", "spray_can")
    assert (m.input_size, m.tile_size, m.overlap, m.grid) == (518, 512, 64, 37)
    assert set(m.files) == {
        "model.onnx",
        "model.fp16.onnx",
        "model.pt2",
        "text.onnx",
        "tokenizer.json",
    }
    assert m.file("onnx", "fp16") == "model.fp16.onnx" and m.file("tensorrt") is None
    assert m.postprocess.threshold_source == "default"
    assert set(m.metrics["parity"]) == {"model.onnx", "model.fp16.onnx", "model.pt2"}
    assert not list(bundle.parent.glob(".tiny.*"))  # the temporary folder is gone


@pytest.fixture
def copy_of(bundle, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(bundle, out)
    return out


def test_one_changed_byte_is_refused_naming_the_file(copy_of):
    target = copy_of / "model.fp16.onnx"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x01
    target.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"model\.fp16\.onnx: sha256 differs"):
        load_bundle(copy_of)
    load_bundle(copy_of, verify=False)  # sizes still agree


def test_truncated_and_missing_files_are_refused(copy_of):
    (copy_of / "model.pt2").write_bytes((copy_of / "model.pt2").read_bytes()[:-1])
    with pytest.raises(BundleError, match=r"model\.pt2: \d+ bytes, manifest.json says"):
        load_bundle(copy_of)
    (copy_of / "model.pt2").unlink()
    with pytest.raises(BundleError, match=r"model\.pt2: listed in manifest.json but missing"):
        load_bundle(copy_of)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: m.update(schema_version=7), "schema_version 7 is not supported"),
        (lambda m: m.pop("classes"), "classes: Field required"),
        (lambda m: m["postprocess"].update(pixel_threshold=3), "pixel_threshold"),
        (lambda m: m["files"]["model.onnx"].update(sha256="xyz"), "sha256"),
        (lambda m: m["files"].update({"../x.onnx": m["files"]["model.onnx"]}), "not a plain"),
    ],
)
def test_wrong_manifests_are_refused(copy_of, edit, message):
    path = copy_of / "manifest.json"
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=message) as err:
        load_bundle(copy_of)
    assert "manifest.json" in str(err.value)


def test_unreadable_manifest_and_non_bundles(copy_of, tmp_path):
    (copy_of / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError, match="manifest.json: not readable JSON"):
        load_bundle(copy_of)
    with pytest.raises(BundleError, match="not a folder"):
        load_bundle(tmp_path / "nowhere")
    with pytest.raises(BundleError, match="is .* a model bundle"):
        load_bundle(tmp_path)


def test_parity_check_fails_beyond_the_limits(graph):
    inputs = checks.parity_inputs(518, random=2, synthetic=0)
    reference = checks.torch_runner(graph, TEXT)

    def drifting(x):
        return tuple(o + 2e-4 for o in reference(x))

    parity = checks.compare(reference, drifting, inputs)
    parity.check("fp16", "drifting")  # within fp16's limit
    with pytest.raises(checks.ParityError, match=r"drifting: max abs difference 2\.0\de-04"):
        parity.check("fp32", "drifting")
    with pytest.raises(checks.ParityError, match="argmax agreement"):
        checks.Parity({"class_probs": 0.0}, 0.99, 1).check("fp32", "swapped")


def test_an_export_whose_file_drifts_is_refused_and_writes_nothing(
    checkpoint, tmp_path, capsys, monkeypatch
):
    """export_bundle itself applies the parity limits: a file out of them stops the export
    with its name, and neither the bundle nor its work folder is left behind."""
    from model_export import export as export_module

    real = export_module.onnx_runner

    def runner(path, text=None):
        run = real(path, text)
        if path.name != "model.fp16.onnx":
            return run
        return lambda x: tuple(o + 0.05 for o in run(x))  # beyond fp16's limit

    monkeypatch.setattr(export_module, "onnx_runner", runner)
    out = tmp_path / "bundle"
    assert main(["--checkpoint", str(checkpoint), "--out", str(out), "--no-torch-export"]) == 1
    assert "model.fp16.onnx: max abs difference" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_report_threshold_goes_into_the_manifest(checkpoint, tmp_path, capsys):
    report = tmp_path / "report.json"
    report.write_text(
        json.dumps(
            {
                "checkpoint": str(checkpoint),
                "data": "d",
                "patches": 3,
                "sigma": 2.0,
                "binary_mode": "averaged_prompt",
                "pixel": {"auroc": 0.9, "ap": 0.6, "f1_max": 0.5, "f1_threshold": 0.37},
                "per_class_ap": {"motor": 0.5, "cable": None, "spray_can": 0.2},
            }
        )
    )
    out = tmp_path / "b"
    args = ["--checkpoint", str(checkpoint), "--out", str(out), "--report", str(report)]
    assert main([*args, "--no-fp16", "--no-torch-export", "--min-area", "100"]) == 0
    m = load_bundle(out).manifest
    assert (m.postprocess.pixel_threshold, m.postprocess.sigma) == (0.37, 2.0)
    assert m.postprocess.threshold_source == "f1_max" and m.postprocess.min_area_px == 100
    assert m.metrics["evaluation"]["pixel"]["ap"] == 0.6
    assert set(m.files) == {"model.onnx", "text.onnx", "tokenizer.json"}
    assert "bundle tiny" in capsys.readouterr().out
    assert main(args) == 2  # exists
    assert "pass --overwrite" in capsys.readouterr().err


def test_the_bundle_forms_the_binary_map_the_report_evaluated(checkpoint, tmp_path):
    """A report scored with another --binary-mode than the checkpoint's: its threshold is
    for the report's map, so the bundle forms that one."""
    _, cfg = load_trained(checkpoint)
    other = next(m for m in BinaryMode if m != cfg.model.binary_mode)
    report = tmp_path / "report.json"
    pixel = {"auroc": 0.9, "ap": 0.6, "f1_max": 0.5, "f1_threshold": 0.42}
    report.write_text(
        json.dumps({"checkpoint": "c", "binary_mode": other.value, "sigma": 4.0, "pixel": pixel})
    )
    out = tmp_path / "b"
    export_bundle(
        checkpoint,
        out,
        ExportOptions(report=report, fp16=False, torch_export=False),
        log=lambda _: None,
    )
    assert load_bundle(out).manifest.model.binary_mode == other.value
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    x = checks.parity_inputs(518, random=1, synthetic=1, seed=5)
    _, anomaly, *_ = session.run(None, {"images": x, "zero_shot_text": TEXT})
    wanted, _ = load_trained(checkpoint, binary_mode=other)
    own, _ = load_trained(checkpoint)
    with torch.no_grad():
        np.testing.assert_allclose(anomaly, wanted(torch.from_numpy(x)).anomaly.numpy(), atol=1e-4)
        assert np.abs(own(torch.from_numpy(x)).anomaly.numpy() - anomaly).max() > 1e-3


def _thresholds(checkpoint, **bundle):
    made = {"source": {"checkpoint": str(checkpoint)}, "binary_mode": "class_sum", "sigma": 4.0}
    return {
        "bundle": {**made, **bundle},
        "pixel": 0.5,
        "classes": [0.45, 0.6, 0.3],
        "min_area_px": 900,
        "max_bed_fraction": 0.5,
        "min_score": 0.71,
        "reject_score": 0.93,
        "calibration": {"frames": 48, "clean_frames": 11},
    }


def test_calibrated_thresholds_go_into_the_manifest_and_the_pipeline(checkpoint, tmp_path):
    from service.pipeline import Pipeline
    from service.settings import Settings

    _, cfg = load_trained(checkpoint)
    path = tmp_path / "thresholds.json"
    refine = {"radius_px": 8, "eps": 0.001}  # calibrated on refined maps, exported so
    mode = cfg.model.binary_mode.value
    flips = ["vertical", "horizontal"]  # and with the same flips, named in any order
    made = _thresholds(checkpoint, binary_mode=mode, refine=refine, flips=flips)
    path.write_text(json.dumps(made))
    out = tmp_path / "b"
    args = ["--checkpoint", str(checkpoint), "--out", str(out), "--thresholds", str(path)]
    args += ["--refine", "8", "0.001", "--flips", "horizontal", "vertical"]
    assert main([*args, "--no-fp16", "--no-torch-export", "--min-area", "100"]) == 0
    bundle = load_bundle(out)
    post = bundle.manifest.postprocess
    assert post.refine == Refine(radius_px=8, eps=0.001)
    assert post.flips == ("horizontal", "vertical")
    assert post.threshold_source == "calibrated" and post.min_area_px == 900
    assert post.class_thresholds == {"motor": 0.45, "cable": 0.6, "spray_can": 0.3}
    assert (post.min_score, post.reject_score) == (0.71, 0.93)
    assert post.calibration["clean_frames"] == 11
    pipeline = Pipeline(bundle, None, Settings())  # the rule the service applies
    assert pipeline.rule.class_thresholds == (0.45, 0.6, 0.3)
    assert (pipeline.rule.min_area, pipeline.rule.min_score) == (900, 0.71)
    assert pipeline.reject_score == 0.93
    assert Pipeline(bundle, None, Settings(reject_score=0.5)).reject_score == 0.5


def test_thresholds_of_another_model_are_refused_before_any_work(checkpoint, tmp_path, capsys):
    _, cfg = load_trained(checkpoint)
    mode = cfg.model.binary_mode.value
    other_mode = next(m.value for m in BinaryMode if m.value != mode)
    path = tmp_path / "thresholds.json"
    out = tmp_path / "b"
    args = ["--checkpoint", str(checkpoint), "--out", str(out), "--thresholds", str(path)]
    cases = [
        (_thresholds(tmp_path / "other.pt", binary_mode=mode), "calibrate a bundle of this"),
        (_thresholds(checkpoint, binary_mode=other_mode), f"this export forms them as {mode}"),
        (_thresholds(checkpoint, binary_mode=mode, sigma=2.0), "with sigma 2.0"),
        ({"pixel": 0.5}, "is it a thresholds.json"),
        ({**_thresholds(checkpoint, binary_mode=mode), "classes": [0.5]}, "one threshold per"),
        ({**_thresholds(checkpoint, binary_mode=mode), "min_score": 1.5}, "numbers in [0, 1]"),
        ({**_thresholds(checkpoint, binary_mode=mode), "min_area_px": -1}, "min_area_px must"),
        (
            _thresholds(checkpoint, binary_mode=mode, refine={"radius_px": 8, "eps": 0.001}),
            "calibrated on maps refined as --refine 8 0.001; this export's maps are not refined",
        ),
        (_thresholds(checkpoint, binary_mode=mode, flips="both"), "must list the views"),
    ]
    for data, message in cases:
        path.write_text(json.dumps(data))
        assert main(args) == 1
        err = capsys.readouterr().err
        assert "thresholds.json" in err and message in err, err
    path.write_text(json.dumps(_thresholds(checkpoint, binary_mode=mode)))
    assert main([*args, "--refine", "16", "0.0001"]) == 1
    said = "calibrated on maps not refined; this export's maps are refined as --refine 16 0.0001"
    assert said in capsys.readouterr().err
    assert main([*args, "--flips", "horizontal"]) == 1
    said = "calibrated on maps without flips; this export's maps are with --flips horizontal"
    assert said in capsys.readouterr().err
    path.write_text(json.dumps(_thresholds(checkpoint, binary_mode=mode, flips=["both"])))
    assert main([*args, "--flips", "horizontal"]) == 1
    said = "calibrated on maps with --flips both; this export's maps are with --flips horizontal"
    assert said in capsys.readouterr().err
    for bad in (["horizontal", "horizontal"], ["sideways"]):
        with pytest.raises(SystemExit) as stop:
            main([*args, "--flips", *bad])
        assert stop.value.code == 2
        assert "--flips" in capsys.readouterr().err
    for bad in (["0", "0.001"], ["8", "0"], ["8.5", "0.001"], ["8", "lots"]):
        with pytest.raises(SystemExit) as stop:
            main([*args, "--refine", *bad])
        assert stop.value.code == 2
        assert f"--refine {' '.join(bad)}: the radius is a whole number" in capsys.readouterr().err
    assert not out.exists() and sorted(tmp_path.iterdir()) == [path]


def test_bad_inputs_are_named_and_leave_nothing(checkpoint, tmp_path, capsys):
    bad = tmp_path / "report.json"
    bad.write_text('{"pixel": {}}')
    out = tmp_path / "b"
    assert main(["--checkpoint", str(checkpoint), "--out", str(out), "--report", str(bad)]) == 1
    assert "report.json: no pixel.f1_threshold" in capsys.readouterr().err
    bad.write_text('{"checkpoint": "c", "binary_mode": "max", "pixel": {"f1_threshold": 0.5}}')
    assert main(["--checkpoint", str(checkpoint), "--out", str(out), "--report", str(bad)]) == 1
    assert "report.json: binary_mode 'max' is not one of averaged_prompt, class_sum" in (
        capsys.readouterr().err
    )
    assert main(["--checkpoint", str(tmp_path / "none.pt"), "--out", str(out)]) == 1
    assert "none.pt: no such file" in capsys.readouterr().err
    assert not out.exists() and list(tmp_path.iterdir()) == [bad]


@pytest.mark.no_gpu
def test_tensorrt_missing_fails_fast_with_what_to_install(checkpoint, tmp_path, capsys):
    out = tmp_path / "b"
    assert main(["--checkpoint", str(checkpoint), "--out", str(out), "--tensorrt"]) == 1
    err = capsys.readouterr().err
    assert "TensorRT is not installed" in err and "pip install 'scrapscan[gpu]'" in err
    assert not out.exists()
    with pytest.raises(TensorRTError, match="TensorRT is not installed"):
        build_engine(tmp_path / "model.onnx", tmp_path, 518)
    with pytest.raises(TensorRTError, match="precision 'int4'"):
        build_engine(tmp_path / "model.onnx", tmp_path, 518, precision="int4")


def test_engine_names_carry_gpu_and_version():
    assert (
        engine_name("NVIDIA H100 80GB HBM3", "10.7.0", "fp16")
        == "model.nvidia-h100-80gb-hbm3.trt10.7.0.fp16.plan"
    )
    assert engine_name("NVIDIA H200", "10.7.0", "fp16") != engine_name(
        "NVIDIA H100", "10.7.0", "fp16"
    )


def test_the_committed_demo_bundle_loads_and_runs():
    demo = load_bundle(CONFIGS.parent / "models" / "demo")
    m = demo.manifest
    # calibrated on validation frames, starting from its report's F1-max threshold
    assert m.postprocess.threshold_source == "calibrated"
    assert m.postprocess.pixel_threshold == m.metrics["evaluation"]["pixel"]["f1_threshold"]
    assert set(m.postprocess.class_thresholds) == set(m.classes[1:])
    assert m.postprocess.calibration["frames"] >= 48
    assert m.zero_shot is not None and m.zero_shot.slots == 4
    run = checks.onnx_runner(demo.path("model.onnx"), TEXT)
    probs, anomaly, _, texts = run(checks.parity_inputs(m.input_size, random=1, synthetic=1))
    assert probs.shape == (2, 4, m.grid, m.grid) and np.all((anomaly >= 0) & (anomaly <= 1))
    assert texts.shape == (2, 4, m.grid, m.grid)


def test_a_bed_model_goes_into_the_bundle_with_its_parity(checkpoint, tmp_path, capsys):
    from service.bedmodel import LearnedBed
    from training.bedseg import save_bed_model, train_bed_model

    net, metrics = train_bed_model(frames=4, steps=2, seed=1, batch=2, log=False)
    save_bed_model(tmp_path / "bed.pt", net, metrics)
    out = tmp_path / "b"
    options = ExportOptions(
        fp16=False,
        torch_export=False,
        simplify=False,
        zero_shot_slots=0,
        bed_model=tmp_path / "bed.pt",
    )
    manifest = export_bundle(checkpoint, out, options, log=lambda _: None)
    assert manifest.bed_model is not None and manifest.bed_model.file == "bed.onnx"
    assert manifest.files["bed.onnx"].kind == "bed_model"
    assert manifest.metrics["parity"]["bed.onnx"]["max_abs"] <= 1e-4
    assert manifest.bed_model.metrics["steps"] == 2
    finder = LearnedBed(load_bundle(out))
    frame = np.zeros((432, 768, 3), np.uint8)
    assert finder.polygon(frame) is None or finder.polygon(frame).shape[1] == 2
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"junk")
    args = ["--checkpoint", str(checkpoint), "--out", str(tmp_path / "c"), "--bed-model", str(junk)]
    capsys.readouterr()
    assert main(args) == 1
    said = capsys.readouterr()
    assert f"{junk}: not a scrapscan-train-bed model" in said.err
    assert "model.onnx" not in said.out and not (tmp_path / "c").exists()  # before any export


def test_the_bed_cropper_and_region_encoder_of_another_bundle_are_reused_as_they_are(
    checkpoint, tmp_path, capsys
):
    demo = load_bundle(DEMO)
    target = tmp_path / "b"
    shutil.copytree(DEMO, target)  # replaced in place, its own bed cropper and encoder kept
    args = ["--checkpoint", str(checkpoint), "--out", str(target), "--no-fp16", "--no-torch-export"]
    args += ["--no-simplify", "--zero-shot-slots", "0"]
    reuse = ["--bed-from", str(target), "--region-from", str(target)]
    assert main([*args, *reuse, "--overwrite"]) == 0
    bundle = load_bundle(target)
    assert bundle.manifest.bed_model == demo.manifest.bed_model
    assert bundle.manifest.region == demo.manifest.region
    for name in ("bed.onnx", "region.onnx"):
        assert bundle.manifest.files[name].sha256 == demo.manifest.files[name].sha256
        parity = bundle.manifest.metrics["parity"][name]
        assert parity["max_abs"] == demo.manifest.metrics["parity"][name]["max_abs"]
        assert "demo" in parity["from"] and bundle.manifest.model.name != "demo"
    assert not list(tmp_path.glob(".b*"))  # the replaced bundle is gone
    capsys.readouterr()
    other = tmp_path / "c"
    assert main([*args[:2], "--out", str(other), "--bed-from", str(tmp_path / "none")]) == 1
    assert "--bed-from" in capsys.readouterr().err and not other.exists()
    plain = tmp_path / "plain"
    assert main([*args[:2], "--out", str(plain), *args[4:]]) == 0
    assert main([*args[:2], "--out", str(other), "--bed-from", str(plain)]) == 1
    assert "the bundle has no bed model" in capsys.readouterr().err and not other.exists()
    assert main([*args[:2], "--out", str(other), "--region-from", str(plain)]) == 1
    assert "the bundle has no region encoder" in capsys.readouterr().err and not other.exists()
    both = ["--region-from", str(target), "--region", str(plain)]
    assert main([*args[:2], "--out", str(other), *both]) == 1
    assert "--region or --region-from, not both" in capsys.readouterr().err
    assert not other.exists()


def test_export_adds_versions_to_a_repository_and_never_replaces_one(checkpoint, tmp_path, capsys):
    from common.repository import Repository

    repo = tmp_path / "repo"
    repo.mkdir()
    quick = ["--checkpoint", str(checkpoint), "--no-fp16", "--no-torch-export", "--no-simplify"]
    quick += ["--zero-shot-slots", "0"]  # no text tower: not what these exports are about
    for version in ("1", "2"):
        argv = [*quick, "--repository", str(repo), "--name", "yard", "--version", version]
        assert main(argv) == 0
    said = capsys.readouterr().out
    assert f"at {repo / 'yard' / '2'}" in said and said.rstrip().endswith("active version: yard 1")
    r = Repository(repo)
    assert [(v.name, v.version) for v in r.versions()] == [("yard", "1"), ("yard", "2")]
    active = r.active()
    assert active is not None and (active.version, active.by) == ("1", "scrapscan-export")
    load_bundle(repo / "yard" / "2")

    before = sorted(p.name for p in repo.iterdir())
    again = ["--checkpoint", str(tmp_path / "none.pt"), *quick[2:]]  # refused before it is read
    assert main([*again, "--repository", str(repo), "--name", "yard", "--version", "2"]) == 1
    assert "yard version 2 is in the repository already" in capsys.readouterr().err
    assert main([*quick, "--repository", str(repo), "--name", "yard", "--version", "../x"]) == 2
    assert "model version '../x'" in capsys.readouterr().err
    assert main([*quick, "--repository", str(tmp_path / "none")]) == 2
    assert "no such folder" in capsys.readouterr().err
    assert sorted(p.name for p in repo.iterdir()) == before  # no leftover incoming folder
    with pytest.raises(SystemExit):
        main([*quick, "--repository", str(repo), "--out", str(tmp_path / "b")])


def test_a_bundle_as_exported_is_added_to_a_repository_as_it_is(tmp_path, capsys):
    from common.repository import Repository

    repo = tmp_path / "repo"
    repo.mkdir()
    demo = CONFIGS.parent / "models" / "demo"
    name = json.loads((demo / "manifest.json").read_text())["model"]
    assert main(["--bundle", str(demo), "--repository", str(repo)]) == 0
    said = capsys.readouterr().out
    assert said.rstrip().endswith(f"active version: {name['name']} {name['version']}")
    assert (demo / "manifest.json").is_file()  # copied, not moved
    load_bundle(repo / name["name"] / name["version"])
    assert main(["--bundle", str(demo), "--repository", str(repo)]) == 1
    assert "is in the repository already" in capsys.readouterr().err
    torn = tmp_path / "torn"
    shutil.copytree(demo, torn)
    manifest = json.loads((torn / "manifest.json").read_text())
    manifest["model"]["version"] = "torn"
    (torn / "manifest.json").write_text(json.dumps(manifest))
    (torn / "model.onnx").write_bytes(b"not onnx")
    assert main(["--bundle", str(torn), "--repository", str(repo)]) == 1
    assert "model.onnx" in capsys.readouterr().err
    assert [v.version for v in Repository(repo).versions()] == [name["version"]]
    assert not [p for p in repo.iterdir() if p.name.startswith(".incoming")]
    for wrong in (["--out", str(tmp_path / "b")], ["--repository", str(repo), "--name", "x"]):
        with pytest.raises(SystemExit):
            main(["--bundle", str(demo), *wrong])


def test_the_region_encoder_goes_into_the_bundle_checked_with_its_descriptions(
    checkpoint, region_checkpoint, tmp_path, capsys
):
    from model_export.region import region_inputs
    from training.region.train import load_encoder

    out = tmp_path / "with-region"
    quick = ["--checkpoint", str(checkpoint), "--no-fp16", "--no-torch-export", "--no-simplify"]
    quick += ["--zero-shot-slots", "0"]  # no text tower: not what these exports are about
    assert main([*quick, "--out", str(out), "--region", str(region_checkpoint)]) == 0
    bundle = load_bundle(out)
    region = bundle.manifest.region
    assert region is not None and region.file == "region.onnx"
    assert bundle.manifest.files["region.onnx"].kind == "region_encoder"
    assert bundle.manifest.metrics["parity"]["region.onnx"]["max_abs"] <= 1e-4
    texts = [d.text for d in region.descriptions]
    assert "a small electric motor with copper windings" in texts
    assert {d.class_name for d in region.descriptions} == {"normal", "motor", "cable", "spray_can"}
    # the embeddings are the checkpoint's text tower's, and region.onnx its image side
    encoder, _ = load_encoder(region_checkpoint)
    expected = encoder.encode_texts(texts).numpy()
    assert np.abs(np.asarray(region.embeddings) - expected).max() < 1e-6
    x = region_inputs(region.input_size, region.context, region.min_crop, count=3)
    got = ort.InferenceSession(str(out / "region.onnx")).run(None, {"region": x})[0]
    with torch.no_grad():
        ref = encoder.encode_region(torch.from_numpy(x[:, :3]), torch.from_numpy(x[:, 3:]))
    assert np.abs(got - ref.numpy()).max() < 1e-4

    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"junk")
    capsys.readouterr()
    assert main([*quick, "--out", str(tmp_path / "no"), "--region", str(junk)]) == 1
    said = capsys.readouterr()
    assert f"--region: {junk}" in said.err and not (tmp_path / "no").exists()
    assert "model.onnx" not in said.out  # refused before any export


def test_a_calibrated_verification_margin_goes_with_its_region_encoder(
    checkpoint, region_checkpoint, tmp_path, capsys
):
    _, cfg = load_trained(checkpoint)
    mode = cfg.model.binary_mode.value
    path = tmp_path / "thresholds.json"
    made = _thresholds(checkpoint, binary_mode=mode, region=str(region_checkpoint))
    path.write_text(json.dumps({**made, "verify_margin": 0.125}))
    quick = ["--checkpoint", str(checkpoint), "--no-fp16", "--no-torch-export", "--no-simplify"]
    quick += ["--zero-shot-slots", "0"]  # no text tower: not what these exports are about
    args = [*quick, "--thresholds", str(path)]
    assert main([*args, "--out", str(tmp_path / "no-region")]) == 1  # before any work
    assert "pass that checkpoint as --region" in capsys.readouterr().err
    assert main([*args, "--out", str(tmp_path / "b"), "--region", str(region_checkpoint)]) == 0
    region = load_bundle(tmp_path / "b").manifest.region
    assert region is not None and (region.verify_margin, region.drop_unverified) == (0.125, True)
    # a bundle of that encoder carries it as well; another bundle's encoder is refused
    reused = [*args, "--out", str(tmp_path / "c"), "--region-from", str(tmp_path / "b")]
    assert main(reused) == 0
    kept = load_bundle(tmp_path / "c").manifest.region
    assert kept is not None and (kept.verify_margin, kept.drop_unverified) == (0.125, True)
    assert kept.embeddings == region.embeddings
    assert main([*args, "--out", str(tmp_path / "d"), "--region-from", str(DEMO)]) == 1
    assert "--region-from" in capsys.readouterr().err and not (tmp_path / "d").exists()
