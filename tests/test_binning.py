"""Block means (merfishflow.image.binning): against a plain loop over blocks, and independent of the chunking."""

import numpy as np
import pytest

from merfishflow.image import binning
from merfishflow.image.binning import binned_shape, block_mean


def loop_block_mean(image, factors):
    """Each block's mean, the partial last blocks padded with edge values, one block at a time."""
    padded = np.pad(image.astype(np.float64),
                    [(0, -(-n // f) * f - n) for n, f in zip(image.shape, factors)], mode="edge")
    out = np.empty(binned_shape(image.shape, factors))
    for idx in np.ndindex(out.shape):
        block = tuple(slice(i * f, (i + 1) * f) for i, f in zip(idx, factors))
        out[idx] = padded[block].mean()
    return out


@pytest.mark.parametrize("shape,factors", [((5, 12, 9), (1, 3, 3)), ((7, 10, 11), (2, 4, 3)), ((3, 6, 6), (1, 1, 1))])
def test_block_mean_is_the_mean_of_each_edge_padded_block(shape, factors):
    image = np.random.default_rng(0).integers(0, 4000, shape).astype(np.uint16)
    got = block_mean(image, factors)
    assert got.dtype == np.float32 and got.shape == binned_shape(shape, factors)
    np.testing.assert_allclose(got, loop_block_mean(image, factors), rtol=1e-6)


def test_block_mean_does_not_depend_on_the_chunk_size(monkeypatch):
    image = np.random.default_rng(1).normal(100, 10, (9, 20, 17)).astype(np.float32)
    whole = block_mean(image, (2, 3, 3))
    monkeypatch.setattr(binning, "_CHUNK_VOXELS", 1)             # one coarse plane per chunk
    np.testing.assert_array_equal(block_mean(image, (2, 3, 3)), whole)
