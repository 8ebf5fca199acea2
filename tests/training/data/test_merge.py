"""scrapscan-data merge: data folders joined into one that loads as each of them did."""

import json
import shutil

import cv2
import numpy as np
import pytest

from tools.data_cli import main as data_main  # the scrapscan-data command
from training.data import load_frames


@pytest.fixture
def sources(synth_dir, tmp_path):
    """The synthetic set three ways: COCO with masks, COCO without, images/ + masks/."""
    coco = tmp_path / "yard"
    shutil.copytree(synth_dir, coco)
    no_masks = tmp_path / "feedback"
    shutil.copytree(synth_dir, no_masks)
    shutil.rmtree(no_masks / "masks")
    ann = no_masks / "annotations.json"
    doc = json.loads(ann.read_text())
    doc["images"] = doc["images"][:3]
    kept = {i["id"] for i in doc["images"]}
    doc["annotations"] = [a for a in doc["annotations"] if a["image_id"] in kept]
    for img in doc["images"]:
        img["truck_id"] = f"T-{img['id']}"
    new_id = {c["id"]: 10 + k for k, c in enumerate(doc["categories"])}  # same names
    doc["categories"] = [{**c, "id": new_id[c["id"]]} for c in doc["categories"]]
    for a in doc["annotations"]:
        a["category_id"] = new_id[a["category_id"]]
    ann.write_text(json.dumps(doc))
    folders = tmp_path / "other" / "yard"  # the same folder name as the first source
    shutil.copytree(synth_dir, folders)
    (folders / "annotations.json").unlink()
    for p in list((folders / "images").iterdir())[4:]:
        p.unlink()
        (folders / "masks" / f"{p.stem}.png").unlink()
    return [coco, no_masks, folders]


def test_merged_folder_holds_every_frame_with_its_labels(sources, tmp_path, capsys):
    out = tmp_path / "merged"
    assert data_main(["merge", *map(str, sources), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"{out}: 15 frames (8 from yard1, 3 from feedback, 4 from yard3)" in printed
    merged = load_frames(out)
    assert merged.layout == "coco" and len(merged.frames) == 15
    parts = [load_frames(s) for s in sources]
    originals = [f for p in parts for f in p.frames]
    for new, old in zip(merged.frames, originals, strict=True):
        assert new.image_path.read_bytes() == old.image_path.read_bytes()
        assert np.array_equal(new.load_mask(), old.load_mask())  # drawn where none was
        assert new.bed_box() == old.bed_box()
        assert [i.class_index for i in new.instances] == [i.class_index for i in old.instances]
    doc = json.loads((out / "annotations.json").read_text())
    assert [i["source"] for i in doc["images"]] == ["yard1"] * 8 + ["feedback"] * 3 + ["yard3"] * 4
    assert [i.get("truck_id") for i in doc["images"][8:11]] == ["T-1", "T-2", "T-3"]
    assert len({a["id"] for a in doc["annotations"]}) == len(doc["annotations"])
    assert (out / "images" / "yard1-frame_00000.jpg").stat().st_nlink == 2  # linked, not copied
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".merged")]


def test_a_source_with_problems_stops_the_merge_before_anything_is_written(
    sources, tmp_path, capsys
):
    bad = sources[2] / "masks" / "frame_00001.png"
    cv2.imwrite(str(bad), np.full((720, 1280), 9, np.uint8))
    out = tmp_path / "merged"
    assert data_main(["merge", *map(str, sources), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert f"{sources[2]}: 1 problem(s)" in err and f"{bad}: mask holds value(s) [9]" in err
    assert not out.exists() and not list(tmp_path.glob(".merged*"))


def test_merge_refuses_a_missing_source_an_existing_out_and_a_single_folder(
    sources, tmp_path, capsys
):
    out = tmp_path / "merged"
    assert data_main(["merge", str(sources[0]), str(tmp_path / "nope"), "--out", str(out)]) == 2
    assert f"{tmp_path / 'nope'}: no such file or folder" in capsys.readouterr().err
    assert data_main(["merge", str(sources[0]), "--out", str(out)]) == 2
    assert "at least two data folders" in capsys.readouterr().err
    out.mkdir()
    assert data_main(["merge", *map(str, sources[:2]), "--out", str(out)]) == 2
    assert f"{out} exists; choose a new folder" in capsys.readouterr().err
    assert not list(out.iterdir())
