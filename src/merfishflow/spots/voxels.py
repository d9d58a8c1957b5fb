"""Pixel decoding of a slab and the decoded voxels it keeps (steps 3 and 5 of :mod:`merfishflow.spots.decoding`).

Every voxel above the magnitude threshold is matched to its nearest codeword
(BLAS); only decoded voxels are kept, with what spot grouping needs (their
enhanced values and the magnitudes of their 6 face neighbours, across slab
boundaries too), so spots are formed once all slabs are done.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..image.kernels import trace_magnitudes
from .enhancement import _n_threads

if TYPE_CHECKING:
    from .decoding import DecodingParams


class _VoxelCollector:
    """Decodes consecutive slabs and keeps every decoded voxel (a sparse set) for the spot segmentation."""

    def __init__(self, codewords, scale, background, params: DecodingParams, shape_yx):
        self.params = params
        cw = codewords.astype(np.float32)
        norms = np.linalg.norm(cw, axis=1, keepdims=True)
        self.cw_unit = (cw / np.where(norms > 0, norms, 1)).T.copy()  # (B, C)
        self.n_bits = cw.shape[1]
        self.scale = np.asarray(scale, np.float32)
        self.background = np.asarray(background, np.float32)
        self.shape_yx = shape_yx
        self.n_threads = _n_threads(params, self.n_bits)
        self.prev_mag = None
        self.chunks = []

    def _decode_pixels(self, enh):
        """Per decoded voxel of the slab: flat index, barcode, distance, magnitude, enhanced trace; magnitude map.

        ``enh`` (n_bits, nz, Y, X) may be a strided view (the refinement crop of a tile held whole): it is
        read in blocks of rows, never copied whole.
        """
        B, nz, Y, X = enh.shape
        magmap = np.empty((nz, Y, X), np.float32)
        inv2 = (1.0 / self.scale.astype(np.float64) ** 2).astype(np.float32)
        trace_magnitudes(enh, self.background, inv2, magmap, self.n_threads)
        thr = np.float32(self.params.magnitude_threshold)
        flat_mag = magmap.ravel()
        cand = np.flatnonzero(flat_mag >= thr) if thr > 0 else np.flatnonzero(flat_mag > 0)
        out = {"idx": [], "code": [], "dist": [], "mag": [], "trace": []}
        dthr = self.params.distance_threshold
        step = self.params.chunk_pixels
        inv_scale = (1.0 / self.scale).astype(np.float32)
        for s in range(0, cand.size, step):
            idx = cand[s:s + step]
            zc, rem = np.divmod(idx, Y * X)
            yc, xc = np.divmod(rem, X)
            raw = enh[:, zc, yc, xc].T  # (P, B) enhanced
            x = np.maximum((raw - self.background) * inv_scale, 0)
            mag = flat_mag[idx]
            x /= mag[:, None]
            dots = x @ self.cw_unit  # BLAS sgemm
            best = np.argmax(dots, axis=1)
            c = dots[np.arange(idx.size), best]
            dist = np.sqrt(np.maximum(2 - 2 * c, 0))
            ok = dist <= dthr
            out["idx"].append(idx[ok])
            out["code"].append(best[ok].astype(np.int32))
            out["dist"].append(dist[ok].astype(np.float32))
            out["mag"].append(mag[ok])
            out["trace"].append(raw[ok])
        if cand.size == 0:
            return magmap, np.zeros(0, np.int64), np.zeros(0, np.int32), np.zeros(0, np.float32), \
                np.zeros(0, np.float32), np.zeros((0, B), np.float32)
        return (magmap, *(np.concatenate(out[k]) for k in ("idx", "code", "dist", "mag", "trace")))

    def add(self, enh, z0, last: bool):
        """Decode one slab ``enh`` (n_bits, nz, Y, X) of enhanced images whose first plane is ``z0``."""
        nz, Y, X = enh.shape[1:]
        magmap, idx, code, dist, mag, trace = self._decode_pixels(enh)
        # Voxels of the previous slab's last plane: their z+1 neighbour is this slab's first plane.
        if self.chunks:
            prev = self.chunks[-1]
            pend = np.flatnonzero(np.isinf(prev["nb"][:, 1]))
            if pend.size:
                prev["nb"][pend, 1] = magmap[0].ravel()[prev["gidx"][pend] % (Y * X)]
        z, rem = np.divmod(idx, Y * X)
        y, x = np.divmod(rem, X)
        # Magnitude of the 6 face neighbours (z-1, z+1, y-1, y+1, x-1, x+1); NaN beyond the tile.
        nb = np.full((idx.size, 6), np.nan, np.float32)
        inner = z > 0
        nb[inner, 0] = magmap[z[inner] - 1, y[inner], x[inner]]
        if z0 > 0:
            nb[~inner, 0] = self.prev_mag[y[~inner], x[~inner]]
        inner = z < nz - 1
        nb[inner, 1] = magmap[z[inner] + 1, y[inner], x[inner]]
        if not last:
            nb[~inner, 1] = np.inf  # pending: filled from the next slab
        for k, (coord, size, axis) in enumerate(((y, Y, 1), (x, X, 2))):
            for j, (ok, d) in enumerate(((coord > 0, -1), (coord < size - 1, 1))):
                where = [z[ok], y[ok], x[ok]]
                where[axis] = where[axis] + d
                nb[ok, 2 + 2 * k + j] = magmap[tuple(where)]
        self.chunks.append({"gidx": idx + z0 * Y * X, "code": code, "dist": dist, "mag": mag, "trace": trace,
                            "nb": nb})
        self.prev_mag = magmap[-1].copy()

    def voxels(self):
        if not self.chunks:
            B = self.n_bits
            return {"gidx": np.zeros(0, np.int64), "code": np.zeros(0, np.int32), "dist": np.zeros(0, np.float32),
                    "mag": np.zeros(0, np.float32), "trace": np.zeros((0, B), np.float32),
                    "nb": np.zeros((0, 6), np.float32)}
        return {k: np.concatenate([c[k] for c in self.chunks]) for k in self.chunks[0]}
