# Experiment metadata, camera map and PSFs into calibrations.zarr.
rule init:
    """Write calibrations.zarr: codebook, exp_order, channels, optics, camera noise map and PSFs."""
    input:
        **{key: ancient(path) for key, path in PIPELINE.parsed_metadata_files().items()},
        **PIPELINE.binary_metadata_files(),
    output:
        PIPELINE.calibrations_marker,
    params:
        # Parsed values, not file bytes: a comment in experiment.yaml reruns nothing.
        metadata=PIPELINE.init_metadata(),
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
