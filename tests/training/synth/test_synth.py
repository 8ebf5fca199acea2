import hashlib
import json

import cv2
import numpy as np
import pytest

from common.classes import CLASS_NAMES
from training.data.coco import segmentation_to_mask
from training.synth import render_frame, write_dataset
from training.synth.cli import main as synth_main
from training.synth.frame import min_instance_area


def load(dir_):
    coco = json.loads((dir_ / "annotations.json").read_text())
    by_image = {img["id"]: [] for img in coco["images"]}
    for ann in coco["annotations"]:
        by_image[ann["image_id"]].append(ann)
    return coco, by_image


def iou(a, b):
    return (a & b).sum() / max((a | b).sum(), 1)


def test_masks_match_the_annotation_polygons(synth_dir):
    coco, by_image = load(synth_dir)
    checked = 0
    for img in coco["images"]:
        mask = cv2.imread(
            str(synth_dir / "masks" / img["file_name"].replace(".jpg", ".png")),
            cv2.IMREAD_UNCHANGED,
        )
        h, w = mask.shape
        rasters = [(a, segmentation_to_mask(a["segmentation"], h, w)) for a in by_image[img["id"]]]
        for ann, raster in rasters:
            cls = ann["category_id"]
            others = np.zeros_like(raster)
            for other, r in rasters:
                if other is not ann and other["category_id"] == cls:
                    others |= r
            truth = (mask == cls) & ~others
            assert iou(raster, truth) >= 0.98, (img["file_name"], ann["id"])
            assert abs(int(raster.sum()) - ann["area"]) <= 0.02 * ann["area"]
            x, y, bw, bh = ann["bbox"]
            ys, xs = np.nonzero(truth)
            assert (x, y, x + bw, y + bh) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
            checked += 1
        # every labelled pixel belongs to some annotation of its class
        for cls in (1, 2, 3):
            union = np.zeros((h, w), dtype=bool)
            for ann, r in rasters:
                if ann["category_id"] == cls:
                    union |= r
            if (mask == cls).any() or union.any():
                assert iou(union, mask == cls) >= 0.98
    assert checked >= 5  # the fixture's seed has contaminants to check


def test_instance_classes_and_counts_agree_with_the_masks(synth_dir):
    coco, by_image = load(synth_dir)
    assert [c["name"] for c in coco["categories"]] == list(CLASS_NAMES[1:])
    assert [c["id"] for c in coco["categories"]] == [1, 2, 3]
    for img in coco["images"]:
        mask = cv2.imread(
            str(synth_dir / "masks" / img["file_name"].replace(".jpg", ".png")),
            cv2.IMREAD_UNCHANGED,
        )
        in_mask = set(np.unique(mask)) - {0}
        annotated = {a["category_id"] for a in by_image[img["id"]]}
        assert in_mask == annotated, img["file_name"]
        assert set(np.unique(mask)) <= {0, 1, 2, 3}


def test_rendered_frame_labels_are_the_visible_contaminants():
    frame = render_frame(seed=3, index=5, width=1280, height=720)
    assert frame.image.shape == (720, 1280, 3) and frame.image.dtype == np.uint8
    ids = set(np.unique(frame.instance_map)) - {0}
    assert ids == {i.instance_id for i in frame.instances}
    for inst in frame.instances:
        assert (
            (frame.instance_map == inst.instance_id).sum()
            == inst.area
            >= min_instance_area(1280, 720)
        )
        assert 0.0 <= inst.occluded < 1.0
    # contaminants lie in the truck bed
    bed = np.zeros((720, 1280), dtype=np.uint8)
    cv2.fillPoly(bed, [np.round((frame.bed_polygon - 0.5) * 16).astype(np.int32)], 1, cv2.LINE_8, 4)
    assert not (frame.instance_map[bed == 0]).any()


def test_default_frame_is_4k_and_labels_scale_with_it():
    frame = render_frame(seed=0, index=2)
    assert frame.image.shape == (2160, 3840, 3)
    bed_w = np.ptp(frame.bed_polygon[:, 0])
    assert 0.25 * 3840 < bed_w < 0.9 * 3840


