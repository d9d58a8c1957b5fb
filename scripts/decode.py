"""Rule decode: one tile's registered readouts into decoded/tileNNNN_decoded_features.parquet."""
from merfishflow.spots.decoding import DecodingParams
from merfishflow.workflow.jobs import run_job
from merfishflow.io.paths import experiment_of
from merfishflow.stages.decode import run_decode


def main(smk, progress):
    # The filters use the rule's threads unless the config says otherwise (the result does not depend on it).
    params = DecodingParams(**{"n_threads": smk.threads, **smk.params.decoding})
    run_decode(experiment_of(smk.output[0]), smk.wildcards.tile, params, progress=progress)


run_job(snakemake, main)  # noqa: F821 (injected by Snakemake)
