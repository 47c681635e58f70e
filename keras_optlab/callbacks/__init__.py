"""Callbacks that show inside the optimizer in TensorBoard."""

from keras_optlab.callbacks.diagnostics import OptimizerDiagnostics
from keras_optlab.callbacks.lr_finder import LRFinder as LRFinder

__all__ = ["OptimizerDiagnostics"]
