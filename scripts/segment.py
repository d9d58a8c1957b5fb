"""Rule segment: one tile's round-0 fiducial into a versioned cell mask file."""
from merfishflow.jobs import run_job
from merfishflow.paths import SEGMENTATION_IMAGES, experiment_of
from merfishflow.segmentation import SegmentationParams
from merfishflow.stages.cells import DEFAULT_CONTEXT_UM, segment_tile_stage


def main(smk, progress):
    options = dict(smk.params.segmentation)
    context_um = options.pop("context_um", DEFAULT_CONTEXT_UM)
    image = options.pop("image", SEGMENTATION_IMAGES[0])
    segment_tile_stage(experiment_of(smk.output[0]), smk.wildcards.tile, SegmentationParams.from_dict(options),
                       tiles=smk.params.tiles, context_um=context_um, image=image, progress=progress)


run_job(snakemake, main)  # noqa: F821 (injected by Snakemake)
