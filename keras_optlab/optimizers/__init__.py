"""The six optimizers of the classic walk-through, one per module."""

from keras_optlab.optimizers._base import FRAMEWORKS, OptlabOptimizer
from keras_optlab.optimizers._rule import CACHE, MOMENTUM, Rule, Slot
from keras_optlab.optimizers.adagrad import Adagrad
from keras_optlab.optimizers.adam import Adam
from keras_optlab.optimizers.momentum import Momentum
from keras_optlab.optimizers.nag import NAG
from keras_optlab.optimizers.rmsprop import RMSProp
from keras_optlab.optimizers.sgd import SGD

#: The six optimizers, in the order of the walk-through.
ALL = (SGD, Momentum, NAG, Adagrad, RMSProp, Adam)

__all__ = [
    "ALL",
    "CACHE",
    "FRAMEWORKS",
    "MOMENTUM",
    "NAG",
    "SGD",
    "Adagrad",
    "Adam",
    "Momentum",
    "OptlabOptimizer",
    "RMSProp",
    "Rule",
    "Slot",
]
