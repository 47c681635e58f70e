"""The Optimizer tab for TensorBoard (see plugin.py)."""