def test_about_a_third_of_frames_have_no_contaminant():
    empty = sum(not render_frame(11, i, 640, 360).instances for i in range(90))
    assert 20 <= empty <= 40  # 1/3 of 90 is 30; fully hidden contaminants add a few


def test_instances_are_partly_hidden_under_scrap_in_some_frames():
    occlusions = [i.occluded for k in range(20) for i in render_frame(5, k, 640, 360).instances]
    assert any(o > 0.1 for o in occlusions)
    assert any(o < 0.05 for o in occlusions)


def test_cover_sets_how_much_scrap_lies_over_the_contaminants():
    def hidden(cover):
        found = [
            i.occluded for k in range(12) for i in render_frame(5, k, 640, 360, cover).instances
        ]
        return sum(found) / len(found)

    on_top, default, buried = hidden(0.0), hidden(0.25), hidden(0.5)
    assert on_top < 0.1 < default < buried
    with pytest.raises(ValueError, match="cover must be in"):
        render_frame(5, 0, 640, 360, cover=1.5)


def digest(dir_):
    h = hashlib.sha256()
    for p in sorted(dir_.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(dir_).as_posix().encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_same_seed_same_bytes_and_other_seed_differs(tmp_path, synth_dir):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    write_dataset(a, frames=3, seed=7, width=1280, height=720, workers=1)
    write_dataset(b, frames=3, seed=7, width=1280, height=720, workers=2)
    write_dataset(c, frames=3, seed=8, width=1280, height=720, workers=1)
    assert digest(a) == digest(b)
    assert digest(a) != digest(c)
    for i in range(3):  # every frame differs, not just the file as a whole
        name = f"images/frame_{i:05d}.jpg"
        assert (a / name).read_bytes() != (c / name).read_bytes()
    # frame i does not depend on how many frames are written
    assert (a / "images/frame_00002.jpg").read_bytes() == (
        synth_dir / "images/frame_00002.jpg"
    ).read_bytes()


def test_cli_writes_a_data_folder_and_preview(tmp_path, capsys):
    out = tmp_path / "d"
    assert (
        synth_main(
            ["--out", str(out), "--frames", "2", "--width", "640", "--height", "360", "--preview"]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "wrote 2 frames of 640x360" in printed and "median" in printed
    assert sorted(p.name for p in (out / "images").iterdir()) == [
        "frame_00000.jpg",
        "frame_00001.jpg",
    ]
    assert sorted(p.name for p in (out / "masks").iterdir()) == [
        "frame_00000.png",
        "frame_00001.png",
    ]
    assert cv2.imread(str(out / "preview.jpg")) is not None


def test_cli_refuses_to_mix_into_an_existing_data_set(tmp_path, capsys):
    out = tmp_path / "d"
    args = ["--out", str(out), "--frames", "1", "--width", "320", "--height", "180"]
    assert synth_main(args) == 0
    keep = out / "notes.txt"
    keep.write_text("mine")
    before = (out / "annotations.json").read_bytes()
    assert synth_main([*args, "--seed", "9"]) == 2
    err = capsys.readouterr().err
    assert str(out) in err and "--overwrite" in err
    assert (out / "annotations.json").read_bytes() == before  # nothing lost
    assert synth_main([*args, "--seed", "9", "--overwrite"]) == 0
    assert (out / "annotations.json").read_bytes() != before
    assert keep.read_text() == "mine"  # only the generator's own outputs are replaced


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--frames", "0"], "--frames must be at least 1"),
        (["--width", "10"], "at least 64"),
        (["--workers", "0"], "--workers must be at least 1"),
        (["--cover", "-0.1"], "--cover must be between 0 and 1"),
        (["--frames", "x"], "invalid int value"),
    ],
)
def test_cli_bad_arguments_exit_2_with_a_message(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as exc:
        synth_main(["--out", str(tmp_path / "d"), *args])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "d").exists()
