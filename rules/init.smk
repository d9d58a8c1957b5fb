# Experiment metadata, camera map and PSFs into calibrations.zarr.
rule init:
    input:
        **PIPELINE.raw_metadata_files(),
    output:
        PIPELINE.calibrations_marker,
    log:
        PIPELINE.log("init", "init"),
    benchmark:
        PIPELINE.benchmark("init", "init"),
    group:
        "setup"
    conda:
        "../envs/merfishflow.yaml"
    script:
        "../scripts/init.py"
