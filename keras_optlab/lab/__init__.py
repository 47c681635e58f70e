"""The optimizer lab: compare optimizers on bundled data and on 2-D loss surfaces.

Run it as `keras-optlab compare | surfaces | sweep` (see `keras-optlab --help`).
Needs the `lab` extra: `pip install "keras-optlab[lab]"` (scikit-learn, matplotlib).
"""
