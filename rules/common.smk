# Validation, the one paths object, and input functions. No algorithm lives here.
from pathlib import Path

from merfishflow.workflow.config import check_config_files, check_stage_params, validate_config
from merfishflow.workflow.lock import acquire as acquire_experiment_lock, release as release_experiment_lock
from merfishflow.workflow.provenance import record_run
from merfishflow.workflow.status import restore_datastore_json, withdraw_datastore_json
from merfishflow.workflow.pipeline import WILDCARD_CONSTRAINTS, Pipeline, export_conda_source
from merfishflow.workflow.resources import ROUND_THREADS

# envs/merfishflow.yaml installs the package from here (`--sdm conda`).
export_conda_source(workflow.basedir)

# Snakemake's own YAML loader keeps the last of two equal keys: re-read the files strictly.
check_config_files(workflow.configfiles)
config = validate_config(config, source="config", schema_path=Path(workflow.basedir) / "config" / "schema.yaml")
check_stage_params(config)
# Raw files are checked once, by the main Snakemake process, not by every job.
PIPELINE = Pipeline.from_config(config, check_files=workflow.is_main_process)
# Memory and runtime models of the jobs (merfishflow.workflow.resources).
RESOURCES = PIPELINE.resources
# datastore.json, when onstart withdrew it (Snakefile).
WITHDRAWN_SUMMARY = []


def replaces_stage_markers(jobs) -> bool:
    """Whether any of these Snakemake jobs writes a stage marker or product that datastore.json summarizes."""
    # Built here, in the main process's onstart, not when every job parses the Snakefile.
    markers = set(PIPELINE.all_stage_markers())
    return any(str(path) in markers for job in jobs for path in job.output)


wildcard_constraints:
    tile=WILDCARD_CONSTRAINTS["tile"],


def stranded_stage_markers(wildcards):
    return PIPELINE.stranded_stage_markers()


def ingest_mem_mb(wildcards, attempt):
    return RESOURCES.ingest_mem_mb(attempt)


def ingest_runtime(wildcards, attempt):
    return RESOURCES.ingest_runtime_min(attempt)


def stage_position(wildcards):
    return PIPELINE.stage_position(wildcards.tile)


def decon_mem_mb(wildcards, attempt):
    return RESOURCES.decon_mem_mb(attempt)


def decon_runtime(wildcards, attempt):
    return RESOURCES.decon_runtime_min(attempt)


def register_mem_mb(wildcards, attempt):
    return RESOURCES.register_mem_mb(attempt)


def register_runtime(wildcards, attempt):
    return RESOURCES.register_runtime_min(attempt)


def decode_mem_mb(wildcards, attempt):
    return RESOURCES.decode_mem_mb(attempt)


def decode_runtime(wildcards, attempt):
    return RESOURCES.decode_runtime_min(attempt)


def segment_mem_mb(wildcards, attempt):
    return RESOURCES.segment_mem_mb(attempt)
