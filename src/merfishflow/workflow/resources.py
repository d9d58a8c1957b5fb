"""Memory and runtime of the workflow's jobs, from the experiment's shape and the config.

Models measured in benchmarks/RESULTS.md, each doubled on every retry
(``attempt``). Asked at DAG time and in every cluster job, so this module
imports no algorithm's heavy dependencies (numba, pandas): only the
parameter classes and the size models.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..io.metadata import Experiment
from .config import segmentation_options

# Threads of the per-tile jobs that work round by round (ingest, deconvolve, register_local): rounds in
# flight at once, one thread each, each holding its own volumes (the *_mem_mb models count them).
ROUND_THREADS = 2


@dataclass(frozen=True)
class JobResources:
    """``<stage>_mem_mb(attempt)`` and ``<stage>_runtime_min(attempt)`` of every rule that asks for resources.

    Attributes
    ----------
    experiment : Experiment
    config : dict
        Validated config (defaults filled in).
    """

    experiment: Experiment
    config: dict

    def ingest_mem_mb(self, attempt: int = 1) -> int:
        """Memory of one tile's ingest job: the interpreter plus, per round in flight, a few slabs of one
        channel; doubled per retry."""
        z, y, x = self.experiment.image_shape_zyx
        slab_mb = min(self.config["ingest"]["slab_planes"], z) * y * x * 2 / 2**20
        # Measured (benchmarks/RESULTS.md): ~60 MB of imports plus 13-17 slabs at the peak of one round.
        return int(math.ceil(600 + ROUND_THREADS * 20 * slab_mb)) * attempt

    @property
    def _voxels(self) -> int:
        z, y, x = self.experiment.image_shape_zyx
        return z * y * x

    def decon_mem_mb(self, attempt: int = 1) -> int:
        """Per round in flight, one channel at a time: uint16 in and out, the float32 estimate, and the
        per-block FFT buffers."""
        from ..image.deconvolution import richardson_lucy_peak_bytes
        from ..image.psf import psf_shape_for_stack, psf_shape_zyx

        longest = max(c.emission_um for c in self.experiment.channels)
        psf_shape = psf_shape_for_stack(
            psf_shape_zyx(self.experiment.voxel_size_zyx_um, longest, self.experiment.numerical_aperture),
            self.experiment.image_shape_zyx[0])
        settings = self.config["deconvolution"]
        acceleration = None if settings.get("acceleration", "none") == "none" else settings["acceleration"]
        blocks = richardson_lucy_peak_bytes(self.experiment.image_shape_zyx, psf_shape, settings["tile_yx"],
                                            settings["overlap_yx"], acceleration=acceleration)
        return int(math.ceil(600 + ROUND_THREADS * 1.2 * (blocks + 2 * self._voxels) / 2**20)) * attempt

    def decon_runtime_min(self, attempt: int = 1) -> int:
        """Volumes of a tile (rounds x channels) x voxels x iterations at 2 Mvoxel-iterations/s per core
        (benchmarks/RESULTS.md), on the job's cores."""
        volumes = len(self.experiment.rounds) * len(self.experiment.channels)
        work = volumes * self._voxels * self.config["deconvolution"]["iterations"]
        return int(math.ceil(5 + work / 2e6 / ROUND_THREADS / 60)) * attempt

    def decode_mem_mb(self, attempt: int = 1) -> int:
        """The whole tile of every bit in float32 if it is decoded whole, else a slab (with its z halo) a few
        times over plus the refinement crop (merfishflow.spots.decoding, "Memory")."""
        from ..spots.decoding import DecodingParams

        params = DecodingParams(**self.config["decoding"])
        z, y, x = self.experiment.image_shape_zyx
        per_voxel = self.experiment.n_bits * 4
        if self._voxels <= params.whole_tile_max_voxels:
            held = 2 * self._voxels * per_voxel
        else:
            held = 4 * (min(z, params.slab_planes) + 6) * y * x * per_voxel + params.refine_max_voxels * per_voxel
        return int(math.ceil(800 + held / 2**20)) * attempt

    def decode_runtime_min(self, attempt: int = 1) -> int:
        """Bits x voxels at 5 Mvoxel-bits/s (benchmarks/RESULTS.md)."""
        return int(math.ceil(5 + self.experiment.n_bits * self._voxels / 5e6 / 60)) * attempt

    def segment_mem_mb(self, attempt: int = 1) -> int:
        """Bytes per voxel of the tile plus its neighbours' band, with some headroom (benchmarks/RESULTS.md,
        segmentation): measured 13 when the cells are split on f x f bins (full-resolution smoothing, foreground
        and labels, and the split's ~52 on 1/f^2 of the voxels), asked 16 + 56/f^2; measured 52 when they are
        split at full resolution, asked 56."""
        from ..cells.segmentation import SegmentationParams

        fields = segmentation_options(self.config["segmentation"])[0]
        z, y, x = self.experiment.image_shape_zyx
        voxel_yx = self.experiment.voxel_size_zyx_um[1]
        f = SegmentationParams.from_dict(fields).binning_factor(voxel_yx)
        per_voxel = 56 if f == 1 else 16 + 56 / f**2
        band = 2 * int(round(segmentation_options(self.config["segmentation"])[1] / voxel_yx))
        return int(math.ceil(800 + per_voxel * z * (y + band) * (x + band) / 2**20)) * attempt

    def register_mem_mb(self, attempt: int = 1) -> int:
        """Per round in flight (the job's threads): reference, moving and resampled volumes in float32,
        plus ~5 complex64 copies of the rigid crop."""
        z, y, x = self.experiment.image_shape_zyx
        crop = self.config["registration"]["rigid_crop_yx"]
        crop_voxels = z * min(y, crop or y) * min(x, crop or x)
        per_round = (16 * self._voxels + 40 * crop_voxels) / 2**20
        return int(math.ceil(800 + ROUND_THREADS * per_round)) * attempt

    def register_runtime_min(self, attempt: int = 1) -> int:
        """All rounds and bits of a tile at 1 Mvoxel/s per volume (benchmarks/RESULTS.md)."""
        volumes = len(self.experiment.rounds) + self.experiment.n_bits
        return int(math.ceil(5 + volumes * self._voxels / 1e6 / 60)) * attempt

    def ingest_runtime_min(self, attempt: int = 1) -> int:
        """Minutes for one tile's ingest job: 20 MB/s worst case on a shared file system, plus start-up."""
        raw_mb = len(self.experiment.rounds) * self.experiment.raw_bytes_per_tile_round / 2**20
        return int(math.ceil(5 + raw_mb / 20 / 60)) * attempt
