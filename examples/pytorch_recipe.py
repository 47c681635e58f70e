"""Reproduce a PyTorch training recipe's numbers in Keras with the PyTorch convention.

The recipe: SGD with momentum 0.9, coupled weight decay 5e-4 and a cosine learning
rate, as `torch.optim.SGD` plus a cosine schedule computes it. The same MLP, the same
initial weights and the same batches are trained three ways: in PyTorch, in Keras
with `ko.Momentum.like("pytorch")`, and in Keras with `keras.optimizers.SGD` (which
decays the weights decoupled and keeps the learning rate inside the buffer).

    python examples/pytorch_recipe.py --epochs 5
"""

import argparse
import math
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import numpy as np
import tensorflow as tf
from sklearn.datasets import load_digits

import keras_optlab as ko

LR, MOMENTUM, WEIGHT_DECAY, BATCH = 0.1, 0.9, 5e-4, 64


def batches(n, epochs, seed):
    for epoch in range(epochs):
        order = np.random.default_rng(seed + epoch).permutation(n)
        yield from (order[i : i + BATCH] for i in range(0, n, BATCH))


def cosine(step, total):
    return 0.5 * LR * (1 + math.cos(math.pi * step / total))


def train_keras(optimizer, x, y, weights, epochs):
    model = keras.Sequential(
        [keras.Input((64,)), keras.layers.Dense(32, activation="tanh"), keras.layers.Dense(10)]
    )
    model.set_weights(weights)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    optimizer.build(model.trainable_variables)

    @tf.function
    def step(xb, yb, lr):
        optimizer.learning_rate.assign(lr)
        with tf.GradientTape() as tape:
            loss = loss_fn(yb, model(xb))
        optimizer.apply(tape.gradient(loss, model.trainable_variables), model.trainable_variables)

    total = epochs * math.ceil(len(x) / BATCH)
    for t, batch in enumerate(batches(len(x), epochs, seed=0)):
        step(x[batch], y[batch], tf.constant(cosine(t, total), tf.float32))
    return model.get_weights(), float(loss_fn(y, model(x)))


def train_torch(x, y, weights, epochs):
    import torch

    model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.Tanh(), torch.nn.Linear(32, 10))
    with torch.no_grad():
        for layer, (kernel, bias) in zip([model[0], model[2]], [weights[:2], weights[2:]], strict=True):
            layer.weight.copy_(torch.tensor(kernel.T))
            layer.bias.copy_(torch.tensor(bias))
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    total = epochs * math.ceil(len(x) / BATCH)
    xt, yt = torch.tensor(x), torch.tensor(y)
    for t, batch in enumerate(batches(len(x), epochs, seed=0)):
        optimizer.param_groups[0]["lr"] = cosine(t, total)
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(xt[batch]), yt[batch]).backward()
        optimizer.step()
    with torch.no_grad():
        loss = float(torch.nn.functional.cross_entropy(model(xt), yt))
    state = [model[0].weight.T, model[0].bias, model[2].weight.T, model[2].bias]
    return [p.detach().numpy() for p in state], loss


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    args = parser.parse_args(argv)
    try:
        import torch  # noqa: F401
    except ImportError:
        print("this example needs PyTorch: pip install torch==2.13.0")
        return

    x, y = load_digits(return_X_y=True)
    x, y = (x / 16.0).astype("float32"), y.astype("int64")
    keras.utils.set_random_seed(0)
    init = keras.Sequential(
        [keras.Input((64,)), keras.layers.Dense(32, activation="tanh"), keras.layers.Dense(10)]
    )
    weights = init.get_weights()

    reference, torch_loss = train_torch(x, y, weights, args.epochs)
    ours = ko.Momentum.like("pytorch", learning_rate=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    keras_sgd = keras.optimizers.SGD(learning_rate=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    print(f"torch.optim.SGD                        final loss {torch_loss:.6f}")
    for name, optimizer in [('ko.Momentum.like("pytorch")', ours), ("keras.optimizers.SGD", keras_sgd)]:
        got, loss = train_keras(optimizer, x, y, weights, args.epochs)
        gap = max(float(np.max(np.abs(a - b))) for a, b in zip(got, reference, strict=True))
        print(f"{name:38s} final loss {loss:.6f}, largest weight difference from PyTorch {gap:.2e}")


if __name__ == "__main__":
    main()
