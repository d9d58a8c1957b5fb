"""merfishflow: a Snakemake pipeline for 3D MERFISH, from raw tiles to decoded spots."""

__version__ = "0.1.0"
