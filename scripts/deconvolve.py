"""Rule deconvolve: Richardson-Lucy of one tile (every round's fiducial and readout bits)."""
from merfishflow.workflow.jobs import run_job
from merfishflow.io.paths import experiment_of
from merfishflow.stages.deconvolve import DeconvolutionParams, run_deconvolve_tile


def main(smk, progress):
    run_deconvolve_tile(experiment_of(smk.output[0]), smk.wildcards.tile,
                        DeconvolutionParams(**smk.params.deconvolution), progress=progress, threads=smk.threads)


run_job(snakemake, main)  # noqa: F821 (injected by Snakemake)
