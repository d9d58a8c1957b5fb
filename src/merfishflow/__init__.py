"""merfishflow: a Snakemake pipeline for 3D MERFISH, from raw tiles to decoded spots."""

__version__ = "0.1.0"

__all__ = ["Datastore", "__version__"]


def __getattr__(name):
    # Lazy, so that `import merfishflow` (every job, every Snakefile parse) stays light.
    if name == "Datastore":
        from .io.reader import Datastore

        return Datastore
    raise AttributeError(f"module 'merfishflow' has no attribute {name!r}")
