import json
import shutil

import cv2
import numpy as np
import pytest

from training.data import DataError, load_frames
from training.data.cli import main as data_main


@pytest.fixture
def dataset(synth_dir, tmp_path):
    """A private copy of the synthetic data set that a test may damage."""
    out = tmp_path / "data"
    shutil.copytree(synth_dir, out)
    return out


def edit_coco(dir_, change):
    path = dir_ / "annotations.json"
    coco = json.loads(path.read_text())
    change(coco)
    path.write_text(json.dumps(coco))
    return path


def problems_of(dir_):
    with pytest.raises(DataError) as exc:
        load_frames(dir_)
    return exc.value.problems


def test_synthetic_folder_loads_with_beds_instances_and_masks(synth_dir):
    frames = load_frames(synth_dir)
    assert frames.layout == "coco"
    assert len(frames.frames) == 8
    coco = json.loads((synth_dir / "annotations.json").read_text())
    assert sum(frames.instance_counts().values()) == len(coco["annotations"])
    for f in frames.frames:
        assert (f.width, f.height) == (1280, 720)
        assert f.bed_polygon is not None and f.bed_polygon.shape == (4, 2)
        assert f.mask_path is not None
        box = f.bed_box()
        assert box.x >= 0 and box.x1 <= 1280 and box.y1 <= 720


def test_masks_drawn_from_instances_equal_the_mask_files(synth_dir):
    for f in load_frames(synth_dir).frames:
        from_file = f.load_mask()
        drawn = type(f)(
            f.name, f.image_path, f.width, f.height, f.instances, f.bed_polygon, None
        ).load_mask()
        assert (from_file != drawn).mean() < 0.0005


def test_unknown_category_is_reported_with_file_and_name(dataset):
    ann = edit_coco(dataset, lambda c: c["categories"].append({"id": 9, "name": "tire"}))
    (p,) = problems_of(dataset)
    assert p.file == ann
    assert "category 9 'tire': unknown category" in p.reason


def test_polygon_outside_the_image_is_reported(dataset):
    def push_out(coco):
        coco["annotations"][0]["segmentation"][0][0] = 5000.0

    ann = edit_coco(dataset, push_out)
    (p,) = problems_of(dataset)
    assert p.file == ann
    assert "annotation 1" in p.reason and "polygon outside the 1280x720 image" in p.reason


def test_mask_of_another_size_is_reported(dataset):
    mask = dataset / "masks" / "frame_00003.png"
    cv2.imwrite(str(mask), np.zeros((100, 200), np.uint8))
    (p,) = problems_of(dataset)
    assert p.file == mask
    assert p.reason == "mask is 200x100 but its image is 1280x720"


def test_unreadable_image_is_reported(dataset):
    img = dataset / "images" / "frame_00002.jpg"
    img.write_bytes(b"not a jpeg at all")
    (p,) = problems_of(dataset)
    assert p.file == img
    assert "unreadable image" in p.reason


def test_truncated_image_is_found_when_decoding(dataset):
    img = dataset / "images" / "frame_00004.jpg"
    data = img.read_bytes()
    img.write_bytes(data[: len(data) // 2])
    load_frames(dataset)  # the header alone still reads
    with pytest.raises(DataError) as exc:
        load_frames(dataset, decode=True)
    assert [p.file for p in exc.value.problems] == [img]


def test_every_problem_is_reported_not_just_the_first(dataset):
    def damage(coco):
        coco["categories"].append({"id": 7, "name": "battery"})
        coco["annotations"].append(
            {"id": 999, "image_id": 424242, "category_id": 1, "segmentation": [[0, 0, 5, 0, 5, 5]]}
        )
        coco["annotations"].append(
            {"id": 1000, "image_id": 1, "category_id": 7, "segmentation": [[0, 0, 5, 0, 5, 5]]}
        )
        coco["images"][1]["file_name"] = "missing.jpg"
        coco["images"][2]["width"] = 999

    edit_coco(dataset, damage)
    reasons = [p.reason for p in problems_of(dataset)]
    assert len(reasons) == 5
    assert any("'battery': unknown category" in r for r in reasons)
    assert any("image_id 424242 is not listed" in r for r in reasons)
    assert any("annotation 1000: unknown category id 7" in r for r in reasons)
    assert any("missing.jpg not found" in r for r in reasons)
    assert any("image is 1280x720 but annotations.json says 999x720" in r for r in reasons)


def test_invalid_json_names_the_file_and_position(dataset):
    ann = dataset / "annotations.json"
    ann.write_text('{"images": [')
    (p,) = problems_of(dataset)
    assert p.file == ann and p.reason.startswith("not valid JSON: ")
    assert "line 1" in p.reason


def test_bed_polygon_from_a_truck_bed_category(dataset, synth_dir):
    def as_category(coco):
        coco["categories"].append({"id": 4, "name": "truck_bed"})
        for img in coco["images"]:
            coco["annotations"].append(
                {
                    "id": 5000 + img["id"],
                    "image_id": img["id"],
                    "category_id": 4,
                    "segmentation": [img.pop("bed_polygon")],
                }
            )

    edit_coco(dataset, as_category)
    frames = load_frames(dataset)
    reference = load_frames(synth_dir)  # the untouched original
    assert [f.bed_box() for f in frames.frames] == [f.bed_box() for f in reference.frames]
    assert sum(frames.instance_counts().values()) == sum(reference.instance_counts().values())


def test_folder_layout_pairs_images_with_masks(dataset):
    (dataset / "annotations.json").unlink()
    frames = load_frames(dataset)
    assert frames.layout == "folders"
    assert len(frames.frames) == 8
    assert all(f.bed_polygon is None and f.bed_box().width == 1280 for f in frames.frames)


def test_folder_layout_reports_unpaired_files_and_bad_mask_values(dataset):
    (dataset / "annotations.json").unlink()
    (dataset / "masks" / "frame_00000.png").unlink()
    stray = dataset / "masks" / "extra.png"
    cv2.imwrite(str(stray), np.zeros((720, 1280), np.uint8))
    bad = dataset / "masks" / "frame_00001.png"
    cv2.imwrite(str(bad), np.full((720, 1280), 9, np.uint8))
    got = {(p.file.name, p.reason.split(";")[0]) for p in problems_of(dataset)}
    assert got == {
        ("frame_00000.jpg", "no mask masks/frame_00000.png for this image"),
        ("extra.png", "mask without an image in images/"),
        ("frame_00001.png", "mask holds value(s) [9]"),
    }


def test_missing_folder_and_unknown_layout(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_frames(tmp_path / "nope")
    with pytest.raises(DataError, match=r"neither annotations\.json nor images/"):
        load_frames(tmp_path)


def test_check_command_summarises_a_good_folder(synth_dir, capsys):
    assert data_main(["check", str(synth_dir), "--patches"]) == 0
    out = capsys.readouterr().out
    assert "8 frames (coco layout), 8 with a bed polygon" in out
    assert "spray_can" in out and "patches" in out


def test_check_command_lists_problems_on_stderr_and_exits_1(dataset, capsys):
    mask = dataset / "masks" / "frame_00005.png"
    cv2.imwrite(str(mask), np.zeros((10, 10), np.uint8))
    assert data_main(["check", str(dataset)]) == 1
    err = capsys.readouterr().err
    assert "1 problem(s)" in err
    assert f"{mask}: mask is 10x10 but its image is 1280x720" in err
