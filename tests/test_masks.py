"""Tests of merfishflow.io.masks: the versioned .mfmask format (docs/masks.md)."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from merfishflow.io import masks
from merfishflow.errors import InputError

DATA = Path(__file__).parent / "data" / "masks"
VOXEL = (0.31, 0.108, 0.108)
ORIGIN = (1.0, -20.5, 300.25)


def random_labels(seed, shape=(7, 20, 24), n=12):
    """Touching cells: a Voronoi partition of random seeds, some background, one sparse large id."""
    rng = np.random.default_rng(seed)
    seeds = rng.uniform(0, 1, size=(n, 3)) * np.array(shape)
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1)
    nearest = np.argmin(((grid[..., None, :] - seeds) ** 2).sum(-1), axis=-1)
    labels = (nearest + 1).astype(np.uint32)
    labels[rng.random(shape) < 0.2] = 0
    labels[labels == 3] = 4_000_000_000          # ids are kept, not relabelled
    return labels


@pytest.mark.parametrize("seed", [0, 1])
def test_round_trip_exact(tmp_path, seed):
    labels = random_labels(seed)
    path = masks.write_masks(tmp_path / "a.mfmask", labels, VOXEL, ORIGIN, tile="tile0002",
                             metadata={"method": "watershed", "params": {"sigma": 0.2}})
    ms = masks.read_masks(path)
    assert ms.version == masks.FORMAT_VERSION == 2
    np.testing.assert_array_equal(ms.to_labels(), labels)
    assert ms.to_labels().dtype == np.uint32
    assert ms.shape_zyx == labels.shape and ms.voxel_size_zyx_um == VOXEL and ms.origin_zyx_um == ORIGIN
    assert ms.tile == "tile0002" and ms.metadata == {"method": "watershed", "params": {"sigma": 0.2}}
    ids = sorted(int(i) for i in np.unique(labels) if i)
    assert ms.cell_ids == ids
    for cid in ids:
        c = ms.cell(cid)
        pts = np.argwhere(labels == cid)
        assert c.volume_voxels == len(pts)
        np.testing.assert_allclose(c.centroid_zyx_px, pts.mean(0))
        np.testing.assert_allclose(c.centroid_zyx_um, np.array(ORIGIN) + pts.mean(0) * np.array(VOXEL))
        assert c.bbox_offset_zyx_px == tuple(pts.min(0)) and c.bbox_shape_zyx == tuple(np.ptp(pts, 0) + 1)
    with pytest.raises(KeyError):
        ms.cell(999)


def test_empty_and_int_dtypes(tmp_path):
    ms = masks.read_masks(masks.write_masks(tmp_path / "e.mfmask", np.zeros((3, 4, 5), np.uint16), VOXEL, (0, 0, 0)))
    assert ms.n_cells == 0 and ms.to_labels().shape == (3, 4, 5) and not ms.to_labels().any()
    labels = np.zeros((2, 3, 3), np.int64)
    labels[:] = 5                                 # no background at all
    np.testing.assert_array_equal(masks.read_masks(masks.write_masks(tmp_path / "f.mfmask", labels, VOXEL, ORIGIN)).to_labels(), labels)


def test_deterministic_bytes(tmp_path):
    labels = random_labels(3)
    a = masks.write_masks(tmp_path / "a.mfmask", labels, VOXEL, ORIGIN, tile="tile0000").read_bytes()
    b = masks.write_masks(tmp_path / "b.mfmask", labels.copy(), VOXEL, ORIGIN, tile="tile0000").read_bytes()
    assert a == b
    assert not list(tmp_path.glob(".tmp*"))      # atomic: no temp file left behind


@pytest.mark.parametrize("version", [1, 2])
def test_committed_fixture_of_every_version(version):
    """Files written by earlier releases stay readable: these bytes are committed, never regenerated."""
    ms = masks.read_masks(DATA / f"fixture_v{version}.mfmask")
    assert ms.version == version
    np.testing.assert_array_equal(ms.to_labels(), masks._fixture_labels())
    assert ms.voxel_size_zyx_um == masks.FIXTURE_VOXEL_SIZE and ms.origin_zyx_um == masks.FIXTURE_ORIGIN
    assert ms.tile == "tile0003" and ms.cell_ids == [1, 2, 7, 300]
    assert ms.cell(300).volume_voxels == 2 and ms.cell(300).centroid_zyx_px == (2.0, 2.0, 5.0)


def test_every_version_has_a_reader_and_fixture():
    assert sorted(masks.READERS) == [1, 2]
    for version in masks.READERS:
        assert (DATA / f"fixture_v{version}.mfmask").is_file()


def test_old_version_writer_round_trip(tmp_path):
    labels = random_labels(4)
    path = masks._write_version(tmp_path / "v1.mfmask", 1, labels, VOXEL, ORIGIN)
    ms = masks.read_masks(path)
    assert ms.version == 1
    np.testing.assert_array_equal(ms.to_labels(), labels)


def test_unknown_version(tmp_path):
    data = bytearray((DATA / "fixture_v2.mfmask").read_bytes())
    data[8:12] = struct.pack("<I", 99)
    path = tmp_path / "future.mfmask"
    path.write_bytes(bytes(data))
    with pytest.raises(InputError, match=r"future\.mfmask.*version 99.*versions 1, 2"):
        masks.read_masks(path)


@pytest.mark.parametrize("version", [1, 2])
def test_truncated(tmp_path, version):
    data = (DATA / f"fixture_v{version}.mfmask").read_bytes()
    for cut in (3, 30, 60, len(data) - 40, len(data) - 1):
        path = tmp_path / f"cut{cut}.mfmask"
        path.write_bytes(data[:cut])
        with pytest.raises(InputError, match=rf"cut{cut}\.mfmask.*(truncated|not a merfishflow|corrupted)"):
            masks.read_masks(path)
    path = tmp_path / "short.mfmask"
    path.write_bytes(data[:-10])
    with pytest.raises(InputError, match="truncated"):
        masks.read_masks(path)


def test_corrupted_checksum_and_magic(tmp_path):
    data = bytearray((DATA / "fixture_v2.mfmask").read_bytes())
    data[-40] ^= 0xFF                               # a byte of the last mask
    (tmp_path / "bad.mfmask").write_bytes(bytes(data))
    with pytest.raises(InputError, match=r"bad\.mfmask.*checksum"):
        masks.read_masks(tmp_path / "bad.mfmask")
    (tmp_path / "x.mfmask").write_bytes(b"PK\x03\x04 not a mask file at all, long enough to have a preamble....")
    with pytest.raises(InputError, match=r"x\.mfmask.*not a merfishflow mask file"):
        masks.read_masks(tmp_path / "x.mfmask")
    with pytest.raises(InputError, match="not found"):
        masks.read_masks(tmp_path / "missing.mfmask")


def test_writer_rejects_bad_input(tmp_path):
    with pytest.raises(InputError, match="3D"):
        masks.write_masks(tmp_path / "a.mfmask", np.zeros((4, 4), np.uint32), VOXEL, ORIGIN)
    with pytest.raises(InputError, match="integer"):
        masks.write_masks(tmp_path / "a.mfmask", np.zeros((2, 4, 4), np.float32), VOXEL, ORIGIN)
    with pytest.raises(InputError, match="negative"):
        masks.write_masks(tmp_path / "a.mfmask", -np.ones((2, 4, 4), np.int32), VOXEL, ORIGIN)
    with pytest.raises(InputError, match="voxel_size"):
        masks.write_masks(tmp_path / "a.mfmask", np.zeros((2, 4, 4), np.uint32), (0, 1, 1), ORIGIN)
    with pytest.raises(InputError, match="metadata"):
        masks.write_masks(tmp_path / "a.mfmask", np.zeros((2, 4, 4), np.uint32), VOXEL, ORIGIN,
                          metadata={"x": float("nan")})
    assert not list(tmp_path.iterdir())


def test_count_label_pairs_matches_numpy_unique_on_rows():
    from merfishflow.io.masks import count_label_pairs

    rng = np.random.default_rng(0)
    a = rng.integers(0, 2**32, 1000, dtype=np.uint64).astype(np.uint32)
    a[::3] = 7
    b = rng.integers(0, 5, 1000).astype(np.uint32)
    pairs, counts = count_label_pairs(a, b)
    expected, expected_counts = np.unique(np.stack([a.astype(np.int64), b.astype(np.int64)]), axis=1,
                                          return_counts=True)
    np.testing.assert_array_equal(pairs, expected)
    np.testing.assert_array_equal(counts, expected_counts)
    empty = count_label_pairs(np.zeros(0, np.uint32), np.zeros(0, np.uint32))
    assert empty[0].shape == (2, 0) and empty[1].shape == (0,)


def test_without_masks_keeps_the_bookkeeping_and_refuses_labels(tmp_path):
    labels = np.zeros((2, 6, 6), np.uint32)
    labels[:, 1:3, 1:4] = 4
    labels[:, 4:6, 0:2] = 9
    path = tmp_path / "t.mfmask"
    masks.write_masks(path, labels, (0.5, 0.1, 0.1), (1.0, 2.0, 3.0), tile="tile0000")
    full = masks.read_masks(path)
    light = full.without_masks()
    assert light.cell_ids == full.cell_ids == [4, 9]
    assert light.cell(9).volume_voxels == full.cell(9).volume_voxels == 8
    assert light.cell(4).centroid_zyx_um == full.cell(4).centroid_zyx_um and light.cell(4).mask is None
    with pytest.raises(KeyError):
        light.cell(5)
    with pytest.raises(ValueError, match="without_masks"):
        light.to_labels()
