"""What the Snakefile needs to know, in one object: the experiment, its paths and every target.

``rules/common.smk`` builds one :class:`Pipeline` from the validated config;
rules ask it for their inputs, outputs, parameters and resources, so no path
is spelled out in a ``.smk`` file. Built at parse time, before any job runs:
for a real experiment it reads and validates raw_data (docs/raw_data.md); for
a simulated one it knows the tiles, rounds and bits from the simulation
parameters, because raw_data does not exist yet.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..io.metadata import Experiment, load_experiment
from .config import segmentation_options
from ..io.paths import REGISTERED_DATA, ExperimentPaths, marker
from .neighbours import tiles_near
from .resources import JobResources
from .status import STAGES, stage_groups, target_file, tile_markers

TILE_WILDCARD = "{tile}"
WILDCARD_CONSTRAINTS = {"tile": r"tile\d{4}"}


# envs/merfishflow.yaml installs the package from this variable's folder (pip expands it): Snakemake
# copies the env file into .snakemake/conda/ first, so a path relative to the file would point there.
CONDA_SOURCE_VARIABLE = "MERFISHFLOW_SOURCE"


def export_conda_source(workflow_dir) -> str:
    """Point ``envs/merfishflow.yaml`` (``--sdm conda``) at this workflow's folder; returns that folder."""
    folder = str(Path(workflow_dir).resolve())
    os.environ[CONDA_SOURCE_VARIABLE] = folder
    return folder


