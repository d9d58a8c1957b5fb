# datastore.json: the manifest and the state of every stage, read from the markers.
rule datastore:
    input:
        ALL_STAGE_MARKERS,
    output:
        PIPELINE.datastore_json,
    params:
        simulated=PIPELINE.simulated,
    log:
        PIPELINE.log("datastore", "datastore"),
    conda:
        "../envs/merfishflow.yaml"
    script:
        "../scripts/datastore.py"
