# merfishflow: 3D MERFISH from raw tiles to a corrected datastore (DESIGN.md).
# Run: snakemake --cores 2            (the demo in config/config.yaml)
from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


include: "rules/common.smk"
include: "rules/simulate.smk"
include: "rules/init.smk"
include: "rules/ingest.smk"
include: "rules/datastore.smk"


rule all:
    input:
        PIPELINE.datastore_json,
    default_target: True
