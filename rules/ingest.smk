# Ingest + camera correction, one job per tile: every round's raw TIFF, rounds
# side by side on the job's threads (one job per tile rather than per tile x
# round: fewer jobs to plan and start; benchmarks/RESULTS.md).
rule ingest:
    """Ingest and camera-correct one tile: every round's fiducial and the readout bits imaged in it."""
    input:
        tiff=PIPELINE.raw_tiffs(),
        calibrations=PIPELINE.calibrations_marker,
    output:
        PIPELINE.ingest_markers(),
    params:
        stage_zyx_um=stage_position,
        correction=config["correction"],
        slab_planes=config["ingest"]["slab_planes"],
    log:
        PIPELINE.log("ingest", "{tile}"),
    benchmark:
        PIPELINE.benchmark("ingest", "{tile}"),
    threads: ROUND_THREADS
    group:
        "tile"
    resources:
        mem_mb=ingest_mem_mb,
        runtime=ingest_runtime,
    conda:
        "../envs/merfishflow.yaml"
    script:
        "../scripts/ingest.py"
