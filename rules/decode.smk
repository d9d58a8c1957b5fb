# Pixel decoding per tile, then experiment-level filtering (and scoring, for simulations).
rule decode:
    """Pixel-decode one tile's registered readouts into a spot table (decoded/tileNNNN_decoded_features.parquet)."""
    input:
        registered=PIPELINE.decode_inputs(),
        placement=PIPELINE.global_registration_marker(),
    output:
        PIPELINE.decoded_tile(),
    params:
        decoding=PIPELINE.decoding_params(),
    # One thread: a second one gains decoding little, and on one the job runs beside the tile's
    # segmentation (or another tile's decoding) instead of holding both cores (benchmarks/RESULTS.md).
    threads: 1
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
    """Blank-based FDR filter and overlap duplicate removal of all tiles' spots (Parquet + starfish CSV)."""
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
        """Score the filtered spots against the simulator's truth (decoded/evaluation.json)."""
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
