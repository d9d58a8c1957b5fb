"""Rule segment: one tile's round-0 fiducial into a versioned cell mask file."""
from merfishflow.workflow.config import segmentation_options
from merfishflow.workflow.jobs import run_job
from merfishflow.io.paths import experiment_of
from merfishflow.cells.segmentation import SegmentationParams
from merfishflow.stages.cells import run_segment


def main(smk, progress):
    fields, context_um, image = segmentation_options(smk.params.segmentation)
    run_segment(experiment_of(smk.output[0]), smk.wildcards.tile, SegmentationParams.from_dict(fields),
                tiles=smk.params.tiles, context_um=context_um, image=image, progress=progress)


run_job(snakemake, main)  # noqa: F821 (injected by Snakemake)
