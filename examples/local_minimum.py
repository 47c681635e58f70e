"""Why momentum passes a local minimum: plain gradient descent stops in the first
valley it meets, momentum carries the point over the ridge to the deeper one.

    python examples/local_minimum.py --out local_minimum.png
"""

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras_optlab as ko
from keras_optlab.lab import plots
from keras_optlab.lab.surfaces import SURFACES, trajectory


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--out", default="local_minimum.png")
    args = parser.parse_args(argv)

    surface = SURFACES["local_minimum"]
    paths = {
        "SGD (lr=0.02)": trajectory(surface, ko.SGD(learning_rate=0.02), steps=args.steps),
        "Momentum (lr=0.02, momentum=0.9)": trajectory(
            surface, ko.Momentum(0.02, momentum=0.9), steps=args.steps
        ),
    }
    for label, points in paths.items():
        x, y = points[-1]
        print(f"{label:34s} ends at ({x:+.3f}, {y:+.3f}), f = {surface.fn(x, y):+.4f}")
    print(f"global minimum at x = {surface.minima[0][0]}, local minimum at x = {surface.local_minimum[0]}")
    plots.surface(surface, paths, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
