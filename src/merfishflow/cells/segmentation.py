"""3D cell segmentation of the fiducial (polyDT) image: classical seeded watershed.

Pure functions in the style of scikit-image: numpy arrays in and out, no
files, no Snakemake. Arrays are 3D, axes (z, y, x); lengths given in µm are
converted to voxels with ``voxel_size_zyx_um``, so the anisotropic z step is
handled everywhere (smoothing, distance transform, seed spacing).

The default method (``"watershed"``) needs no GPU and no model download:

1. **Smooth** with a Gaussian of ``smoothing_sigma_um``.
2. **Threshold.** Otsu's threshold of the *log* of the smoothed image splits
   it into a dim (background) and a bright (cell) class: the log makes the
   split a ratio, which suits a stain whose cytoplasm is ~15x brighter than
   the outside. If the bright class's median is less than ``min_contrast``
   times the dim class's, the image holds no cells and the result is all 0
   (a blank or noise-only image is not an error). The threshold is
   ``threshold_fraction`` of the way from the dim to the bright class median
   (0.5 = half maximum, where a blurred edge lies). The dim level is one
   value for the whole volume (on the simulator the best threshold of every
   z plane was the same within 10 %, whereas per-plane class medians follow
   the blurred halo and made the top and bottom planes' cells too large).
   The bright level is **local**: the stain is granular, so the cytoplasm
   next to an edge can be far dimmer or brighter than the bright class's
   median, and a global half maximum then cuts a dim cell too small and a
   bright one too large. With ``edge_level_sigma_um`` > 0 the mask from
   the global level is only a first pass: the bright level of each voxel
   is the geometric mean intensity of that mask around it (a Gaussian of
   ``edge_level_sigma_um``, normalised by the mask's own blurred weight, so
   the dim outside does not pull it down near an edge; the global median
   where the mask is almost absent), and the mask is thresholded again at
   ``threshold_fraction`` of the way from the dim median to it: a dim cell
   and a bright one are both cut at their own half maximum
   (``docs/masks.md``, 'Accuracy'; measurements in benchmarks/RESULTS.md).
3. **Fill holes and erode.** In every z plane, dim holes up to
   ``max_hole_area_um2`` are filled (nuclei in cross-section; a larger hole is
   space between cells, which a full 2D fill would close), then every hole
   in 3D; the mask is then eroded by ``edge_erosion_voxels`` (6-connected),
   because blur leaves the half-maximum mask about a voxel too large.
   **Steps 4 to 10 run on bins**: the image binned in y and x to about
   ``working_voxel_yx_um`` (3 x 3 pixels at 0.108 µm;
   :func:`merfishflow.image.binning.block_mean`), with steps 1 to 3 repeated on
   it without the erosion to bound the watershed. The labels are then
   repeated back to full resolution, cut to the full-resolution mask of
   step 3, and steps 9 and 10 run once more there for the pieces this
   leaves. Cells are micrometres across, so the split needs no 0.1 µm
   pixels, but the edges do, so only the split is binned (benchmarks/RESULTS.md,
   segmentation).
4. **Nucleus markers.** Nuclei are dimmer than the cytoplasm around them
   (the simulator's 0.35x, a log contrast of -1.05 before blur). The
   darkness is the log image smoothed with ``nucleus_sigma_um`` minus the
   foreground-weighted local mean of the log image (Gaussian of
   ``nucleus_context_sigma_um``; a normalised convolution, so the dim
   outside does not lower the reference near a cell's edge). Markers are
   its local minima (box of +-0.7 µm; not on the top or bottom plane, where
   the cut cells bias the reference) that are at least
   ``nucleus_log_contrast`` darker than that mean and at least
   ``nucleus_min_depth_um`` inside the foreground, taken darkest first and
   spaced ``nucleus_min_distance_um`` apart. ``nucleus_log_contrast=0``
   skips this step (steps 6 to 8 then use distance seeds only and the
   watershed of the negated distance).
5. **Distance transform** of the foreground in µm
   (``scipy.ndimage.distance_transform_edt`` with ``sampling=voxel_size``);
   the edges of the array do not count as background, so cells cut by the
   top or bottom of a thin stack keep their depth.
6. **Distance seeds** stand in for nuclei that were not found: local maxima
   of the distance within an ellipsoid of ``seed_footprint_radius_um`` that
   are at least ``min_seed_depth_um`` deep, taken greedily deepest first and
   dropped when closer than ``min_seed_distance_um`` (in µm) to a seed
   already taken, and then dropped when closer than
   ``seed_nucleus_distance_um`` to a nucleus marker; every connected
   foreground object gets at least one seed (its deepest voxel).
7. **Unclaimed foreground.** A cell reaches at most ``max_cell_radius_um``
   from its nucleus, so foreground farther than that from every seed belongs
   to a cell whose nucleus is unseen (cut off by the experiment's edge, or
   missed): each such region gets a seed at its voxel farthest from the
   seeds (two rounds at most).
8. **Seeded watershed** (``skimage.segmentation.watershed``) within the
   foreground of the distance to the nearest seed (µm) minus
   ``split_depth_weight`` times the foreground distance capped at 3 µm.
   Touching cells carry the same stain, so where they meet is not in the
   image: the simulator's cells are Voronoi regions of their nuclei, and the
   first term splits them there; the second lets a neck of the foreground
   pull the boundary. Without nucleus markers the landscape is the negated
   distance, and cells split at necks only.
9. **Merge fragments**: a region smaller than ``merge_volume_um3`` that
   touches another joins the one it shares the most faces with
   (:func:`merge_small_regions`).
10. **Clean up**: cells smaller than ``min_cell_volume_um3`` are removed, and
   the rest are numbered 1..N in the raster (z, y, x) order of their seeds.

The result is deterministic (no randomness; ties broken by raster order).

``method="cellpose"`` runs Cellpose (3D, ``anisotropy`` from the voxel
size) when the optional ``cellpose`` package is installed; it is not a
dependency of merfishflow, and asking for it without the package raises
:class:`~merfishflow.errors.InputError`.

Memory: about 13 bytes per voxel above the input with the split on bins, 52
with the split at full resolution (``working_voxel_yx_um=0``: scipy's int32
feature transforms and float64 distances and the watershed's arrays on every
voxel); the workflow sizes segment jobs from these
(:mod:`merfishflow.workflow.resources`). Times: benchmarks/RESULTS.md,
segmentation.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import numpy as np
from scipy import ndimage as ndi

from ..image.binning import block_mean
from ..errors import InputError
from ..io.masks import count_label_pairs
from ..image.registration import as_volume

__all__ = ["METHODS", "SegmentationParams", "merge_small_regions", "segment_cells"]

METHODS = ("watershed", "cellpose")
# Otsu's threshold and the class medians are computed on a strided sample of at most this many voxels.
_SAMPLE_VOXELS = 2**22
# Nucleus candidates are minima of the darkness within a box of this half-width (µm); the greedy
# nucleus_min_distance_um spacing then keeps the darkest of those near each other.
_NUCLEUS_PEAK_HALF_WIDTH_UM = 0.7
# The depth term of the split landscape stops growing this deep in the foreground (µm): deeper
# voxels are all cell interior, where only the distance to the markers should decide.
_DEPTH_CAP_UM = 3.0
# Where the first-pass mask's blurred weight is below this, the local bright level is the global
# one (such voxels lie far outside every cell; the ratio of two tiny blurred sums is noise there).
_EDGE_LEVEL_MIN_WEIGHT = 0.05
# The local bright level is computed on y/x bins of at least this many per edge_level_sigma_um.
_EDGE_LEVEL_BINS_PER_SIGMA = 3.0
# Rounds of seeding unclaimed foreground (:func:`_claim_far_foreground`); each costs a distance transform.
_CLAIM_ROUNDS = 2


@dataclass(frozen=True)
class SegmentationParams:
    """Parameters of :func:`segment_cells`; defaults suit the simulator (cell radius ~3.5 µm).

    Attributes
    ----------
    method : str
        ``"watershed"`` (classical, default) or ``"cellpose"`` (needs the optional package).
    smoothing_sigma_um : float
        Gaussian sigma before thresholding, µm (>= 0).
    threshold_fraction : float
        Threshold position between the dim and bright class medians, (0, 1):
        0.5 = half maximum, where a blurred edge lies.
    edge_level_sigma_um : float
        The bright level of the threshold is the local mean log intensity of
        the first-pass mask within a Gaussian of this sigma, µm (>= 0); about
        the scale of the stain's granules and well below a cell radius.
        0 = the bright class's median for the whole volume (one threshold).
    max_hole_area_um2 : float
        Dim holes up to this area (µm²) in a z plane are filled (nuclei
        seen in cross-section); larger ones are space between cells.
    edge_erosion_voxels : int
        The mask is eroded by this many voxels (6-connected; the array's
        edges do not erode it): blur makes the half-maximum mask too large
        by about a voxel along each axis. 0 = no erosion.
    min_contrast : float
        Minimum ratio of the bright to the dim class median for the image to
        contain cells at all (> 1); below it the result is empty.
    min_seed_distance_um : float
        Minimum distance between two seeds, µm: a bit less than a cell radius.
    min_seed_depth_um : float
        A seed must lie at least this far inside the foreground, µm.
    seed_footprint_radius_um : float
        Radius of the ellipsoidal neighbourhood in which a seed is a maximum of the distance, µm.
    min_cell_volume_um3 : float
        Smaller objects (and watershed fragments) are removed.
    merge_volume_um3 : float
        A watershed region smaller than this that touches another cell is
        merged into the neighbour it shares the most surface with (0 = never):
        the distance transform of a cell cut by the stack or a flattened
        cell has several maxima, and each would otherwise be a cell. About a
        third of the simulator's typical cell volume.
    nucleus_log_contrast : float
        A nucleus marker is a voxel whose log intensity (smoothed with
        ``nucleus_sigma_um``) lies at least this much (natural log) below the
        mean log intensity of the foreground around it (``nucleus_context_sigma_um``):
        0.3 = 26 % darker. 0 turns nucleus markers off (the plain distance
        watershed of the earlier versions).
    nucleus_sigma_um : float
        Gaussian sigma of the log image for the nucleus darkness, µm (> 0):
        smooths the stain's granular texture, well below the nucleus radius.
    nucleus_context_sigma_um : float
        Gaussian sigma of the foreground-weighted local mean of the log image
        that the darkness is measured against, µm; about the nucleus radius.
    nucleus_min_depth_um : float
        A nucleus marker lies at least this far inside the foreground, µm
        (the dim rim of a cell is not a nucleus).
    nucleus_min_distance_um : float
        Minimum distance between two nucleus markers, µm (darkest first): a
        nucleus's diameter, less than the distance between two nuclei.
    seed_nucleus_distance_um : float
        A distance-maximum seed (a cell whose nucleus was not found) is kept
        only this far or farther from every nucleus marker, µm: about a cell radius.
    split_depth_weight : float
        Cells are grown from the markers over the distance to the nearest
        marker minus this weight times the depth in the foreground (capped at
        ``_DEPTH_CAP_UM``): 0 = a Voronoi split by the markers; larger values
        let the split follow necks of the foreground.
    working_voxel_yx_um : float
        The cells are split (markers, watershed) on the image binned in y
        and x to about this pixel size, µm (a whole number of pixels per
        bin, at least 1); the foreground is found at full resolution, and
        the labels are brought back to it inside that foreground. Cells are
        micrometres across: splitting them at 0.1 µm pixels costs ~9 times
        the time and memory for no accuracy (``docs/masks.md``). 0 = split
        at full resolution.
    cellpose_model : str
        Cellpose model name (``method="cellpose"`` only).
    cell_diameter_um : float
        Expected cell diameter, µm (Cellpose's ``diameter``, converted to pixels).
    """

    method: str = "watershed"
    smoothing_sigma_um: float = 0.2
    threshold_fraction: float = 0.5
    edge_level_sigma_um: float = 1.0
    max_hole_area_um2: float = 8.0
    edge_erosion_voxels: int = 1
    min_contrast: float = 2.0
    min_seed_distance_um: float = 3.0
    min_seed_depth_um: float = 0.8
    seed_footprint_radius_um: float = 1.0
    min_cell_volume_um3: float = 5.0
    merge_volume_um3: float = 20.0
    nucleus_log_contrast: float = 0.3
    nucleus_sigma_um: float = 0.3
    nucleus_context_sigma_um: float = 1.5
    nucleus_min_depth_um: float = 1.0
    nucleus_min_distance_um: float = 3.0
    seed_nucleus_distance_um: float = 4.0
    split_depth_weight: float = 2.0
    max_cell_radius_um: float = 5.0
    working_voxel_yx_um: float = 0.3
    cellpose_model: str = "cyto3"
    cell_diameter_um: float = 7.0

    def __post_init__(self):
        if self.method not in METHODS:
            raise InputError(f"segmentation method must be one of {', '.join(METHODS)}, got {self.method!r}")
        checks = {
            "smoothing_sigma_um": self.smoothing_sigma_um >= 0,
            "threshold_fraction": 0 < self.threshold_fraction < 1,
            "edge_level_sigma_um": self.edge_level_sigma_um >= 0,
            "max_hole_area_um2": self.max_hole_area_um2 >= 0,
            "edge_erosion_voxels": isinstance(self.edge_erosion_voxels, int) and 0 <= self.edge_erosion_voxels <= 10,
            "min_contrast": self.min_contrast > 1,
            "min_seed_distance_um": self.min_seed_distance_um > 0,
            "min_seed_depth_um": self.min_seed_depth_um >= 0,
            "seed_footprint_radius_um": self.seed_footprint_radius_um > 0,
            "min_cell_volume_um3": self.min_cell_volume_um3 >= 0,
            "merge_volume_um3": self.merge_volume_um3 >= 0,
            "nucleus_log_contrast": self.nucleus_log_contrast >= 0,
            "nucleus_sigma_um": self.nucleus_sigma_um > 0,
            "nucleus_context_sigma_um": self.nucleus_context_sigma_um > 0,
            "nucleus_min_depth_um": self.nucleus_min_depth_um >= 0,
            "nucleus_min_distance_um": self.nucleus_min_distance_um > 0,
            "seed_nucleus_distance_um": self.seed_nucleus_distance_um >= 0,
            "split_depth_weight": self.split_depth_weight >= 0,
            "max_cell_radius_um": self.max_cell_radius_um >= 0,
            "cell_diameter_um": self.cell_diameter_um > 0,
            "working_voxel_yx_um": self.working_voxel_yx_um >= 0,
        }
        for name, ok in checks.items():
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not np.isfinite(value) or not ok:
                raise InputError(f"segmentation parameter {name}: invalid value {value!r}")

    def binning_factor(self, voxel_yx_um):
        """Pixels per bin in y and x for the cell split, for pixels of ``voxel_yx_um`` (see ``working_voxel_yx_um``)."""
        if self.working_voxel_yx_um <= 0:
            return 1
        return max(1, int(round(self.working_voxel_yx_um / float(voxel_yx_um))))

    def to_dict(self):
        """JSON-able dict; ``SegmentationParams(**d)`` re-creates the object."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d):
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise InputError(f"unknown segmentation parameter(s): {', '.join(sorted(unknown))}")
        return cls(**d)


# validation ------------------------------------------------------------------------------------
def _as_volume(image):
    image = as_volume(image, "fiducial")
    if image.dtype.kind == "f" and not np.all(np.isfinite(image)):
        raise InputError("fiducial: image contains NaN or infinite values")
    return image


def _voxel_size(voxel_size_zyx_um):
    v = np.asarray(voxel_size_zyx_um, dtype=np.float64).reshape(-1)
    if v.shape != (3,) or not np.all(np.isfinite(v)) or np.any(v <= 0):
        raise InputError(f"voxel_size_zyx_um must be 3 positive numbers (z, y, x), got {voxel_size_zyx_um!r}")
    return v


def _ellipsoid(radius_um, voxel):
    r = np.maximum(radius_um / voxel, 0.5)
    half = np.floor(r).astype(int)
    zz, yy, xx = np.ogrid[-half[0]:half[0] + 1, -half[1]:half[1] + 1, -half[2]:half[2] + 1]
    return (zz / r[0]) ** 2 + (yy / r[1]) ** 2 + (xx / r[2]) ** 2 <= 1


# steps -----------------------------------------------------------------------------------------
def _foreground(smoothed, voxel, params):
    """Boolean cell mask (nucleus holes filled), or None when the image has no cell/background contrast."""
    from skimage.filters import threshold_otsu
    from skimage.morphology import remove_small_holes

    flat = smoothed.reshape(-1)
    sample = flat[:: max(1, flat.size // _SAMPLE_VOXELS)]
    floor = max(float(np.percentile(sample, 99.9)) * 1e-6, 1e-12)
    log_sample = np.log(np.maximum(sample, floor))
    if log_sample.max() - log_sample.min() < 1e-9:
        return None
    t_log = float(threshold_otsu(log_sample))
    dim_med = float(np.median(sample[log_sample <= t_log]))
    bright_med = float(np.median(sample[log_sample > t_log]))
    if bright_med < params.min_contrast * max(dim_med, floor):
        return None
    fg = smoothed > dim_med + params.threshold_fraction * (bright_med - dim_med)
    if params.edge_level_sigma_um > 0:
        threshold = _local_threshold(smoothed, fg, voxel, params, dim_med, bright_med, floor)
        np.greater(smoothed, threshold, out=fg)
        del threshold
    max_hole_px = int(params.max_hole_area_um2 / (voxel[1] * voxel[2]))
    for plane in fg:
        remove_small_holes(plane, max_size=max_hole_px, out=plane)
    fg = ndi.binary_fill_holes(fg)
    if params.edge_erosion_voxels:
        # Blur spreads the stain, so the half-maximum mask overshoots: on the simulator it holds
        # 17 % more voxels outside the cells than it misses inside them, within a voxel of the edge.
        fg = ndi.binary_erosion(fg, structure=ndi.generate_binary_structure(3, 1),
                                iterations=params.edge_erosion_voxels, border_value=1)
    return fg


def _local_threshold(smoothed, mask, voxel, params, dim_level, global_level, floor):
    """Threshold volume (float32) of step 2: ``threshold_fraction`` of the way from ``dim_level`` to the local level.

    The local (cytoplasm) level is the mask's mean log intensity around each
    voxel, ``exp(G(log(I) * mask) / G(mask))`` with a Gaussian ``G`` of
    ``params.edge_level_sigma_um``: a normalised convolution, so near an edge
    only the cell's side counts. Where ``G(mask)`` is below
    ``_EDGE_LEVEL_MIN_WEIGHT`` it is ``global_level``. The level is smooth, so
    it is computed on y/x bins of about a third of the sigma
    (:func:`merfishflow.image.binning.block_mean`) and repeated back: a Gaussian of
    ~9 pixels at full resolution would cost more than the rest of the
    foreground step.
    """
    sigma_um = params.edge_level_sigma_um
    b = max(1, int(sigma_um / float(voxel[1]) / _EDGE_LEVEL_BINS_PER_SIGMA))
    level = np.log(np.maximum(smoothed, np.float32(floor)), dtype=np.float32)
    level *= mask
    level = block_mean(level, (1, b, b))
    weight = block_mean(mask, (1, b, b))
    sigma = sigma_um / (np.asarray(voxel, dtype=np.float64) * np.array([1.0, b, b]))
    ndi.gaussian_filter(level, sigma, output=level)
    ndi.gaussian_filter(weight, sigma, output=weight)
    far = weight < _EDGE_LEVEL_MIN_WEIGHT
    np.maximum(weight, _EDGE_LEVEL_MIN_WEIGHT, out=weight)
    level /= weight
    del weight
    level[far] = np.log(global_level)
    del far
    np.exp(level, out=level)
    level -= dim_level
    level *= params.threshold_fraction
    level += dim_level
    if b > 1:
        level = np.repeat(np.repeat(level, b, axis=1), b, axis=2)[:, :mask.shape[1], :mask.shape[2]]
    return level


def _seeds(distance, foreground, voxel, params):
    """Seed voxel indices (n, 3) at maxima of the distance, deepest first, spaced; raster order."""
    footprint = _ellipsoid(params.seed_footprint_radius_um, voxel)
    local_max = ndi.maximum_filter(distance, footprint=footprint, mode="nearest")
    peaks = (distance == local_max) & foreground & (distance >= params.min_seed_depth_um)
    del local_max
    coords = np.argwhere(peaks)                      # raster order
    order = np.argsort(-distance[peaks], kind="stable")
    return _raster_order(_greedy_spacing(coords[order], voxel, params.min_seed_distance_um))


def _greedy_spacing(coords, voxel, min_distance_um):
    """Keep ``coords`` (n, 3; best first) greedily, dropping each closer than ``min_distance_um`` to a kept one."""
    from scipy.spatial import cKDTree

    if len(coords) == 0:
        return coords
    tree = cKDTree(coords * voxel)
    taken = np.zeros(len(coords), dtype=bool)
    removed = np.zeros(len(coords), dtype=bool)
    for i in range(len(coords)):                     # one step per candidate (a few per cell), not per voxel
        if removed[i]:
            continue
        taken[i] = True
        removed[tree.query_ball_point(coords[i] * voxel, min_distance_um)] = True
    return coords[taken]


def _raster_order(coords):
    coords = np.asarray(coords, dtype=np.int64).reshape(-1, 3)
    return coords[np.lexsort(coords.T[::-1])]


def _seed_every_object(coords, distance, foreground):
    """``coords`` plus the deepest voxel of every connected foreground object that holds none; raster order."""
    objects, n_objects = ndi.label(foreground)
    if n_objects:
        seeded = np.zeros(n_objects + 1, dtype=bool)
        seeded[objects[tuple(coords.T)]] = True
        missing = np.flatnonzero(~seeded[1:]) + 1
        if len(missing):
            extra = ndi.maximum_position(distance, objects, missing)
            coords = np.concatenate([coords, np.asarray(extra, dtype=coords.dtype).reshape(-1, 3)])
    del objects
    return _raster_order(coords)


def _nucleus_darkness(image, foreground, voxel, params):
    """Log intensity minus the foreground's local mean log intensity (float32; negative = darker).

    ``log(I) * G_s1 - G_s2(log(I) * fg) / G_s2(fg)``: a normalised convolution,
    so the dim outside does not pull the reference level down near a cell's edge.
    """
    image = np.asarray(image, dtype=np.float32)
    floor = max(float(image.max()) * 1e-3, 1e-12)
    log_image = np.log(np.maximum(image, floor))     # new float32 array
    weight = foreground.astype(np.float32)
    reference = log_image * weight
    ndi.gaussian_filter(reference, params.nucleus_context_sigma_um / voxel, output=reference)
    ndi.gaussian_filter(weight, params.nucleus_context_sigma_um / voxel, output=weight)
    np.maximum(weight, 1e-3, out=weight)
    np.divide(reference, weight, out=reference)
    del weight
    ndi.gaussian_filter(log_image, params.nucleus_sigma_um / voxel, output=log_image)
    np.subtract(log_image, reference, out=log_image)
    return log_image


def _nucleus_markers(image, foreground, voxel, params):
    """Candidate nucleus positions (n, 3), darkest first (not yet checked for depth or spacing)."""
    darkness = _nucleus_darkness(image, foreground, voxel, params)
    size = tuple(int(k) for k in 2 * np.round(_NUCLEUS_PEAK_HALF_WIDTH_UM / voxel).astype(int) + 1)
    local_min = ndi.minimum_filter(darkness, size=size, mode="nearest")
    peaks = (darkness == local_min) & foreground & (darkness <= -params.nucleus_log_contrast)
    del local_min
    if peaks.shape[0] > 2:
        # The top and bottom planes cut cells, so their reference is biased low and their minima
        # are half-box minima: most of them are not nuclei (on the simulator, 45 of 50 false markers).
        peaks[[0, -1]] = False
    coords = np.argwhere(peaks)                      # raster order
    order = np.argsort(darkness[peaks], kind="stable")
    return coords[order]


def _claim_far_foreground(coords, foreground, voxel, params):
    """Seeds for foreground too far from every seed to belong to its cell, and the distance to the seeds.

    A cell reaches at most ``max_cell_radius_um`` from its nucleus, so
    foreground farther than that from every seed belongs to a cell whose
    nucleus is unseen: cut off by the experiment's edge, or missed. Each
    such region of at least ``min_cell_volume_um3`` gets a seed at its voxel
    farthest from the seeds, and this repeats (``_CLAIM_ROUNDS`` at most)
    until no region is left.

    Returns
    -------
    coords : ndarray (n, 3), raster order
    distance : ndarray of float32
        Distance (µm) of every voxel to the nearest seed.
    """
    min_voxels = max(params.min_cell_volume_um3 / float(np.prod(voxel)), 1.0)
    for round_ in range(_CLAIM_ROUNDS + 1):
        unseeded = np.ones(foreground.shape, dtype=bool)
        unseeded[tuple(coords.T)] = False
        distance = ndi.distance_transform_edt(unseeded, sampling=voxel).astype(np.float32)
        del unseeded
        if params.max_cell_radius_um <= 0 or round_ == _CLAIM_ROUNDS:
            break
        far, n_far = ndi.label(foreground & (distance > params.max_cell_radius_um))
        if n_far == 0:
            break
        sizes = np.bincount(far.reshape(-1), minlength=n_far + 1)
        ids = np.flatnonzero(sizes >= min_voxels)
        ids = ids[ids > 0]
        if len(ids) == 0:
            break
        extra = np.asarray(ndi.maximum_position(distance, far, ids), dtype=np.int64).reshape(-1, 3)
        del far
        coords = _raster_order(np.concatenate([coords, extra]))
    return coords, distance


def merge_small_regions(labels, min_voxels, max_rounds=10):
    """Merge every region smaller than ``min_voxels`` into the touching region it shares most faces with.

    Regions touching no other region are left alone. A cell cut by the
    image's edge can be small only because it is cut, and then it is merged
    into its neighbour: the segment stage therefore segments each tile with
    a band of its neighbours around it (``segmentation.context_um``), which
    leaves such cuts only at the experiment's outer edge. Smallest regions go
    first; ties go to the smaller neighbour id,
    so the result is deterministic. Repeated (at most ``max_rounds`` times)
    until no small region touches another.

    Parameters
    ----------
    labels : ndarray of int, 3D
        0 = background.
    min_voxels : float

    Returns
    -------
    ndarray, same shape and dtype (labels are not renumbered)
    """
    labels = np.asarray(labels)
    for _ in range(max_rounds):
        sizes = np.bincount(labels.reshape(-1))
        small = (sizes < min_voxels) & (sizes > 0)
        small[0] = False
        if not small.any():
            break
        contacts = []
        for axis in range(labels.ndim):
            a = np.moveaxis(labels, axis, 0)
            lower, upper = a[:-1], a[1:]
            touching = (lower != upper) & (lower > 0) & (upper > 0)
            u, w = lower[touching], upper[touching]
            contacts += [np.stack([u, w]), np.stack([w, u])]
        pairs = np.concatenate(contacts, axis=1) if contacts else np.zeros((2, 0), labels.dtype)
        pairs = pairs[:, small[pairs[0]]]
        if pairs.shape[1] == 0:
            break
        keys, faces = count_label_pairs(pairs[0], pairs[1])
        target = {}
        for (region, neighbour), n in zip(keys.T.tolist(), faces.tolist()):
            if region not in target or n > target[region][0]:     # sorted keys: ties keep the smaller id
                target[region] = (n, neighbour)
        lut = np.arange(len(sizes), dtype=labels.dtype)
        for region in sorted(target, key=lambda r: (sizes[r], r)):
            lut[region] = lut[target[region][1]]
        labels = lut[labels]
    return labels


def _smoothed_foreground(image, voxel, params):
    work = image.astype(np.float32, copy=True)
    if params.smoothing_sigma_um > 0:
        ndi.gaussian_filter(work, params.smoothing_sigma_um / voxel, output=work)
    return _foreground(work, voxel, params)


def _segment_watershed(image, voxel, params, progress):
    f = params.binning_factor(voxel[1])
    if f == 1:
        return _split_cells(image, voxel, params, progress)
    fg = _smoothed_foreground(image, voxel, params)
    if fg is None or not fg.any():
        progress("segmentation: no cell/background contrast; 0 cells")
        return np.zeros(image.shape, dtype=np.uint32)
    progress(f"segmentation: foreground {fg.mean():.1%} of the volume at full resolution; "
             f"splitting cells on {f} x {f} bins")
    binned = block_mean(image, (1, f, f))
    # The binned mask only bounds the watershed; the full-resolution mask (eroded) decides the edges.
    labels = _split_cells(binned, voxel * np.array([1.0, f, f]), replace(params, edge_erosion_voxels=0), progress)
    del binned
    full = np.repeat(np.repeat(labels, f, axis=1), f, axis=2)[:, :image.shape[1], :image.shape[2]]
    del labels
    full[~fg] = 0
    del fg
    # The full-resolution mask can leave slivers of a cell, or of one that mostly lay outside it.
    return _clean_up_cells(full, voxel, params)


def _split_cells(image, voxel, params, progress):
    from scipy.spatial import cKDTree
    from skimage.segmentation import watershed

    fg = _smoothed_foreground(image, voxel, params)
    if fg is None or not fg.any():
        progress("segmentation: no cell/background contrast; 0 cells")
        return np.zeros(image.shape, dtype=np.uint32)
    progress(f"segmentation: foreground {fg.mean():.1%} of the volume")
    use_nuclei = params.nucleus_log_contrast > 0
    nuclei = _nucleus_markers(image, fg, voxel, params) if use_nuclei else np.zeros((0, 3), np.int64)
    distance = ndi.distance_transform_edt(fg, sampling=voxel).astype(np.float32)
    if use_nuclei:
        nuclei = nuclei[distance[tuple(nuclei.T)] >= params.nucleus_min_depth_um]
        nuclei = _greedy_spacing(nuclei, voxel, params.nucleus_min_distance_um)
    coords = _seeds(distance, fg, voxel, params)
    if len(nuclei) and len(coords):
        # Distance-maximum seeds stand in for nuclei that were not found, away from every found one.
        far, _ = cKDTree(nuclei * voxel).query(coords * voxel)
        coords = coords[far >= params.seed_nucleus_distance_um]
    coords = _seed_every_object(np.concatenate([nuclei, coords]).astype(np.int64), distance, fg)
    progress(f"segmentation: {len(coords)} seeds ({len(nuclei)} nuclei, "
             f"{len(coords) - len(nuclei)} distance maxima)" if use_nuclei else
             f"segmentation: {len(coords)} seeds")
    if use_nuclei:
        # Grow the cells over the distance to the nearest marker (a Voronoi split: where touching
        # cells meet is decided by their nuclei), lowered by the capped depth so that necks of
        # the foreground still attract the boundary.
        np.minimum(distance, _DEPTH_CAP_UM, out=distance)
        distance *= -params.split_depth_weight
        coords, to_seed = _claim_far_foreground(coords, fg, voxel, params)
        progress(f"segmentation: {len(coords)} seeds after seeding foreground farther than "
                 f"{params.max_cell_radius_um} um from every seed")
        np.add(distance, to_seed, out=distance, casting="same_kind")
        del to_seed
    else:
        np.negative(distance, out=distance)
    markers = np.zeros(image.shape, dtype=np.int32)
    markers[tuple(coords.T)] = np.arange(1, len(coords) + 1, dtype=np.int32)
    labels = watershed(distance, markers, mask=fg)
    del distance, markers, fg
    return _clean_up_cells(labels, voxel, params)


def _clean_up_cells(labels, voxel, params):
    """Small regions merged into their neighbours, then smaller ones removed; renumbered 1..N in label order."""
    from skimage.segmentation import relabel_sequential

    if params.merge_volume_um3 > 0:
        labels = merge_small_regions(labels, params.merge_volume_um3 / float(np.prod(voxel)))
    min_voxels = params.min_cell_volume_um3 / float(np.prod(voxel))
    small = np.bincount(labels.reshape(-1)) < min_voxels
    small[0] = False
    if small.any():
        labels[small[labels]] = 0
    labels, _, _ = relabel_sequential(labels)
    return labels.astype(np.uint32, copy=False)


def _segment_cellpose(image, voxel, params, progress):
    try:
        from cellpose import models  # noqa: PLC0415 - optional dependency, imported only when asked for
    except ImportError:
        raise InputError(
            "segmentation method 'cellpose' needs the optional 'cellpose' package, which is not installed "
            "(pip install cellpose, ideally with a GPU); use method 'watershed' (the default) otherwise"
        ) from None
    progress(f"segmentation: cellpose model {params.cellpose_model}")
    model = models.CellposeModel(model_type=params.cellpose_model)
    result = model.eval(np.asarray(image, dtype=np.float32), do_3D=True, channel_axis=None, z_axis=0,
                        diameter=params.cell_diameter_um / voxel[1], anisotropy=voxel[0] / voxel[1])
    masks = np.asarray(result[0])
    from skimage.segmentation import relabel_sequential

    labels, _, _ = relabel_sequential(masks.astype(np.int64))
    return labels.astype(np.uint32)


# public ----------------------------------------------------------------------------------------
def segment_cells(fiducial, voxel_size_zyx_um, params=SegmentationParams(), progress=None):
    """Label the cells of a 3D fiducial (polyDT) image.

    Parameters
    ----------
    fiducial : ndarray, shape (z, y, x)
        Camera-corrected (offset-subtracted) fiducial image, any real dtype;
        bright cytoplasm, dimmer nuclei, dim outside cells.
    voxel_size_zyx_um : 3 floats
    params : SegmentationParams or dict, optional
    progress : callable(str), optional
        Called with a line after each step.

    Returns
    -------
    ndarray of uint32, shape (z, y, x)
        0 = background, cells 1..N numbered in raster order of their seeds.
        A blank image, or one without cell/background contrast
        (``params.min_contrast``), gives all zeros.

    Raises
    ------
    InputError
        Not a finite 3D real image, a bad voxel size or parameter, or
        ``method="cellpose"`` without the ``cellpose`` package.
    """
    if isinstance(params, dict):
        params = SegmentationParams.from_dict(params)
    image = _as_volume(fiducial)
    voxel = _voxel_size(voxel_size_zyx_um)
    progress = progress or (lambda _msg: None)
    if params.method == "cellpose":
        return _segment_cellpose(image, voxel, params, progress)
    return _segment_watershed(image, voxel, params, progress)
