"""Optimisation: optimisers, the registration objective, transform models and the multi-resolution driver."""
from morphreg.optim.models import MODELS, build_model
from morphreg.optim.multires import Level, StageInputs, StageOutcome, run_stage
from morphreg.optim.objective import Objective, soft_dice
from morphreg.optim.optimizers import OPTIMIZERS, OptimizerConfig, minimize

__all__ = ["MODELS", "OPTIMIZERS", "Level", "Objective", "OptimizerConfig", "StageInputs", "StageOutcome",
           "build_model", "minimize", "run_stage", "soft_dice"]
