"""Rules deconvolve_roundNNNN: Richardson-Lucy of one tile and round (fiducial + its readout bits)."""
from merfishflow.workflow.jobs import run_job
from merfishflow.io.paths import experiment_of
from merfishflow.stages.deconvolve import DeconvolutionParams, run_deconvolve


def main(smk, progress):
    run_deconvolve(experiment_of(smk.output[0]), smk.wildcards.tile, smk.params.round,
                   DeconvolutionParams(**smk.params.deconvolution), progress=progress, threads=smk.threads)


run_job(snakemake, main)  # noqa: F821 (injected by Snakemake)
