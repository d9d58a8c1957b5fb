"""Which tiles lie near a tile: the neighbours a tile's segmentation canvas may need.

Asked once per segment job when the DAG is built, so it works on the
manifest's nominal stage positions alone (no datastore, no heavy imports).
"""

from __future__ import annotations

import numpy as np

from ..io.metadata import Experiment
from ..io.naming import index_of, tile_name

# Stage errors (µm) the neighbour search for a segmentation canvas allows for, on top of the band.
STAGE_SLACK_UM = 5.0


def tiles_near(experiment: Experiment, tile: str, context_um: float) -> list[str]:
    """Tiles whose images may fall in ``tile``'s segmentation canvas (itself included), in tile order.

    By nominal stage positions, with the band grown by ``STAGE_SLACK_UM``
    for stage errors that global registration corrects; a job reads only
    these tiles' placements and fiducials, not the whole experiment's.
    """
    if not context_um:
        return [tile]
    # Vectorized over tiles: this runs once per segment job when the DAG is built.
    positions = np.asarray(experiment.stage_positions_um, dtype=np.float64)[:, 1:]
    size = np.asarray(experiment.image_shape_zyx[1:]) * np.asarray(experiment.voxel_size_zyx_um[1:])
    reach = context_um + STAGE_SLACK_UM
    own = positions[index_of(tile, "tile")]
    near = np.all((positions < own + size + reach) & (positions + size > own - reach), axis=1)
    return [tile_name(int(i)) for i in np.flatnonzero(near)]
