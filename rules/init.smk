# Experiment metadata, camera map and PSFs into calibrations.zarr.
rule init:
    """Write calibrations.zarr: codebook, exp_order, channels, optics, camera noise map and PSFs."""
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
