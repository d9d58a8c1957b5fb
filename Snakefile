# merfishflow: 3D MERFISH from raw tiles to a corrected datastore (docs/architecture.md).
# Run: snakemake --cores 2            (the demo in config/config.yaml)
from pathlib import Path

from snakemake.utils import min_version

min_version("9.0")


# The demo config, found next to this Snakefile whatever the working directory,
# used only when no --configfile/--config is given (Snakemake would otherwise
# merge the demo's keys, e.g. its export requests, into the user's config).
if not config:

    configfile: Path(workflow.basedir) / "config" / "config.yaml"


include: "rules/common.smk"
include: "rules/simulate.smk"
include: "rules/init.smk"
include: "rules/ingest.smk"
include: "rules/deconvolve.smk"
include: "rules/register.smk"
include: "rules/decode.smk"
include: "rules/cells.smk"
include: "rules/export.smk"
include: "rules/datastore.smk"
include: "rules/report.smk"


onstart:
    # First: a second run on this experiment must stop before it touches anything.
    acquire_experiment_lock(PIPELINE.experiment_dir)
    record_run(PIPELINE.experiment_dir, config, workflow.basedir)
    # Jobs are about to replace markers: until rule datastore summarizes them again, the old
    # datastore.json would claim more than the markers show. A run of exports alone replaces none.
    if replaces_stage_markers(workflow.dag.needrun_jobs()):
        WITHDRAWN_SUMMARY.append(withdraw_datastore_json(PIPELINE.experiment_dir))


onsuccess:
    # A run whose targets did not include rule datastore (an export, say) puts the summary back, up to date.
    try:
        restore_datastore_json(PIPELINE.experiment, PIPELINE.experiment_dir, WITHDRAWN_SUMMARY,
                               simulated=PIPELINE.simulated)
    finally:
        release_experiment_lock(PIPELINE.experiment_dir)


onerror:
    # A failed run leaves a summary of what the markers really show (where there was one: a first run that
    # fails leaves none; merfishflow status reads the markers either way).
    try:
        restore_datastore_json(PIPELINE.experiment, PIPELINE.experiment_dir, WITHDRAWN_SUMMARY,
                               simulated=PIPELINE.simulated)
    finally:
        release_experiment_lock(PIPELINE.experiment_dir)


# A marker a crash removed must be rewritten even when the files after it are up to date (Snakemake
# does not recreate a missing intermediate on its own): rule all asks for exactly those markers
# (Pipeline.stranded_stage_markers), so its input stays a handful of files on the console.
rule all:
    """Default target: the datastore, the QC report, the requested exports and every marker a crash removed."""
    input:
        PIPELINE.datastore_json,
        PIPELINE.qc_report,
        PIPELINE.export_targets(),
        stranded_stage_markers,
    default_target: True
