"""Callbacks that show inside the optimizer in TensorBoard."""

from keras_optlab.callbacks.diagnostics import OptimizerDiagnostics

__all__ = ["OptimizerDiagnostics"]
