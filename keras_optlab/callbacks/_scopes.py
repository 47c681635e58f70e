"""Stable names for a model's layers and variables: the scopes of the diagnostics' tags.

Keras names a layer the user did not name after its class and a process-wide counter
(`dense`, `dense_1`, ... `dense_18`), so the same weight gets another name in every
model built after the first: in a notebook, in a loop over optimizers, in another
process. The diagnostics name it after the model's structure instead:

- a layer the user named keeps that name (`hidden`);
- a layer Keras named (its name is its class in snake case, with or without Keras'
  `_N` suffix) is named by its position among its parent's layers and its class:
  `0_dense`, `1_dense`, `2_dense` for the lab's MLP, in every run and every process
  (positions are zero-padded to the width of the largest, `03_dense` among 12, so
  that names sort in model order);
- a layer inside another (a model used as a layer, a layer with sublayers) is
  `parent/child`, each part named by the same rule;
- a variable is `<layer>/<its name>` (`0_dense/kernel`); Keras' auto-named
  variables (`variable`, `variable_3`) by their position in the layer.

Positions count the parent's layers in Keras' order (`model.layers`, without the
`InputLayer`), weighted or not, so a `Reshape` or a pooling layer takes a position.
`layer_order` lists the layers that own trainable variables, in model order (a
depth-first walk); it is written with the run, for views that draw layers in order.
"""

from __future__ import annotations

import dataclasses
import re

import keras

_AUTO_VARIABLE = re.compile(r"^variable(_\d+)?$")


def _snake(name: str) -> str:
    """Keras' `to_snake_case`, which names layers after their class."""
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    name = re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()
    return name


def auto_named(layer) -> bool:
    """True where Keras chose the layer's name: its class in snake case, with or without
    Keras' `_N` suffix. (A user who names a layer `dense_7` is taken for Keras.)"""
    base = _snake(type(layer).__name__)
    return re.fullmatch(rf"{re.escape(base)}(_\d+)?", layer.name) is not None


def _children(layer) -> list:
    """The layer's own layers in Keras' order, without input layers. A model's are its
    `layers`; another layer's are the layers it tracks (an attribute of its own named
    `layers` may hold anything)."""
    if isinstance(layer, keras.Model):
        children = layer.layers
    else:
        children = layer._flatten_layers(include_self=False, recursive=False)
    layers = [c for c in children if isinstance(c, keras.layers.Layer)]
    return [c for c in layers if not isinstance(c, keras.layers.InputLayer)]


@dataclasses.dataclass
class Layer:
    """A layer that owns trainable variables, as the diagnostics name it."""

    scope: str  # the stable name, e.g. "0_dense" or "hidden"
    keras_path: str  # Keras' own path of the layer, e.g. "mlp/dense_3" (differs between runs)
    class_name: str
    variables: list  # its trainable variables, in the layer's order


@dataclasses.dataclass
class Structure:
    """The model's layers and variables under stable names."""

    layers: list[Layer]  # layers that own trainable variables, in model order
    variables: list  # the trainable variables, in the model's order
    variable_scopes: list[str]  # the stable name of each variable ("0_dense/kernel")
    variable_layer: list[int]  # the index in `layers` of each variable's layer

    @property
    def layer_order(self) -> list[str]:
        return [layer.scope for layer in self.layers]

    def scope_of(self, variable) -> str:
        return self.variable_scopes[[id(v) for v in self.variables].index(id(variable))]


def _names(layers) -> list[str]:
    """Each layer's name among its siblings: the user's, or position and class."""
    width = len(str(max(len(layers) - 1, 0)))
    names = [
        f"{i:0{width}d}_{_snake(type(layer).__name__)}" if auto_named(layer) else layer.name
        for i, layer in enumerate(layers)
    ]
    if len(set(names)) < len(names):  # a user's name that looks like a position: positions for all
        names = [f"{i:0{width}d}_{name}" for i, name in enumerate(names)]
    return names


def structure(model, variables) -> Structure:
    """The stable names of `variables` (the model's trainable variables) and of the layers
    that own them. A variable no layer owns (made by the model itself, or by code Keras
    does not track) is named after the model: `model_variables/<position>_<name>`."""
    wanted = {id(v): v for v in variables}
    owner = {}  # id(variable) -> (layer index, variable name)
    layers: list[Layer] = []

    def walk(layer, prefix):
        own = [v for v in layer._trainable_variables if id(v) in wanted and id(v) not in owner]
        if own and prefix:
            index = len(layers)
            names = []
            for i, v in enumerate(own):
                name = f"{i}_variable" if _AUTO_VARIABLE.match(v.name) else v.name
                names.append(name if name not in names else f"{i}_{name}")
            for v, name in zip(own, names, strict=True):
                owner[id(v)] = (index, name)
            path = getattr(layer, "path", None) or layer.name
            layers.append(Layer(prefix, path, type(layer).__name__, own))
        children = _children(layer)
        for child, name in zip(children, _names(children), strict=True):
            walk(child, f"{prefix}/{name}" if prefix else name)

    walk(model, "")
    loose = [v for v in variables if id(v) not in owner]
    if loose:
        index = len(layers)
        for i, v in enumerate(loose):
            owner[id(v)] = (index, f"{i}_{v.name}")
        layers.append(Layer("model_variables", model.name, type(model).__name__, loose))
    scopes, layer_of = [], []
    for v in variables:
        index, name = owner[id(v)]
        scopes.append(f"{layers[index].scope}/{name}")
        layer_of.append(index)
    for index, layer in enumerate(layers):  # each layer's variables in the model's order
        layer.variables = [v for v in variables if owner[id(v)][0] == index]
    return Structure(layers, list(variables), scopes, layer_of)
