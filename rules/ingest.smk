# Ingest + camera correction, one job per tile x round. One rule per round,
# because a round's job writes the readout bits that exp_order.csv links to
# it, and a rule's outputs can only vary by wildcards.
for round_ in PIPELINE.experiment.rounds:

    rule:
        name:
            f"ingest_{round_}"
        input:
            tiff=PIPELINE.raw_tiff(round_),
            calibrations=PIPELINE.calibrations_marker,
        output:
            PIPELINE.ingest_markers(round_),
        params:
            round=round_,
            stage_zyx_um=stage_position,
            correction=config["correction"],
            slab_planes=config["ingest"]["slab_planes"],
        log:
            PIPELINE.log("ingest", "{tile}_" + round_),
        benchmark:
            PIPELINE.benchmark("ingest", "{tile}_" + round_),
        threads: 1
        group:
            "tile"
        resources:
            mem_mb=ingest_mem_mb,
            runtime=ingest_runtime,
        conda:
            "../envs/merfishflow.yaml"
        script:
            "../scripts/ingest.py"
