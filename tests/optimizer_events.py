"""Synthetic event files in OptimizerDiagnostics' tag scheme, for the Optimizer tab's tests and benchmark.

The events are written as the callback writes them: one Event per logged step whose Summary holds
every scalar of that step (each value a float32 tensor with the scalars plugin's metadata), and the
layer order as a text summary (a 1-D string tensor) at the first step. The records go through
TensorFlow's TFRecordWriter (its CRC is in C++: the benchmark's file holds 18 million values).
"""

from __future__ import annotations

import math
import os
import struct

import numpy as np
from tensorboard.compat.proto import event_pb2, summary_pb2, tensor_pb2, tensor_shape_pb2, types_pb2
from tensorboard.plugins.scalar import metadata as scalar_metadata
from tensorboard.plugins.text import metadata as text_metadata

from keras_optlab.tensorboard_plugin import _tags

_SCALAR = scalar_metadata.create_summary_metadata(display_name=None, description=None)
_TEXT = text_metadata.create_summary_metadata(display_name=None, description=None)
# A scalar's TensorProto after its float: dtype DT_FLOAT (field 1 = 1), an empty shape (field 2),
# float_val (field 5, packed, 4 bytes). Value.tensor is field 8 (0x42), 10 bytes long.
_TENSOR_HEAD = b"\x42\x0a\x08\x01\x12\x00\x2a\x04"


def layer_tag(template: str, layer: str) -> str:
    """The tag of `layer`'s value for a template of `_tags` (e.g. `effective_lr_log10/{scope}/median`)."""
    return template.format(scope=_tags.layer_scope(layer))


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _value_prefix(tag: str) -> bytes:
    # Summary.Value without its tensor (tag and metadata), then the tensor's head: the float follows.
    body = summary_pb2.Summary.Value(tag=tag, metadata=_SCALAR).SerializeToString() + _TENSOR_HEAD
    return body, len(body) + 4


def _event(step: int, wall_time: float, summary: bytes) -> bytes:
    return (
        b"\x09"
        + struct.pack("<d", wall_time)
        + b"\x10"
        + _varint(step)
        + b"\x2a"
        + _varint(len(summary))
        + summary
    )


def text_event(step: int, wall_time: float, tag: str, strings) -> bytes:
    tensor = tensor_pb2.TensorProto(
        dtype=types_pb2.DT_STRING,
        tensor_shape=tensor_shape_pb2.TensorShapeProto(
            dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=len(strings))]
        ),
        string_val=[s.encode() for s in strings],
    )
    summary = summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=tag, metadata=_TEXT, tensor=tensor)])
    return event_pb2.Event(step=step, wall_time=wall_time, summary=summary).SerializeToString()


def write_run(run_dir, steps, scalars, layer_order=None, wall_time=1.8e9):
    """Writes one run: `scalars` maps each tag to its values at `steps` (None: not written at that step).

    `scalars` may also be `(tags, matrix)` with a float array of shape (len(steps), len(tags)), every value
    written (the benchmark's fast path). `layer_order` (a list of layer names) is written as the text
    summary `layer_order` at the first step; None writes none. Returns the event file's path.
    """
    import tensorflow as tf

    os.makedirs(run_dir, exist_ok=True)
    path = os.path.join(str(run_dir), f"events.out.tfevents.{int(wall_time)}.synthetic.0.v2")
    if isinstance(scalars, tuple):
        tags, matrix = scalars
        matrix = np.asarray(matrix, dtype="<f4")
        present = None
    else:
        tags = list(scalars)
        columns = [list(scalars[tag]) for tag in tags]
        for tag, column in zip(tags, columns, strict=True):
            if len(column) != len(steps):
                raise ValueError(f"{tag}: {len(column)} values for {len(steps)} steps")
        shape = (len(steps), len(tags))
        present = np.array([[v is not None for v in column] for column in columns]).T.reshape(shape)
        matrix = np.array([[math.nan if v is None else v for v in c] for c in columns], dtype="<f4")
        matrix = matrix.T.reshape(shape)
    prefixes = [_value_prefix(tag) for tag in tags]
    heads = [b"\x0a" + _varint(length) + body for body, length in prefixes]
    with tf.io.TFRecordWriter(path) as writer:
        version = event_pb2.Event(wall_time=wall_time, file_version="brain.Event:2")
        writer.write(version.SerializeToString())
        if layer_order is not None:
            writer.write(text_event(int(steps[0]), wall_time, _tags.LAYER_ORDER, list(layer_order)))
        for i, step in enumerate(steps):
            floats = matrix[i].tobytes()
            if present is None:
                parts = [head + floats[4 * j : 4 * j + 4] for j, head in enumerate(heads)]
            else:
                parts = [head + floats[4 * j : 4 * j + 4] for j, head in enumerate(heads) if present[i, j]]
            writer.write(_event(int(step), wall_time + i, b"".join(parts)))
    return path
