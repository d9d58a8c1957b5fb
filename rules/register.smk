# Local registration (per tile: every round onto round 0, then the readouts
# follow their round) and global registration (every tile's place in the world).
rule register_local:
    """Register every round of one tile onto its round 0 (rigid shift + optical flow): registered_decon_data."""
    input:
        decon=PIPELINE.decon_markers(),
    output:
        PIPELINE.register_local_markers(),
    params:
        registration=config["registration"],
    log:
        PIPELINE.log("register_local", "{tile}"),
    benchmark:
        PIPELINE.benchmark("register_local", "{tile}"),
    threads: ROUND_THREADS
    group:
        "tile"
    resources:
        mem_mb=register_mem_mb,
        runtime=register_runtime,
    conda:
        "../envs/merfishflow.yaml"
    script:
        "../scripts/register_local.py"


rule register_global:
    """Place every tile in global coordinates from its overlaps: global_registration of each tile."""
    input:
        PIPELINE.register_global_inputs(),
    output:
        PIPELINE.register_global_markers(),
    params:
        stage_positions=PIPELINE.experiment.stage_positions_um,
        registration=config["registration"],
    log:
        PIPELINE.log("register_global", "register_global"),
    benchmark:
        PIPELINE.benchmark("register_global", "register_global"),
    conda:
        "../envs/merfishflow.yaml"
    script:
        "../scripts/register_global.py"
