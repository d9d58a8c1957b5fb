# Pixel decoding per tile, then experiment-level filtering (and scoring, for simulations).
rule decode:
    input:
        registered=PIPELINE.decode_inputs(),
        placement=PIPELINE.global_registration_marker(),
    output:
        PIPELINE.decoded_tile(),
    params:
        decoding=PIPELINE.decoding_params(),
    threads: 2
    log:
        PIPELINE.log("decode", "{tile}"),
    benchmark:
        PIPELINE.benchmark("decode", "{tile}"),
    resources:
        mem_mb=decode_mem_mb,
        runtime=decode_runtime,
    conda:
        "../envs/merfishflow.yaml"
    script:
        "../scripts/decode.py"


rule filter_spots:
    input:
        PIPELINE.all_decoded_tiles(),
    output:
        parquet=PIPELINE.filtered_spots,
        csv=PIPELINE.filtered_spots_csv,
    params:
        tiles=PIPELINE.experiment.tiles,
        filtering=config["filtering"],
    log:
        PIPELINE.log("filter", "filter"),
    benchmark:
        PIPELINE.benchmark("filter", "filter"),
    conda:
        "../envs/merfishflow.yaml"
    script:
        "../scripts/filter_spots.py"


if PIPELINE.simulated:

    rule evaluate:
        input:
            spots=PIPELINE.filtered_spots,
            truth=PIPELINE.ground_truth,
        output:
            PIPELINE.evaluation_json,
        params:
            radius_um=config["evaluation"]["radius_um"],
        log:
            PIPELINE.log("evaluate", "evaluate"),
        benchmark:
            PIPELINE.benchmark("evaluate", "evaluate"),
        conda:
            "../envs/merfishflow.yaml"
        script:
            "../scripts/evaluate.py"
