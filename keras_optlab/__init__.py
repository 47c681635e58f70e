"""keras_optlab: gradient-descent optimizers for Keras 3 that state their exact rule.

import keras_optlab
model.compile(optimizer=keras_optlab.Adam(), loss=...)
keras_optlab.Adam.like("pytorch")  # Adam as torch.optim.Adam computes it
"""

from keras_optlab._version import __version__
from keras_optlab.explain import explain_update
from keras_optlab.optimizers import ALL, NAG, SGD, Adagrad, Adam, Momentum, OptlabOptimizer, RMSProp

__all__ = [
    "ALL",
    "NAG",
    "SGD",
    "Adagrad",
    "Adam",
    "Momentum",
    "OptlabOptimizer",
    "RMSProp",
    "__version__",
    "explain_update",
]
