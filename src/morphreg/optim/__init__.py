"""Optimisation: loss terms, the level objective, transform models, optimisers and the one loop."""
from morphreg.optim.models import BSplineModel, DenseModel, LinearModel, StageModel
from morphreg.optim.multires import Level, LoopOptions, LoopOutcome, StageInputs, run_stage
from morphreg.optim.objective import Objective, SameGridObjective
from morphreg.optim.optimizers import OPTIMIZERS, OptimizerConfig, minimize
from morphreg.optim.terms import PenaltyTerm, StageLoss, loss_terms

__all__ = ["OPTIMIZERS", "BSplineModel", "DenseModel", "Level", "LinearModel", "LoopOptions", "LoopOutcome",
           "Objective", "OptimizerConfig", "PenaltyTerm", "SameGridObjective", "StageInputs", "StageLoss", "StageModel",
           "loss_terms", "minimize", "run_stage"]
