# Richardson-Lucy deconvolution, one job per tile x round (the round's fiducial
# and its readout bits), one rule per round like ingest (see docs/datastore.md).
for round_ in PIPELINE.experiment.rounds:

    rule:
        name:
            f"deconvolve_{round_}"
        input:
            ingest=PIPELINE.ingest_markers(round_),
            calibrations=PIPELINE.calibrations_marker,
        output:
            PIPELINE.decon_markers(round_),
        params:
            round=round_,
            deconvolution=config["deconvolution"],
        log:
            PIPELINE.log("deconvolve", "{tile}_" + round_),
        benchmark:
            PIPELINE.benchmark("deconvolve", "{tile}_" + round_),
        threads: 1
        group:
            "tile"
        resources:
            mem_mb=decon_mem_mb,
            runtime=decon_runtime,
        conda:
            "../envs/merfishflow.yaml"
        script:
            "../scripts/deconvolve.py"
