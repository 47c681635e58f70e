"""Reading TensorBoard event files back, for the tests."""

from __future__ import annotations

import numpy as np
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.util.tensor_util import make_ndarray


def _accumulator(run_dir) -> EventAccumulator:
    accumulator = EventAccumulator(str(run_dir), size_guidance={"tensors": 0, "scalars": 0, "histograms": 0})
    accumulator.Reload()
    return accumulator


def read_run(run_dir) -> dict:
    """{tag: [(step, value), ...]} of every tensor event in `run_dir` (all kept)."""
    accumulator = _accumulator(run_dir)
    return {
        tag: [(event.step, make_ndarray(event.tensor_proto)) for event in accumulator.Tensors(tag)]
        for tag in accumulator.Tags()["tensors"]
    }


def plugin_tags(run_dir, plugin: str) -> set:
    """The tags of `run_dir` that the TensorBoard plugin `plugin` ("scalars", "text", ...) shows."""
    accumulator = _accumulator(run_dir)
    return {
        tag
        for tag in accumulator.Tags()["tensors"]
        if accumulator.SummaryMetadata(tag).plugin_data.plugin_name == plugin
    }


def last(events, tag) -> float:
    return float(np.asarray(events[tag][-1][1]))
