"""Rule qc_report: the experiment's self-contained HTML QC report."""
from merfishflow.io.paths import experiment_of
from merfishflow.stages.report import write_qc_report
from merfishflow.workflow.jobs import run_job


def main(smk, progress):
    write_qc_report(experiment_of(smk.output[0]), smk.params.tiles, progress=progress)


run_job(snakemake, main)  # noqa: F821 (injected by Snakemake)
