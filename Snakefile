# merfishflow: 3D MERFISH from raw tiles to a corrected datastore (DESIGN.md).
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


onstart:
    record_run(PIPELINE.experiment_dir, config, workflow.basedir)
    # Jobs are about to replace markers: until rule datastore summarizes them again, the old
    # datastore.json would claim more than the markers show. A run of exports alone replaces none.
    if replaces_stage_markers(workflow.dag.needrun_jobs()):
        WITHDRAWN_SUMMARY.append(withdraw_datastore_json(PIPELINE.experiment_dir))


onsuccess:
    # A run whose targets did not include rule datastore (an export, say) puts the summary back.
    restore_datastore_json(PIPELINE.experiment, PIPELINE.experiment_dir, WITHDRAWN_SUMMARY, simulated=PIPELINE.simulated)


onerror:
    # A failed rerun puts back the summary it withdrew, now of what the markers really show; a first run
    # that fails leaves none (merfishflow status reads the markers either way).
    restore_datastore_json(PIPELINE.experiment, PIPELINE.experiment_dir, WITHDRAWN_SUMMARY, simulated=PIPELINE.simulated)


# Every marker is a target, not only datastore.json: Snakemake does not
# recreate a missing intermediate file when the files after it are up to date,
# and a marker removed by a crash must always be rewritten.
rule all:
    input:
        PIPELINE.datastore_json,
        ALL_STAGE_MARKERS,
        PIPELINE.export_targets(),
    default_target: True
