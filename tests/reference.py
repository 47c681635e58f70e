"""NumPy references of the six rules, written from the equations in the docstrings.

Independent of keras_optlab: each function takes the weights, the gradients of every
step and the learning rate of every step (the values the optimizer sees), and
returns the weights after each step. `grads` may be a callable `w -> g` (for
trajectories on a function) or an array of shape (steps, *w.shape).
"""

from __future__ import annotations

import numpy as np


def _gradients(grads, w, t):
    return grads(w) if callable(grads) else grads[t]


def _couple(g, w, weight_decay, coupled):
    return g + weight_decay * w if (coupled and weight_decay) else g


def _decouple(w, lr, weight_decay, coupled):
    return w - lr * weight_decay * w if (weight_decay and not coupled) else w


def sgd(w, grads, lrs, weight_decay=0.0, coupled_weight_decay=False):
    out = []
    for t, lr in enumerate(lrs):
        g = _couple(_gradients(grads, w, t), w, weight_decay, coupled_weight_decay)
        w = _decouple(w, lr, weight_decay, coupled_weight_decay)
        w = w - lr * g
        out.append(w)
    return np.array(out)


def momentum(
    w,
    grads,
    lrs,
    momentum=0.9,
    lr_in_momentum=True,
    nesterov=False,
    weight_decay=0.0,
    coupled_weight_decay=False,
):
    v = np.zeros_like(w)
    out = []
    for t, lr in enumerate(lrs):
        g = _couple(_gradients(grads, w, t), w, weight_decay, coupled_weight_decay)
        w = _decouple(w, lr, weight_decay, coupled_weight_decay)
        if lr_in_momentum:
            v = momentum * v - lr * g
            w = w + (momentum * v - lr * g if nesterov else v)
        else:
            v = momentum * v + g
            w = w - lr * (g + momentum * v if nesterov else v)
        out.append(w)
    return np.array(out)


def nag(w, grads, lrs, **kwargs):
    return momentum(w, grads, lrs, nesterov=True, **kwargs)


def adagrad(
    w,
    grads,
    lrs,
    initial_accumulator_value=0.0,
    epsilon=1e-8,
    epsilon_inside_sqrt=False,
    lr_decay=0.0,
    weight_decay=0.0,
    coupled_weight_decay=False,
):
    cache = np.full_like(w, initial_accumulator_value)
    out = []
    for t, lr in enumerate(lrs):
        g = _couple(_gradients(grads, w, t), w, weight_decay, coupled_weight_decay)
        w = _decouple(w, lr, weight_decay, coupled_weight_decay)
        cache = cache + g * g
        denominator = np.sqrt(cache + epsilon) if epsilon_inside_sqrt else np.sqrt(cache) + epsilon
        w = w - lr / (1 + t * lr_decay) * g / denominator
        out.append(w)
    return np.array(out)


def rmsprop(
    w,
    grads,
    lrs,
    rho=0.9,
    epsilon=1e-8,
    epsilon_inside_sqrt=False,
    centered=False,
    momentum=0.0,
    lr_in_momentum=True,
    weight_decay=0.0,
    coupled_weight_decay=False,
):
    cache, mean, buf = np.zeros_like(w), np.zeros_like(w), np.zeros_like(w)
    out = []
    for t, lr in enumerate(lrs):
        g = _couple(_gradients(grads, w, t), w, weight_decay, coupled_weight_decay)
        w = _decouple(w, lr, weight_decay, coupled_weight_decay)
        cache = rho * cache + (1 - rho) * g * g
        s = cache
        if centered:
            mean = rho * mean + (1 - rho) * g
            s = cache - mean * mean
        denominator = np.sqrt(s + epsilon) if epsilon_inside_sqrt else np.sqrt(s) + epsilon
        if momentum == 0:
            w = w - lr * g / denominator
        elif lr_in_momentum:
            buf = momentum * buf + lr * g / denominator
            w = w - buf
        else:
            buf = momentum * buf + g / denominator
            w = w - lr * buf
        out.append(w)
    return np.array(out)


def adam(
    w,
    grads,
    lrs,
    beta_1=0.9,
    beta_2=0.999,
    epsilon=1e-8,
    amsgrad=False,
    amsgrad_max="raw",
    epsilon_hat=False,
    bias_correction=True,
    weight_decay=0.0,
    coupled_weight_decay=False,
):
    m, v, v_max = np.zeros_like(w), np.zeros_like(w), np.zeros_like(w)
    out = []
    for t0, lr in enumerate(lrs):
        t = t0 + 1
        g = _couple(_gradients(grads, w, t0), w, weight_decay, coupled_weight_decay)
        w = _decouple(w, lr, weight_decay, coupled_weight_decay)
        m = beta_1 * m + (1 - beta_1) * g
        v = beta_2 * v + (1 - beta_2) * g * g
        c1, c2 = (1 - beta_1**t, 1 - beta_2**t) if bias_correction else (1.0, 1.0)
        if epsilon_hat:  # Keras' form, written as Keras writes it
            alpha = lr * np.sqrt(c2) / c1
            if amsgrad:
                v_max = np.maximum(v_max, v if amsgrad_max == "raw" else v / c2)
                second = v_max if amsgrad_max == "raw" else v_max * c2
            else:
                second = v
            w = w - alpha * m / (np.sqrt(second) + epsilon)
        else:  # the paper's Algorithm 1
            v_hat = v / c2
            if amsgrad and amsgrad_max == "raw":
                v_max = np.maximum(v_max, v)
                v_hat = v_max / c2
            elif amsgrad:
                v_max = np.maximum(v_max, v_hat)
                v_hat = v_max
            w = w - lr * (m / c1) / (np.sqrt(v_hat) + epsilon)
        out.append(w)
    return np.array(out)
