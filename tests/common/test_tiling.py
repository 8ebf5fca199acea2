import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.tiling import Box, axis_starts, cut_tile, polygon_box, tile_grid

regions = st.builds(
    Box,
    x=st.integers(0, 300),
    y=st.integers(0, 300),
    width=st.integers(1, 2500),
    height=st.integers(1, 1500),
)
tile_sizes = st.sampled_from([16, 64, 100, 512])


@st.composite
def grids(draw):
    region = draw(regions)
    size = draw(tile_sizes)
    overlap = draw(st.integers(0, size - 1))
    return region, size, overlap


def coverage(region, size, overlap):
    grid = tile_grid(region, size, overlap)
    count = np.zeros((region.y1, region.x1), dtype=np.int32)
    for t in grid.tiles:
        count[t.box.slices()] += 1
    return grid, count


@settings(max_examples=150, deadline=None)
@given(grids())
def test_every_pixel_of_the_region_is_covered_and_nothing_outside(g):
    region, size, overlap = g
    grid, count = coverage(region, size, overlap)
    inside = count[region.slices()]
    assert inside.min() >= 1
    assert count.sum() == sum(t.box.width * t.box.height for t in grid.tiles)  # none spilled


@settings(max_examples=150, deadline=None)
@given(grids())
def test_tiles_stay_inside_the_region_and_are_full_size_when_they_fit(g):
    region, size, overlap = g
    grid = tile_grid(region, size, overlap)
    assert len(grid.tiles) == grid.rows * grid.cols
    for t in grid.tiles:
        assert region.x <= t.box.x and t.box.x1 <= region.x1
        assert region.y <= t.box.y and t.box.y1 <= region.y1
        assert t.box.width == min(size, region.width)
        assert t.box.height == min(size, region.height)
        assert t.padded == (region.width < size or region.height < size)


@settings(max_examples=150, deadline=None)
@given(grids())
def test_last_tile_ends_on_the_border_and_neighbours_overlap_enough(g):
    region, size, overlap = g
    for length in (region.width, region.height):
        starts = axis_starts(length, size, overlap)
        assert starts[0] == 0
        assert starts[-1] + min(size, length) == length
        assert starts == sorted(set(starts))
        for a, b in itertools.pairwise(starts):
            assert b - a <= size - overlap  # overlap at least as asked
            assert b > a


@settings(max_examples=100, deadline=None)
@given(grids(), st.data())
def test_inverse_maps_each_tile_pixel_to_the_frame_pixel_it_came_from(g, data):
    region, size, overlap = g
    grid = tile_grid(region, size, overlap)
    frame = np.arange(region.y1 * region.x1, dtype=np.int64).reshape(region.y1, region.x1)
    t = grid.tiles[data.draw(st.integers(0, len(grid.tiles) - 1))]
    tile = cut_tile(frame, t, fill=-1)
    assert tile.shape == (size, size)
    v, u = np.mgrid[0:size, 0:size]
    x, y, valid = t.tile_to_frame(u, v)
    assert (tile[valid] == frame[y[valid], x[valid]]).all()
    assert (tile[~valid] == -1).all()  # padding maps to no frame pixel
    uu, vv, inside = t.frame_to_tile(x[valid], y[valid])
    assert inside.all()
    assert (uu == u[valid]).all() and (vv == v[valid]).all()


def test_known_grid_for_a_4k_frame():
    grid = tile_grid(Box(0, 0, 3840, 2160), 512, 64)
    assert grid.cols == 9 and grid.rows == 5
    assert [t.box.x for t in grid.tiles[:9]] == [0, 448, 896, 1344, 1792, 2240, 2688, 3136, 3328]
    assert [t.box.y for t in grid.tiles[:: grid.cols]] == [0, 448, 896, 1344, 1648]


def test_crop_smaller_than_a_tile_gives_one_padded_tile():
    grid = tile_grid(Box(10, 20, 300, 700), 512, 64)
    assert (grid.rows, grid.cols) == (2, 1)
    assert all(t.padded and t.box.width == 300 for t in grid.tiles)
    img = np.ones((720, 310, 3), dtype=np.uint8)
    out = cut_tile(img, grid.tiles[0], fill=7)
    assert out.shape == (512, 512, 3)
    assert (out[:, 300:] == 7).all() and (out[:, :300] == 1).all()


def test_model_input_pixels_map_back_to_tile_pixels():
    t = tile_grid(Box(100, 50, 512, 512), 512, 64).tiles[0]
    x, y = t.input_to_frame([0, 258.5, 517], [0, 258.5, 517], input_size=518)
    # the input's centre is the tile's centre; its corners are the tile's corner pixels
    assert x[1] == pytest.approx(100 + 255.5)
    assert y[1] == pytest.approx(50 + 255.5)
    assert x[0] == pytest.approx(100 - 0.5 + 0.5 * 512 / 518)
    assert x[2] == pytest.approx(100 + 511.5 - 0.5 * 512 / 518)


@pytest.mark.parametrize(
    ("length", "size", "overlap"), [(0, 512, 64), (100, 0, 0), (100, 512, 512), (100, 512, -1)]
)
def test_bad_geometry_is_refused(length, size, overlap):
    with pytest.raises(ValueError, match="must be"):
        axis_starts(length, size, overlap)


def test_polygon_box_is_clipped_and_refuses_outside_polygons():
    assert polygon_box([[10.2, 5.5], [100.7, 5.5], [100.7, 60.1]], 90, 50) == Box(10, 5, 80, 45)
    assert polygon_box([[10, 10], [20, 20], [10, 20]], 100, 100, margin=5) == Box(5, 5, 20, 20)
    with pytest.raises(ValueError, match="outside"):
        polygon_box([[200, 200], [300, 300], [200, 300]], 100, 100)
    with pytest.raises(ValueError, match="positive size"):
        Box(0, 0, 0, 5)
