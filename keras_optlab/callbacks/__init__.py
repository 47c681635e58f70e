"""Callbacks that show inside the optimizer in TensorBoard, and a learning-rate finder."""

from keras_optlab.callbacks.diagnostics import OptimizerDiagnostics
from keras_optlab.callbacks.lr_finder import LRFinder

__all__ = ["LRFinder", "OptimizerDiagnostics"]