@dataclass(frozen=True)
class Pipeline:
    """The experiment, its paths and the targets of every rule.

    Attributes
    ----------
    config : dict
        Validated config (defaults filled in).
    paths : ExperimentPaths
    experiment : Experiment
        Manifest of tiles, rounds, bits and channels.
    simulated : bool
        True when the ``simulate`` rule writes raw_data.
    """

    config: dict
    paths: ExperimentPaths
    experiment: Experiment
    simulated: bool

    @classmethod
    def from_config(cls, config: dict, *, check_files: bool = True) -> "Pipeline":
        """Build from a config already validated by :func:`merfishflow.workflow.config.validate_config`.

        ``check_files=False`` skips the existence check of every tile's TIFF:
        the Snakefile is parsed again inside every cluster job, where one job
        would otherwise stat every raw file of the experiment (its own TIFF
        is checked by the job that reads it).
        """
        paths = ExperimentPaths(config["experiment_dir"])
        simulated = bool(config["simulation"]["enabled"])
        if simulated:
            from ..errors import InputError
            from ..simulation import SimulationParams, planned_experiment, simulation_target_problem

            params = SimulationParams.from_dict(config["simulation"]["params"])
            # Before any job: Snakemake itself deletes a rule's old outputs before rerunning it, so a
            # raw_data/ that is not the simulator's own must be refused here, not in the simulate job.
            problem = simulation_target_problem(paths.root, params)
            if problem:
                raise InputError(f"config: simulation.enabled is true, but {problem}")
            experiment = planned_experiment(params)
        else:
            experiment = load_experiment(paths.root, check_tiffs=check_files)
        return cls(config=config, paths=paths, experiment=experiment, simulated=simulated)

    # raw data ----------------------------------------------------------------------------------
    @property
    def experiment_dir(self) -> str:
        return str(self.paths.root)

    def raw_metadata_files(self) -> dict:
        """Files of raw_data that the init stage reads (not stage_positions.csv: adding a tile
        must not rerun init)."""
        files = {"experiment_yaml": self.paths.experiment_yaml, "codebook": self.paths.codebook_csv,
                 "exp_order": self.paths.exp_order_csv}
        for key, name in (("dark_frame", self.experiment.dark_frame), ("hot_pixel_map", self.experiment.hot_pixel_map)):
            if name is not None:
                files[key] = self.paths.raw_file(name, f"camera.{key}")
        return {k: str(v) for k, v in files.items()}

    def parsed_metadata_files(self) -> dict:
        """experiment.yaml, codebook.csv, exp_order.csv: init reads them, but reruns on their parsed content.

        rules/init.smk lists them as ``ancient`` inputs (order only: init runs after simulate) and passes
        :meth:`init_metadata` as a parameter, so a comment, reordered keys or a re-saved identical
        table reruns nothing, and a changed value reruns init and everything after it.
        """
        keys = ("experiment_yaml", "codebook", "exp_order")
        return {k: v for k, v in self.raw_metadata_files().items() if k in keys}

    def binary_metadata_files(self) -> dict:
        """The binary files init reads, camera files and measured PSFs (a change of their bytes or mtime
        reruns init)."""
        parsed = self.parsed_metadata_files()
        files = {k: v for k, v in self.raw_metadata_files().items() if k not in parsed}
        for i, channel in enumerate(self.experiment.channels):
            if channel.psf is not None:
                files[f"psf_{i}"] = str(self.paths.raw / channel.psf)
        return files

    def init_metadata(self) -> dict:
        """The parsed metadata init writes into calibrations.zarr (its params: a change reruns init)."""
        from ..stages.init import calibration_attrs

        return calibration_attrs(self.experiment)

    def simulation_outputs(self) -> dict:
        """Everything the simulate rule writes (raw_data files; ground_truth as a folder)."""
        out = self.raw_metadata_files()
        out["stage_positions"] = str(self.paths.stage_positions_csv)
        out["tiffs"] = [str(self.paths.raw_tiff(t, r)) for t in self.experiment.tiles for r in self.experiment.rounds]
        return out

    def raw_tiffs(self, tile: str = TILE_WILDCARD) -> list[str]:
        """The tile's raw TIFF of every round, in round order."""
        return [str(self.paths.raw_tiff(tile, r)) for r in self.experiment.rounds]

    # datastore ---------------------------------------------------------------------------------
    @property
    def calibrations_marker(self) -> str:
        return str(marker(self.paths.calibrations))

    @property
    def datastore_json(self) -> str:
        return str(self.paths.datastore_json)

    def ingest_markers(self, tile: str = TILE_WILDCARD) -> list[str]:
        """Markers a tile's ingest job writes: each round's fiducial group, then its readout bits."""
        return [str(marker(g)) for g in tile_markers(self.experiment, self.paths, tile)["ingest"]]

    def decon_markers(self, tile: str = TILE_WILDCARD) -> list[str]:
        """Markers a tile's deconvolution job writes: each round's fiducial, then its readout bits."""
        return [str(marker(a)) for a in tile_markers(self.experiment, self.paths, tile)["deconvolve"]]

    def register_local_markers(self, tile: str = TILE_WILDCARD) -> list[str]:
        return [str(marker(a)) for a in tile_markers(self.experiment, self.paths, tile)["register_local"]]

    def register_global_inputs(self) -> list[str]:
        """Round-0 registered fiducials of every tile."""
        round0 = self.experiment.rounds[0]
        return [str(marker(self.paths.fiducial_array(t, round0, REGISTERED_DATA))) for t in self.experiment.tiles]

    def register_global_markers(self) -> list[str]:
        return [str(marker(self.paths.global_registration(t))) for t in self.experiment.tiles]

    def decode_inputs(self, tile: str = TILE_WILDCARD) -> list[str]:
        """Every readout bit's registered data of a tile."""
        return [str(marker(self.paths.readout_array(tile, b, REGISTERED_DATA))) for b in self.experiment.bits]

    def global_registration_marker(self, tile: str = TILE_WILDCARD) -> str:
        return str(marker(self.paths.global_registration(tile)))

    def decoded_tile(self, tile: str = TILE_WILDCARD) -> str:
        return str(self.paths.decoded_tile(tile))

    def all_decoded_tiles(self) -> list[str]:
        return [self.decoded_tile(t) for t in self.experiment.tiles]

    @property
    def filtered_spots(self) -> str:
        return str(self.paths.filtered_spots)

    @property
    def filtered_spots_csv(self) -> str:
        return str(self.paths.filtered_spots_csv)

    @property
    def evaluation_json(self) -> str:
        return str(self.paths.evaluation_json)

    @property
    def ground_truth(self) -> str:
        """The simulator's ground_truth/ folder (a directory output of rule simulate)."""
        return str(self.paths.ground_truth)

    def decoding_params(self) -> dict:
        """The decode rule's params: every field that changes the result, defaults filled in.

        ``n_threads`` is left out (it does not change the result; the job reads it from the config),
        so neither it nor a key set explicitly to its default reruns decode.
        """
        from ..spots.decoding import DecodingParams

        return DecodingParams(**self.config["decoding"]).to_dict()

    def segmentation_params(self) -> dict:
        """The segment rule's params: the resolved segmentation fields, ``context_um`` and ``image``."""
        from ..cells.segmentation import SegmentationParams

        fields, context_um, image = segmentation_options(self.config["segmentation"])
        return {**SegmentationParams.from_dict(fields).to_dict(), "context_um": context_um, "image": image}

    @property
    def segment_image(self) -> str:
        """Which round-0 fiducial is segmented (``segmentation.image``: corrected or deconvolved)."""
        return segmentation_options(self.config["segmentation"])[2]

    def segment_input(self, tile: str = TILE_WILDCARD) -> str:
        return str(marker(self.paths.segmentation_source(tile, self.segment_image)))

    def cell_masks(self, tile: str = TILE_WILDCARD) -> str:
        return str(self.paths.cell_masks(tile))

    @property
    def segment_context_um(self) -> float:
        """Width of the neighbours' band a tile is segmented with (``segmentation.context_um``)."""
        return segmentation_options(self.config["segmentation"])[1]

    def segment_context_tiles(self, tile: str) -> list[str]:
        """Tiles whose images may fall in ``tile``'s segmentation canvas (:func:`tiles_near`)."""
        return tiles_near(self.experiment, tile, self.segment_context_um)

    def all_cell_masks(self) -> list[str]:
        return [self.cell_masks(t) for t in self.experiment.tiles]

    def assign_outputs(self) -> dict:
        files = {"spots": self.paths.assigned_spots, "csv": self.paths.assigned_spots_csv,
                 "cells": self.paths.cells_table}
        files.update(self.paths.counts_files())
        return {k: str(v) for k, v in files.items()}

    @property
    def qc_report(self) -> str:
        return str(self.paths.qc_report)

    # exports --------------------------------------------------------------------------------------
    def export_inputs(self, tile: str = TILE_WILDCARD) -> list[str]:
        """Registered fiducials and readouts of a tile, and its placement."""
        arrays = [self.paths.fiducial_array(tile, r, REGISTERED_DATA) for r in self.experiment.rounds]
        arrays += [self.paths.readout_array(tile, b, REGISTERED_DATA) for b in self.experiment.bits]
        return [str(marker(a)) for a in arrays] + [self.global_registration_marker(tile)]

    def export_tiff_pattern(self, kind: str) -> str:
        return str(self.paths.export_tiff(TILE_WILDCARD, "{what}", kind))

    def export_spacetx_pattern(self) -> str:
        return str(self.paths.export_spacetx(TILE_WILDCARD))

    def interop_inputs(self, tile: str = TILE_WILDCARD) -> list[str]:
        """What a tile's OME-Zarr view reads: the export inputs, round 0's corrected fiducial, its cells."""
        return (self.export_inputs(tile) + [str(marker(self.paths.fiducial_group(tile, self.experiment.rounds[0])))]
                + [self.assign_outputs()["cells"], str(self.paths.cell_masks(tile))])

    def spatialdata_inputs(self) -> list[str]:
        inputs = [path for tile in self.experiment.tiles for path in self.interop_inputs(tile)]
        inputs += [self.assign_outputs()["spots"], self.assign_outputs()["cell_by_gene"]]
        return list(dict.fromkeys(inputs))

    def export_ome_zarr_pattern(self) -> str:
        return str(marker(self.paths.ome_zarr_view(TILE_WILDCARD)))

    @property
    def export_spatialdata_path(self) -> str:
        return str(self.paths.spatialdata_store)

    @property
    def export_codebook_path(self) -> str:
        return str(self.paths.export_codebook)

    def export_targets(self) -> list[str]:
        """What config ``exports`` asks for."""
        settings = self.config["exports"]
        unknown = sorted(set(settings["tiles"]) - set(self.experiment.tiles))
        if unknown:
            from ..errors import InputError

            raise InputError(f"config: exports.tiles names {unknown}, which the experiment does not have "
                             f"(tiles: {self.experiment.tiles[0]}..{self.experiment.tiles[-1]})")
        out = []
        for tile in settings["tiles"]:
            for kind in settings["tiff"]:
                out.append(self.export_tiff_pattern(kind).format(tile=tile, what=settings["what"]))
            if settings["spacetx"]:
                out.append(self.export_spacetx_pattern().format(tile=tile))
            if settings["ome_zarr"]:
                out.append(self.export_ome_zarr_pattern().format(tile=tile))
        if settings["spatialdata"]:
            import importlib.util

            if importlib.util.find_spec("spatialdata") is None:
                from ..errors import InputError

                raise InputError("config: exports.spatialdata is true but the 'spatialdata' package is not "
                                 "installed; pip install 'merfishflow[spatialdata]' or set it to false")
            out.append(self.export_spatialdata_path)
        if settings["starfish_codebook"]:
            out.append(self.export_codebook_path)
        return out

    def final_products(self) -> list[str]:
        """The last files of the pipeline: every other stage's output is upstream of them."""
        out = list(self.assign_outputs().values())
        if self.simulated:
            out.append(self.evaluation_json)
        return out

    def all_stage_markers(self) -> list[str]:
        """Every marker (or finished product file) of every stage (~80 000 paths for 1000 tiles)."""
        out = []
        for units in stage_groups(self.experiment, self.paths, simulated=self.simulated).values():
            for targets in units.values():
                out.extend(str(target_file(t)) for t in targets)
        return out

    def stranded_stage_markers(self) -> list[str]:
        """Missing markers (or products) of a stage some later stage's output already follows.

        Snakemake does not recreate a missing intermediate file when the files
        after it are up to date, so rule all asks for these: a marker a crash
        removed is always rewritten. A missing marker with nothing after it on
        disk needs no asking (the final products, targets themselves, depend on
        every stage), so a first run's rule all lists a handful of files, not
        every marker (~80 000 for 1000 tiles) on the console. Stages depend
        only on stages before them in :data:`merfishflow.workflow.status.STAGES`.
        """
        groups = stage_groups(self.experiment, self.paths, simulated=self.simulated)
        later_exists = self.paths.datastore_json.is_file() or self.paths.qc_report.is_file()
        stranded = []
        for stage in reversed([s for s in STAGES if s in groups]):
            files = [target_file(t) for targets in groups[stage].values() for t in targets]
            present = [f.is_file() for f in files]
            if later_exists:
                stranded.extend(str(f) for f, here in zip(files, present) if not here)
            later_exists = later_exists or any(present)
        return sorted(stranded)

    def log(self, stage: str, name: str) -> str:
        return str(self.paths.job_log(stage, name))

    def benchmark(self, stage: str, name: str) -> str:
        """The job's Snakemake benchmark file (same stage and name as its log)."""
        return str(self.paths.job_benchmark(stage, name))

    # per-job parameters and resources ----------------------------------------------------------
    def stage_position(self, tile: str) -> list[float]:
        return self.experiment.stage_position(tile)

    @property
    def resources(self) -> "JobResources":
        """Memory and runtime of every rule's jobs (:mod:`merfishflow.workflow.resources`)."""
        return JobResources(self.experiment, self.config)
