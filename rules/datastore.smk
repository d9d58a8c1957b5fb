# datastore.json: the manifest and the state of every stage, read from the markers.
rule datastore:
    # The final products depend on every other stage, so datastore.json is rewritten
    # whenever any marker is; listing those ~80 000 markers here too would double
    # Snakemake's planning time for a 1000-tile experiment (rule all lists them).
    input:
        PIPELINE.final_products(),
    output:
        PIPELINE.datastore_json,
    params:
        simulated=PIPELINE.simulated,
    log:
        PIPELINE.log("datastore", "datastore"),
    benchmark:
        PIPELINE.benchmark("datastore", "datastore"),
    conda:
        "../envs/merfishflow.yaml"
    script:
        "../scripts/datastore.py"
