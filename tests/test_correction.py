"""Camera correction and the datastore primitives, on small arrays with known answers."""

from __future__ import annotations

import json

import numpy as np
import pytest

from merfishflow.io import datastore
from merfishflow.image.correction import correct_counts, find_hot_pixels, neighbour_index, to_uint16
from merfishflow.errors import IncompleteDataError, InputError


def test_hot_pixels_found_in_dark_frame_and_merged_with_known_map():
    rng = np.random.default_rng(0)
    dark = 100 + 2 * rng.standard_normal((32, 32))
    dark[3, 4] += 300
    dark[0, 31] += 50
    known = np.zeros((32, 32), bool)
    known[10, 10] = True
    hot = find_hot_pixels(dark, sigma=10, known=known)
    assert set(zip(*np.nonzero(hot))) == {(3, 4), (0, 31), (10, 10)}
    assert not find_hot_pixels(np.full((8, 8), 100.0), sigma=10).any()
    assert find_hot_pixels(dark, sigma=np.inf).sum() == 0
    with pytest.raises(InputError):
        find_hot_pixels(None)


def test_correction_is_offset_gain_and_neighbour_median():
    offset = np.full((5, 6), 100.0)
    counts = np.full((2, 5, 6), 140, np.uint16)
    counts[:, 2, 3] = [5000, 6000]  # hot
    counts[0, 1, 2] = 180           # a neighbour, brighter
    counts[1, 0, 0] = 50            # below the offset
    hot = np.zeros((5, 6), bool)
    hot[2, 3] = True
    hot_flat, neighbours = neighbour_index(hot)
    out = correct_counts(counts, offset, 0.5, hot_flat, neighbours)
    assert out.dtype == np.float32
    assert out[0, 0, 0] == pytest.approx(20.0)
    assert out[1, 0, 0] == 0.0
    assert out[0, 1, 2] == pytest.approx(40.0)
    assert out[0, 2, 3] == pytest.approx(20.0)  # median of 8 neighbours, one of them 40
    assert out[1, 2, 3] == pytest.approx(20.0)


def test_neighbours_skip_other_hot_pixels_and_borders():
    hot = np.zeros((4, 4), bool)
    hot[0, 0] = hot[0, 1] = True
    hot_flat, neighbours = neighbour_index(hot)
    assert list(hot_flat) == [0, 1]
    usable = [sorted(int(n) for n in row if n >= 0) for row in neighbours]
    assert usable == [[4, 5], [2, 4, 5, 6]]
    all_hot = np.ones((3, 3), bool)
    with pytest.raises(InputError, match="no non-hot neighbour"):
        neighbour_index(all_hot)


def test_uint16_rounding_saturates_and_counts():
    out, n = to_uint16(np.array([0.4, 0.6, 70000.0, 65535.2], np.float32))
    assert out.tolist() == [0, 1, 65535, 65535] and n == 1


def test_marker_is_written_last_and_checked(tmp_path):
    group = datastore.create_group(tmp_path / "g.zarr")
    data = np.arange(3 * 4 * 5, dtype=np.uint16).reshape(3, 4, 5)
    datastore.write_array(group / "a", data)
    with pytest.raises(IncompleteDataError, match="missing"):
        datastore.read_array(group, "a")
    datastore.write_marker(group, {"arrays": {"a": datastore.array_record(data)}, "note": "x"})
    assert json.loads((group / ".zattrs").read_text())["complete"] is True
    assert np.array_equal(datastore.read_array(group, "a"), data)
    assert json.loads((group / ".zgroup").read_text()) == {"zarr_format": 2}
    assert json.loads((group / "a" / ".zarray").read_text())["chunks"] == [1, 4, 5]
    with pytest.raises(InputError, match="no array 'b'"):
        datastore.open_array(group, "b")
    datastore.write_array(group / "a", data[:2])  # changed behind the marker's back
    with pytest.raises(IncompleteDataError, match="differ from the marker"):
        datastore.open_array(group, "a")
    (group / ".zattrs").write_text("{not json")
    with pytest.raises(IncompleteDataError, match="not valid JSON"):
        datastore.read_marker(group)
    datastore.remove_marker(group)
    assert not datastore.is_complete(group)


def test_zarr_python_reads_our_arrays(tmp_path):
    zarr = pytest.importorskip("zarr")
    group = datastore.create_group(tmp_path / "g.zarr")
    data = np.arange(2 * 3 * 4, dtype=np.uint16).reshape(2, 3, 4)
    datastore.write_array(group / "corrected_data", data)
    datastore.write_marker(group, {"arrays": {"corrected_data": datastore.array_record(data)}})
    opened = zarr.open_group(str(group), mode="r", zarr_format=2)
    assert np.array_equal(opened["corrected_data"][:], data)
    assert opened.attrs["complete"] is True
