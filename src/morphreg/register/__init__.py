"""Registration: named methods (presets as data), initialisation, and the ``register`` entry point."""
from morphreg.register.api import register
from morphreg.register.inputs import one_hot_labels, read_landmarks
from morphreg.register.modality import detect_modality, modality_evidence
from morphreg.register.initialize import INITIALIZERS, fft_search, initialize
from morphreg.register.presets import PRESETS, get_preset
from morphreg.register.result import Result, folding_percent

__all__ = ["register", "Result", "PRESETS", "get_preset", "initialize", "fft_search", "INITIALIZERS",
           "detect_modality", "modality_evidence", "one_hot_labels", "read_landmarks", "folding_percent"]
