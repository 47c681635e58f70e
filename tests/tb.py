"""Reading TensorBoard event files back, for the tests."""

from __future__ import annotations

import numpy as np
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorflow import make_ndarray


def read_run(run_dir) -> dict:
    """{tag: [(step, value), ...]} of every tensor event in `run_dir` (all kept)."""
    accumulator = EventAccumulator(str(run_dir), size_guidance={"tensors": 0, "scalars": 0, "histograms": 0})
    accumulator.Reload()
    return {
        tag: [(event.step, make_ndarray(event.tensor_proto)) for event in accumulator.Tensors(tag)]
        for tag in accumulator.Tags()["tensors"]
    }


def last(events, tag) -> float:
    return float(np.asarray(events[tag][-1][1]))
