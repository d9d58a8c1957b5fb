# Richardson-Lucy deconvolution, one job per tile: every round's fiducial and
# readout bits, rounds side by side on the job's threads (see rules/ingest.smk).
rule deconvolve:
    """Richardson-Lucy deconvolution of one tile (every round's fiducial and readout bits): decon_data."""
    input:
        ingest=PIPELINE.ingest_markers(),
        calibrations=PIPELINE.calibrations_marker,
    output:
        PIPELINE.decon_markers(),
    params:
        deconvolution=config["deconvolution"],
    log:
        PIPELINE.log("deconvolve", "{tile}"),
    benchmark:
        PIPELINE.benchmark("deconvolve", "{tile}"),
    threads: ROUND_THREADS
    group:
        "tile"
    resources:
        mem_mb=decon_mem_mb,
        runtime=decon_runtime,
    conda:
        "../envs/merfishflow.yaml"
    script:
        "../scripts/deconvolve.py"
