# Local registration (per tile: every round onto round 0, then the readouts
# follow their round) and global registration (every tile's place in the world).
rule register_local:
    input:
        decon=PIPELINE.all_decon_markers(),
    output:
        PIPELINE.register_local_markers(),
    params:
        registration=config["registration"],
    log:
        PIPELINE.log("register_local", "{tile}"),
    benchmark:
        PIPELINE.benchmark("register_local", "{tile}"),
    threads: 2
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
