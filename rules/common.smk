# Validation, the one paths object, and input functions. No algorithm lives here.
from pathlib import Path

from merfishflow.workflow.config import validate_config
from merfishflow.workflow.provenance import record_run
from merfishflow.workflow.status import restore_datastore_json, withdraw_datastore_json
from merfishflow.workflow.pipeline import WILDCARD_CONSTRAINTS, Pipeline

config = validate_config(config, source="config", schema_path=Path(workflow.basedir) / "config" / "schema.yaml")
# Raw files are checked once, by the main Snakemake process, not by every job.
PIPELINE = Pipeline.from_config(config, check_files=workflow.is_main_process)
# Every marker and product of every stage (~80 000 paths for 1000 tiles).
ALL_STAGE_MARKERS = PIPELINE.all_stage_markers()
# datastore.json, when onstart withdrew it (Snakefile).
WITHDRAWN_SUMMARY = []


def replaces_stage_markers(jobs) -> bool:
    """Whether any of these Snakemake jobs writes a stage marker or product that datastore.json summarizes."""
    markers = set(ALL_STAGE_MARKERS)
    return any(str(path) in markers for job in jobs for path in job.output)


wildcard_constraints:
    tile=WILDCARD_CONSTRAINTS["tile"],


def ingest_mem_mb(wildcards, attempt):
    return PIPELINE.ingest_mem_mb(attempt)


def ingest_runtime(wildcards, attempt):
    return PIPELINE.ingest_runtime_min(attempt)


def stage_position(wildcards):
    return PIPELINE.stage_position(wildcards.tile)


def decon_mem_mb(wildcards, attempt):
    return PIPELINE.decon_mem_mb(attempt)


def decon_runtime(wildcards, attempt):
    return PIPELINE.decon_runtime_min(attempt)


def register_mem_mb(wildcards, attempt):
    return PIPELINE.register_mem_mb(attempt)


def register_runtime(wildcards, attempt):
    return PIPELINE.register_runtime_min(attempt)


def decode_mem_mb(wildcards, attempt):
    return PIPELINE.decode_mem_mb(attempt)


def decode_runtime(wildcards, attempt):
    return PIPELINE.decode_runtime_min(attempt)


def segment_mem_mb(wildcards, attempt):
    return PIPELINE.segment_mem_mb(attempt)
