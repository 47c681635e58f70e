"""Each documented convention against the real library, over whole trajectories.

The same gradients (random, 300 steps), the same learning rate at every step (a
cosine schedule; the other library is fed the values our optimizer used), and
weight decay where the convention covers it. PyTorch and Optax run in float64 and
must agree to 1e-10 relative; Keras rounds its betas through float32 even in
float64, so Keras' built-ins are compared in float32.
"""

import keras
import numpy as np
import pytest

import keras_optlab as ko
from tests.cases import random_gradients, run

STEPS = 300
SHAPE = (4, 3)
F64 = {"rtol": 1e-10, "atol": 1e-12}
F32 = {"rtol": 2e-5, "atol": 2e-6}


def _problem(lr):
    grads = random_gradients(SHAPE, STEPS, seed=3)
    w0 = np.random.default_rng(4).normal(size=SHAPE)
    return w0, grads, keras.optimizers.schedules.CosineDecay(lr, decay_steps=STEPS, alpha=0.1)


KERAS_CASES = [
    (
        "sgd-momentum",
        lambda: keras.optimizers.SGD(momentum=0.9),
        ko.Momentum.like("keras", momentum=0.9),
        0.05,
    ),
    (
        "sgd-nesterov",
        lambda: keras.optimizers.SGD(momentum=0.9, nesterov=True),
        ko.NAG.like("keras", momentum=0.9),
        0.05,
    ),
    ("adagrad", lambda: keras.optimizers.Adagrad(), ko.Adagrad.like("keras"), 0.1),
    ("rmsprop", lambda: keras.optimizers.RMSprop(), ko.RMSProp.like("keras"), 0.01),
    (
        "rmsprop-centered-momentum",
        lambda: keras.optimizers.RMSprop(centered=True, momentum=0.9),
        ko.RMSProp.like("keras", centered=True, momentum=0.9),
        0.01,
    ),
    ("adam", lambda: keras.optimizers.Adam(), ko.Adam.like("keras"), 0.01),
    ("adam-amsgrad", lambda: keras.optimizers.Adam(amsgrad=True), ko.Adam.like("keras", amsgrad=True), 0.01),
]


@pytest.mark.parametrize("name, make_keras, ours, lr", KERAS_CASES, ids=[c[0] for c in KERAS_CASES])
def test_keras_builtin(name, make_keras, ours, lr):
    w0, grads, sched = _problem(lr)
    theirs = make_keras()
    theirs.learning_rate = sched
    # Op by op, as Keras computes: in float32 the XLA-fused update rounds differently
    # (fused multiply-adds), which momentum carries to a few 1e-6 over 300 steps.
    ours = type(ours).from_config({**ours.get_config(), "fused_update": False, "learning_rate": sched})
    want, _ = run(theirs, w0, grads, "float32")
    got, _ = run(ours, w0, grads, "float32")
    np.testing.assert_allclose(got, want, **F32)


# ---------------------------------------------------------------- PyTorch
TORCH_CASES = [
    ("sgd-momentum", "SGD", {"momentum": 0.9, "weight_decay": 0.01}, ko.Momentum, {"momentum": 0.9}, 0.05),
    (
        "sgd-nesterov",
        "SGD",
        {"momentum": 0.9, "nesterov": True, "weight_decay": 0.01},
        ko.NAG,
        {"momentum": 0.9},
        0.05,
    ),
    (
        "adagrad-lr-decay",
        "Adagrad",
        {"lr_decay": 0.01, "weight_decay": 0.01},
        ko.Adagrad,
        {"lr_decay": 0.01},
        0.1,
    ),
    (
        "rmsprop-centered-momentum",
        "RMSprop",
        {"centered": True, "momentum": 0.9, "weight_decay": 0.01},
        ko.RMSProp,
        {"centered": True, "momentum": 0.9},
        0.01,
    ),
    ("adam", "Adam", {"weight_decay": 0.01}, ko.Adam, {}, 0.01),
    ("adam-amsgrad", "Adam", {"amsgrad": True, "weight_decay": 0.01}, ko.Adam, {"amsgrad": True}, 0.01),
]


@pytest.mark.parametrize(
    "name, torch_name, torch_kwargs, cls, kwargs, lr", TORCH_CASES, ids=[c[0] for c in TORCH_CASES]
)
def test_torch(name, torch_name, torch_kwargs, cls, kwargs, lr):
    torch = pytest.importorskip("torch", reason="the PyTorch parity tests need torch (pip install .[test])")
    w0, grads, sched = _problem(lr)
    ours = cls.like("pytorch", learning_rate=sched, weight_decay=torch_kwargs["weight_decay"], **kwargs)
    got, lrs = run(ours, w0, grads, "float64")

    param = torch.nn.Parameter(torch.tensor(w0, dtype=torch.float64))
    theirs = getattr(torch.optim, torch_name)([param], lr=lrs[0], **torch_kwargs)
    want = []
    for g, lr_t in zip(grads, lrs, strict=True):
        theirs.param_groups[0]["lr"] = lr_t  # what a torch scheduler does between steps
        param.grad = torch.tensor(g, dtype=torch.float64)
        theirs.step()
        want.append(param.detach().numpy().copy())
    np.testing.assert_allclose(got, np.array(want), **F64)


# ---------------------------------------------------------------- Optax
OPTAX_CASES = [
    ("sgd-momentum", "sgd", {"momentum": 0.9}, ko.Momentum, {"momentum": 0.9}, 0.05),
    ("sgd-nesterov", "sgd", {"momentum": 0.9, "nesterov": True}, ko.NAG, {"momentum": 0.9}, 0.05),
    ("adagrad", "adagrad", {}, ko.Adagrad, {}, 0.1),
    ("rmsprop", "rmsprop", {}, ko.RMSProp, {}, 0.01),
    ("rmsprop-momentum", "rmsprop", {"momentum": 0.9}, ko.RMSProp, {"momentum": 0.9}, 0.01),
    ("adam", "adam", {}, ko.Adam, {}, 0.01),
    ("amsgrad", "amsgrad", {}, ko.Adam, {"amsgrad": True}, 0.01),
]


@pytest.mark.parametrize(
    "name, optax_name, optax_kwargs, cls, kwargs, lr", OPTAX_CASES, ids=[c[0] for c in OPTAX_CASES]
)
def test_optax(name, optax_name, optax_kwargs, cls, kwargs, lr):
    optax = pytest.importorskip("optax", reason="the Optax parity tests need optax (pip install .[test])")
    import jax
    import jax.numpy as jnp

    w0, grads, sched = _problem(lr)
    got, lrs = run(cls.like("optax", learning_rate=sched, **kwargs), w0, grads, "float64")

    with jax.enable_x64(True):
        table = jnp.asarray(lrs)
        theirs = getattr(optax, optax_name)(learning_rate=lambda count: table[count], **optax_kwargs)
        params = jnp.asarray(w0)
        state = theirs.init(params)
        want = []
        for g in grads:
            updates, state = theirs.update(jnp.asarray(g), state, params)
            params = optax.apply_updates(params, updates)
            want.append(np.asarray(params))
    np.testing.assert_allclose(got, np.array(want), **F64)
