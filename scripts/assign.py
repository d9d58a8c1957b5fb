"""Rule assign: cells merged across tiles, spots given their cell, cell x gene counts."""
from merfishflow.workflow.jobs import run_job
from merfishflow.io.paths import experiment_of
from merfishflow.stages.cells import run_assign


def main(smk, progress):
    run_assign(experiment_of(smk.output[0]), smk.params.tiles, smk.params.min_shared_fraction,
               expand_um=smk.params.expand_um, progress=progress)


run_job(snakemake, main)  # noqa: F821 (injected by Snakemake)
