import numpy as np
import pytest

from common.bundle import Refine
from common.imaging import polygon_mask
from common.inputs import make_tiles
from common.tiling import tile_grid
from service.settings import CameraBed
from service.stages import (
    InstanceRule,
    Merged,
    bed_crop,
    blend_weights,
    find_instances,
    merge,
    refined,
)
from service.zeroshot import TextRule

CLASSES = ("normal", "motor", "cable", "spray_can")


def full_bed(h, w):
    return bed_crop(np.zeros((h, w, 3), np.uint8), CameraBed())


@pytest.mark.parametrize(("h", "w"), [(720, 1280), (2160, 3840), (300, 202), (513, 1030)])
@pytest.mark.parametrize(("overlap", "stride"), [(0, 1), (64, 1), (200, 1), (64, 4), (0, 4)])
def test_a_constant_map_merges_back_to_itself(h, w, overlap, stride):
    bed = full_bed(h, w)
    grid = tile_grid(bed.box, 512, overlap)
    n = len(grid.tiles)
    anomaly = np.full((n, 37, 37), 0.3, np.float32)
    classes = np.broadcast_to(
        np.array([0.1, 0.2, 0.3, 0.4], np.float32)[None, :, None, None], (n, 4, 37, 37)
    )
    out = merge(
        (h, w), bed, grid.tiles, anomaly, np.ascontiguousarray(classes), overlap, stride=stride
    )
    gh, gw = -(-h // stride), -(-w // stride)
    assert out.anomaly.shape == (gh, gw) and out.classes.shape == (4, gh, gw)
    np.testing.assert_allclose(out.anomaly, 0.3, atol=1e-5)
    np.testing.assert_allclose(out.classes[2], 0.3, atol=1e-5)


def smooth(y, x):
    return 0.5 + 0.4 * np.sin(x / 97.0) * np.cos(y / 61.0)


def merge_smooth(h, w, overlap, stride):
    """Tile maps at the tile's own resolution, cut from a smooth map, merged back."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    frame_map = smooth(yy, xx)
    bed = full_bed(h, w)
    grid = tile_grid(bed.box, 512, overlap)
    maps = np.zeros((len(grid.tiles), 512, 512), np.float32)
    for k, t in enumerate(grid.tiles):
        maps[k, : t.box.height, : t.box.width] = frame_map[t.box.slices()]
    classes = np.stack([1 - maps, maps, np.zeros_like(maps), np.zeros_like(maps)], axis=1)
    return frame_map, merge((h, w), bed, grid.tiles, maps, classes, overlap, stride=stride)


@pytest.mark.parametrize(("h", "w"), [(720, 1280), (1100, 900), (400, 600)])
@pytest.mark.parametrize("overlap", [32, 64, 150])
def test_a_smooth_map_cut_into_tiles_merges_back_without_seams(h, w, overlap):
    frame_map, out = merge_smooth(h, w, overlap, 1)
    np.testing.assert_allclose(out.anomaly, frame_map, atol=1e-5)
    np.testing.assert_allclose(out.classes[1], frame_map, atol=1e-5)


@pytest.mark.parametrize(("h", "w"), [(720, 1280), (1100, 900), (601, 1037)])
@pytest.mark.parametrize("overlap", [32, 64, 150])
def test_at_stride_4_a_smooth_map_merges_back_to_its_value_at_each_cell(h, w, overlap):
    """Each 4 x 4 cell holds the map at the cell's centre: same grid for every tile, no seams."""
    _, out = merge_smooth(h, w, overlap, 4)
    cy, cx = np.mgrid[0 : -(-h // 4), 0 : -(-w // 4)].astype(np.float32) * 4 + 1.5
    # a partial last cell is sampled at the frame's last pixel
    cy, cx = np.minimum(cy, h - 1), np.minimum(cx, w - 1)
    at_centres = smooth(cy, cx)
    np.testing.assert_allclose(out.anomaly, at_centres, atol=1e-4)
    np.testing.assert_allclose(out.classes[1], at_centres, atol=1e-4)


def test_overlapping_tiles_are_weighted_towards_their_centres():
    w = blend_weights(512, 64)
    assert w.min() > 0 and w.max() == 1.0
    assert w[256, 256] == 1.0 and w[0, 256] < w[32, 256] < w[64, 256]
    # two tiles disagreeing in their overlap: the result follows the nearer tile's centre
    h, wd = 512, 900
    bed = full_bed(h, wd)
    grid = tile_grid(bed.box, 512, 64)
    left, right = grid.tiles
    anomaly = np.stack([np.zeros((37, 37)), np.ones((37, 37))]).astype(np.float32)
    classes = np.zeros((2, 4, 37, 37), np.float32)
    out = merge((h, wd), bed, grid.tiles, anomaly, classes, 64)
    overlap_cols = range(right.box.x, left.box.x1)
    row = out.anomaly[256, list(overlap_cols)]
    assert np.all(np.diff(row) >= -1e-6) and row[0] < 0.5 < row[-1]  # a ramp, not a step


def test_polygon_bed_limits_the_maps_and_tiles():
    cam = CameraBed(bed="polygon", polygon=((0.25, 0.25), (0.75, 0.25), (0.75, 0.75), (0.25, 0.75)))
    bed = bed_crop(np.zeros((800, 1200, 3), np.uint8), cam)
    assert (bed.box.x, bed.box.y, bed.box.width, bed.box.height) == (300, 200, 600, 400)
    assert bed.area == pytest.approx(600 * 400, rel=0.01) and bed.strategy == "polygon"
    frame = np.zeros((800, 1200, 3), np.uint8)
    tiles, inputs = make_tiles(frame, bed.box, 512, 64, 518)
    assert inputs.shape == (len(tiles), 3, 518, 518)
    assert all(t.box.x >= 300 and t.box.x1 <= 900 for t in tiles)
    n = len(tiles)
    out = merge(
        (800, 1200),
        bed,
        tiles,
        np.ones((n, 37, 37), np.float32),
        np.full((n, 4, 37, 37), 0.25, np.float32),
        64,
    )
    assert out.anomaly[:200].max() == 0 and out.anomaly[300, 400] == pytest.approx(1.0)
    assert out.classes[0, 0, 0] == 1.0


def test_bad_polygons_are_refused():
    with pytest.raises(ValueError, match="needs polygon"):
        CameraBed(bed="polygon")
    with pytest.raises(ValueError, match="less than or equal to 1"):  # a corner past the frame
        CameraBed(bed="polygon", polygon=((0, 0), (2, 0), (1, 1)))
    with pytest.raises(ValueError, match="at least 3 items"):
        CameraBed(bed="polygon", polygon=((0, 0), (1, 1)))


def test_instances_are_sized_classed_and_outlined():
    h, w = 400, 600
    bed = full_bed(h, w)
    anomaly = np.zeros((h, w), np.float32)
    classes = np.zeros((4, h, w), np.float32)
    classes[0] = 1.0
    anomaly[100:150, 100:200] = 0.9  # a cable-like region: 5000 px
    classes[:, 100:150, 100:200] = np.array([0.1, 0.2, 0.6, 0.1])[:, None, None]
    anomaly[300:305, 300:305] = 0.95  # 25 px: noise
    found = find_instances(
        Merged(anomaly, classes, bed.mask), bed, CLASSES, InstanceRule(0.5, 100, 0.5)
    )
    assert len(found.instances) == 1
    inst = found.instances[0]
    assert inst.class_name == "cable" and inst.area == 5000 and inst.bbox == (100, 100, 100, 50)
    assert inst.class_scores["cable"] == pytest.approx(0.6, abs=1e-4)
    assert inst.score == pytest.approx(0.9)
    xs = [p[0] for p in inst.polygon]
    assert min(xs) == pytest.approx(100.5) and max(xs) == pytest.approx(199.5)
    assert (found.class_mask == 2).sum() == 5000 and found.class_mask.max() == 2
    assert found.frame_scores["anomaly"] == pytest.approx(0.95)
    assert found.frame_scores["cable"] == pytest.approx(0.6)


def _two_regions(h=300, w=400):
    """A motor region scoring 0.6 and a cable region scoring 0.9, each 50 x 50 px."""
    anomaly = np.zeros((h, w), np.float32)
    classes = np.zeros((4, h, w), np.float32)
    classes[0] = 1.0
    anomaly[50:100, 50:100] = 0.6
    classes[:, 50:100, 50:100] = np.array([0.4, 0.5, 0.05, 0.05])[:, None, None]
    anomaly[150:200, 200:250] = 0.9
    classes[:, 150:200, 200:250] = np.array([0.1, 0.1, 0.7, 0.1])[:, None, None]
    return anomaly, classes


def test_each_class_has_its_own_threshold():
    anomaly, classes = _two_regions()
    bed = full_bed(*anomaly.shape)
    merged = Merged(anomaly, classes, bed.mask)
    both = find_instances(merged, bed, CLASSES, InstanceRule(0.5, 10, 0.5))
    assert sorted(i.class_name for i in both.instances) == ["cable", "motor"]
    # a motor threshold over the motor region's 0.6 leaves the cable alone, and the
    # other way round: each region is held to the threshold of its own class
    per_class = InstanceRule(0.5, 10, 0.5, class_thresholds=(0.7, 0.5, 0.5))
    assert [i.class_name for i in find_instances(merged, bed, CLASSES, per_class).instances] == [
        "cable"
    ]
    cable_high = InstanceRule(0.1, 10, 0.5, class_thresholds=(0.5, 0.95, 0.5))
    found = find_instances(merged, bed, CLASSES, cable_high)
    assert [i.class_name for i in found.instances] == ["motor"]
    assert (found.class_mask == 2).sum() == 0


def test_instances_under_the_min_score_are_not_reported():
    anomaly, classes = _two_regions()
    bed = full_bed(*anomaly.shape)
    merged = Merged(anomaly, classes, bed.mask)
    found = find_instances(merged, bed, CLASSES, InstanceRule(0.5, 10, 0.5, min_score=0.7))
    assert [i.class_name for i in found.instances] == ["cable"]
    assert (found.class_mask == 1).sum() == 0  # the motor region is not drawn either
    assert found.frame_scores["anomaly"] == pytest.approx(0.9)
    none = find_instances(merged, bed, CLASSES, InstanceRule(0.5, 10, 0.5, min_score=0.95))
    assert none.instances == [] and none.class_mask.max() == 0


def test_text_classes_are_cut_at_their_own_thresholds_and_marked_zero_shot():
    """A text class's map is cut like the learned ones (area rules, min score), at its own
    threshold; its instances are zero-shot and its mask index follows the learned classes'."""
    anomaly, classes = _two_regions()
    h, w = anomaly.shape
    bed = full_bed(h, w)
    texts = np.zeros((2, h, w), np.float32)
    texts[0, 220:260, 20:80] = 0.7  # gas_cylinder: 2400 px at 0.7
    texts[0, 10:12, 10:12] = 0.99  # 4 px: under the minimum area
    texts[1, 220:260, 300:380] = 0.55  # battery: under its threshold of 0.6
    merged = Merged(anomaly, classes, bed.mask, 1, texts)
    rule = TextRule(("gas_cylinder", "battery"), (0.5, 0.6), np.zeros((4, 2, 8), np.float32), 2)
    found = find_instances(merged, bed, CLASSES, InstanceRule(0.5, 10, 0.5), rule)
    assert [(i.class_name, i.zero_shot) for i in found.instances] == [
        ("cable", False),
        ("gas_cylinder", True),
        ("motor", False),
    ]
    gas = found.instances[1]
    assert gas.area == 2400 and gas.bbox == (20, 220, 60, 40) and gas.score == pytest.approx(0.7)
    assert gas.class_scores == {"gas_cylinder": pytest.approx(0.7)}
    assert gas.result().zero_shot is True and found.instances[0].result().zero_shot is False
    assert (found.class_mask == 4).sum() == 2400 and (found.class_mask == 5).sum() == 0
    assert found.frame_scores["gas_cylinder"] == pytest.approx(0.99)
    assert found.frame_scores["battery"] == pytest.approx(0.55)
    lower = TextRule(("gas_cylinder", "battery"), (0.5, 0.5), rule.text, 2)
    found = find_instances(merged, bed, CLASSES, InstanceRule(0.5, 10, 0.5, min_score=0.65), lower)
    assert [i.class_name for i in found.instances] == [
        "cable",
        "gas_cylinder",
    ]  # motor 0.6, battery 0.55


def test_text_class_maps_are_merged_like_the_learned_ones_and_zero_outside_the_bed():
    h, w = 300, 500
    frame = np.zeros((h, w, 3), np.uint8)
    bed = bed_crop(frame, CameraBed(bed="polygon", polygon=[(0.1, 0.1), (0.9, 0.1), (0.5, 0.9)]))
    tiles, _ = make_tiles(frame, bed.box, 128, 32, 16)
    n, g = len(tiles), 16
    anomaly = np.full((n, g, g), 0.3, np.float32)
    classes = np.full((n, 4, g, g), 0.25, np.float32)
    texts = np.stack([np.full((g, g), 0.8, np.float32), np.full((g, g), 0.1, np.float32)])
    merged = merge(frame.shape, bed, tiles, anomaly, classes, 32, 0.0, 1, np.stack([texts] * n))
    assert merged.zero_shot is not None and merged.zero_shot.shape == (2, h, w)
    merged_cells = merged.anomaly > 0  # the bed's pixels within its box, as the anomaly map's
    assert merged_cells.sum() > 0.99 * bed.mask.sum()
    np.testing.assert_allclose(merged.zero_shot[0][merged_cells], 0.8, atol=1e-6)
    np.testing.assert_allclose(merged.zero_shot[1][merged_cells], 0.1, atol=1e-6)
    assert merged.zero_shot[:, ~bed.mask].max() == 0
    plain = merge(frame.shape, bed, tiles, anomaly, classes, 32, 0.0, 1)
    np.testing.assert_array_equal(plain.classes, merged.classes)
    np.testing.assert_array_equal(plain.anomaly, merged.anomaly)


def test_auto_bed_is_learned_with_a_bed_model_and_full_without():
    frame = np.zeros((100, 200, 3), np.uint8)

    class Finder:
        def polygon(self, frame_bgr):
            return np.array([[20, 10], [180, 10], [180, 90], [20, 90]], np.float64)

    assert CameraBed().bed == "auto"
    learned = bed_crop(frame, CameraBed(), Finder())
    assert learned.strategy == "learned" and 160 * 80 <= learned.area <= 161 * 81
    full = bed_crop(frame, CameraBed(), None)
    assert full.strategy == "full" and full.area == 100 * 200
    with pytest.raises(ValueError, match="bed model"):
        bed_crop(frame, CameraBed(bed="learned"), None)


def test_a_region_covering_most_of_the_bed_is_not_a_contaminant():
    h, w = 200, 300
    bed = full_bed(h, w)
    anomaly = np.full((h, w), 0.8, np.float32)
    classes = np.zeros((4, h, w), np.float32)
    found = find_instances(
        Merged(anomaly, classes, bed.mask), bed, CLASSES, InstanceRule(0.5, 10, 0.5)
    )
    assert found.instances == [] and found.class_mask.max() == 0


def test_at_stride_4_instances_are_in_frame_pixels():
    h, w = 402, 601  # not multiples of 4: the last row and column of cells are partial
    bed = full_bed(h, w)
    gh, gw = 101, 151
    anomaly = np.zeros((gh, gw), np.float32)
    classes = np.zeros((4, gh, gw), np.float32)
    classes[0] = 1.0
    anomaly[25:38, 25:50] = 0.9  # 13 x 25 cells = 52 x 100 frame pixels
    classes[:, 25:38, 25:50] = np.array([0.1, 0.7, 0.1, 0.1])[:, None, None]
    anomaly[95:, 140:] = 0.8  # touches the frame's bottom right corner
    classes[:, 95:, 140:] = np.array([0.1, 0.1, 0.1, 0.7])[:, None, None]
    small = polygon_mask(np.asarray(bed.polygon) / 4, gh, gw)
    found = find_instances(
        Merged(anomaly, classes, small, 4), bed, CLASSES, InstanceRule(0.5, 100, 0.5)
    )
    motor, can = sorted(found.instances, key=lambda i: i.class_name)
    assert motor.class_name == "motor" and motor.bbox == (100, 100, 100, 52)
    assert motor.area == 5200 and (found.class_mask == 1).sum() == 5200
    assert min(p[0] for p in motor.polygon) == pytest.approx(100.5)  # as at stride 1
    assert max(p[0] for p in motor.polygon) == pytest.approx(199.5)
    # 6 rows x 11 columns of cells; the last row holds 2 frame rows, the last column 1
    assert can.class_name == "spray_can" and can.bbox == (560, 380, 41, 22)
    assert can.area == (5 * 4 + 2) * (10 * 4 + 1) == (found.class_mask == 3).sum()
    assert found.class_mask.shape == (h, w)


def test_an_overlay_label_says_what_the_region_encoder_saw():
    from service.pipeline import DESCRIPTION_CHARS, _label, render_overlay
    from service.stages import Bed, Findings, Instance

    found = Instance("motor", 0.9, {"motor": 0.9}, (200, 200, 60, 40), 2400, [(200, 200)])
    plain = found.result()
    long = "a small electric motor with copper windings and a cracked housing"
    said = plain.model_copy(update={"description": long, "verified": False})
    assert _label(found, None) == _label(found, plain) == ["motor 0.90"]
    first, second = _label(found, said)
    assert first == "motor 0.90 unverified"
    assert len(second) == DESCRIPTION_CHARS and second.endswith("...")
    assert long.startswith(second[:-3])
    frame = np.full((480, 640, 3), 90, np.uint8)
    mask = np.zeros((480, 640), np.uint8)
    findings = Findings([found], mask)
    corners = np.array([(0.0, 0.0), (640.0, 0.0), (640.0, 480.0), (0.0, 480.0)])
    bed = Bed(corners, (0, 0, 640, 480), np.ones((480, 640), bool), "full")
    classes = ("normal", "motor", "cable", "spray_can")
    alone = render_overlay(frame, findings, bed, classes)
    assert np.array_equal(render_overlay(frame, findings, bed, classes, said=[plain]), alone)
    described = render_overlay(frame, findings, bed, classes, said=[said])
    changed = np.argwhere((described != alone).any(axis=2))
    assert len(changed) and changed[:, 0].max() <= 200  # a second line, above the instance


def test_an_overlay_label_stays_whole_at_the_frame_edge():
    from service.pipeline import render_overlay
    from service.stages import Bed, Findings, Instance

    h, w = 480, 640
    edge = Instance("cable", 0.97, {"cable": 0.97}, (610, 200, 30, 40), 1200, [(610, 200)])
    frame = np.full((h, w, 3), 90, np.uint8)
    corners = np.array([(0.0, 0.0), (w, 0.0), (w, h), (0.0, h)])
    bed = Bed(corners, (0, 0, w, h), np.ones((h, w), bool), "full")
    out = render_overlay(frame, Findings([edge], np.zeros((h, w), np.uint8)), bed, CLASSES)
    # the label's black box ends at the frame's right edge and starts well left of the
    # instance, so its text ("cable 0.97") is drawn whole
    dark = np.argwhere((out == 0).all(axis=2))
    assert dark[:, 1].max() == w - 1
    assert dark[:, 1].min() < 610 - 40


def test_overlay_labels_of_neighbouring_instances_do_not_cover_each_other():
    from common.overlay import class_color
    from service.pipeline import _place_label, render_overlay
    from service.stages import Bed, Findings, Instance

    # make demo's frame 1: a cable and a motor side by side, their boxes' tops level
    h, w = 480, 640
    cable = Instance("cable", 0.97, {"cable": 0.97}, (280, 200, 30, 30), 900, [(280, 200)])
    motor = Instance("motor", 0.96, {"motor": 0.96}, (300, 202, 40, 40), 1600, [(300, 202)])
    frame = np.full((h, w, 3), 90, np.uint8)
    corners = np.array([(0.0, 0.0), (w, 0.0), (w, h), (0.0, h)])
    bed = Bed(corners, (0, 0, w, h), np.ones((h, w), bool), "full")

    def text_pixels(shown: list[Instance]) -> list[int]:
        out = render_overlay(frame, Findings(shown, np.zeros((h, w), np.uint8)), bed, CLASSES)
        colors = [class_color(CLASSES.index(i.class_name)) for i in shown]
        return [int((out == c).all(axis=2).sum()) for c in colors]

    # each label's text as whole as when drawn alone
    assert text_pixels([cable, motor]) == text_pixels([cable]) + text_pixels([motor])

    # the placement: above the box, else below it, else stacked; always inside the frame
    placed = [(300, 172, 100, 30)]  # the first label, above
    assert _place_label((100, 30), 300, 202, 242, (h, w), []) == (300, 172)
    assert _place_label((100, 30), 300, 202, 242, (h, w), placed) == (300, 242)
    assert _place_label((100, 30), 300, 202, 242, (h, w), [*placed, (300, 242, 50, 30)]) == (
        300,
        142,
    )
    assert _place_label((100, 30), 600, 10, 40, (h, w), []) == (540, 0)
    assert _place_label((100, 30), 0, 470, 480, (h, w), [(0, 440, 100, 30)]) == (0, 410)


def cable_frame(h, w, x0, width, seed=0):
    """Grey scrap of mottled steel with a red-insulated cable `width` px wide running down from
    column x0."""
    grey = np.random.default_rng(seed).normal(120, 25, (h, w, 1))
    frame = np.clip(grey, 0, 255).repeat(3, axis=2).astype(np.uint8)
    frame[:, x0 : x0 + width] = (40, 40, 190)
    return frame


@pytest.mark.parametrize("stride", [1, 4])
def test_refined_maps_lift_the_cable_out_of_the_band_it_lit(stride):
    """The model's coarse cells light a band about 20 px wide around a 6 px cable; after the
    guided filter the cable stands out of the scrap beside it, so a threshold between them
    outlines the cable and not the band."""
    h, w = 128, 256
    frame = cable_frame(h, w, 125, 6)
    gh, gw = h // stride, w // stride
    x = (np.arange(gw) + 0.5) * stride
    bump = np.broadcast_to(np.exp(-((x - 128) ** 2) / 200).astype(np.float32), (gh, gw))
    maps = np.ascontiguousarray(np.stack([bump, 1 - bump], -1))
    out = refined(maps, frame, Refine(radius_px=8, eps=1e-3), stride)
    assert out.shape == maps.shape and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0
    np.testing.assert_allclose(out[..., 0] + out[..., 1], 1.0, atol=1e-4)  # still a partition
    on_cable = (x > 125) & (x < 131)  # the cells whose centre lies on the cable
    rows = slice(gh // 4, 3 * gh // 4)  # away from the frame's edges
    assert (bump[0] >= 0.8).sum() >= on_cable.sum() + 2  # at 0.8 the band is wider
    lit = out[rows, :, 0] >= 0.8
    np.testing.assert_array_equal(lit, np.broadcast_to(on_cable, lit.shape))


def test_merge_refines_the_learned_maps_only_and_needs_the_frame():
    h, w = 300, 500
    frame = cable_frame(h, w, 240, 6)
    bed = full_bed(h, w)
    grid = tile_grid(bed.box, 512, 0)
    n = len(grid.tiles)
    xx = np.broadcast_to((np.arange(37, dtype=np.float32) + 0.5) * 512 / 37, (n, 37, 37))
    lit = np.exp(-((xx - 243) ** 2) / 800).astype(np.float32)
    classes = np.stack([1 - lit, np.zeros_like(lit), lit, np.zeros_like(lit)], axis=1)
    texts = np.stack([lit], axis=1)
    refine = Refine(radius_px=8, eps=1e-3)
    plain = merge((h, w), bed, grid.tiles, lit, classes, 0, 0.0, 4, texts)
    out = merge((h, w), bed, grid.tiles, lit, classes, 0, 0.0, 4, texts, refine, frame)
    # the learned maps as `refined` makes them of the blended ones, the guide being the frame
    blended = np.ascontiguousarray(np.dstack([plain.anomaly, *plain.classes]))
    want = refined(blended, frame, refine, 4)
    np.testing.assert_allclose(out.anomaly, want[..., 0], atol=1e-6)
    np.testing.assert_allclose(out.classes, want[..., 1:].transpose(2, 0, 1), atol=1e-6)
    assert np.abs(out.anomaly - plain.anomaly).max() > 0.05
    np.testing.assert_array_equal(out.zero_shot, plain.zero_shot)  # the operator's thresholds
    # scores are the model's own: read from the map as blended, outlines from the refined one
    assert plain.blended is None and plain.scoring is plain.anomaly
    np.testing.assert_array_equal(out.scoring, plain.anomaly)
    (found,) = find_instances(out, bed, CLASSES, InstanceRule(0.8, 10, 0.5)).instances
    assert found.score == pytest.approx(float(plain.anomaly[out.anomaly >= 0.8].max()))
    with pytest.raises(ValueError, match="needs the frame"):
        merge((h, w), bed, grid.tiles, lit, classes, 0, 0.0, 4, None, refine)
