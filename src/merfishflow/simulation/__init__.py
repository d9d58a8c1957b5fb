"""Synthetic 3D MERFISH experiments with known ground truth.

:func:`simulate_experiment` renders tiles x rounds x channels of camera images
(cells, RNA molecules encoded with a constant-weight codebook, polyDT stain,
widefield PSF, round-to-round shifts and deformations, stage errors, camera
noise) into ``raw_data/`` in the pipeline's input format, and writes the truth
every later stage is tested against into ``ground_truth/``. See
docs/simulator.md.
"""

from .codebook import make_codebook
from .experiment import planned_experiment, simulate_experiment, simulation_target_problem
from .params import SimulationParams
from .transforms import CONVENTION, evaluate_deformation

__all__ = ["SimulationParams", "simulate_experiment", "planned_experiment", "simulation_target_problem", "make_codebook", "evaluate_deformation", "CONVENTION"]
