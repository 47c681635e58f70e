"""TensorBoard event files, written in bulk from any Keras backend.

A log step's scalars are encoded straight into the bytes of an `Event` protocol
buffer: each tag's `Summary.Value` (its tag and its plugin metadata) is serialised
once, when the tag is first seen, and a log appends only the four bytes of each
value to those prefixes. Events are kept in memory and written to the event file
in bulk (`flush`), as TFRecord records (length, data, masked CRC32C), through
TensorFlow's record writer, on every backend (TensorFlow is a dependency of
keras_optlab; nothing here needs it as the backend).
"""

from __future__ import annotations

import itertools
import os
import socket
import struct
import time

import numpy as np
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.plugins.histogram import metadata as histogram_metadata
from tensorboard.plugins.scalar import metadata as scalar_metadata
from tensorboard.plugins.text import metadata as text_metadata
from tensorboard.util import tensor_util

_SCALAR = scalar_metadata.create_summary_metadata(display_name=None, description=None)
_HISTOGRAM = histogram_metadata.create_summary_metadata(display_name=None, description=None)
# The tensor of a float32 scalar: dtype DT_FLOAT (field 1 = 1), then float_val (field 5,
# packed, 4 bytes); as the `tensor` field (8) of a Summary.Value, 8 bytes long.
_FLOAT_TENSOR = b"\x42\x08\x08\x01\x2a\x04"
_FILES = itertools.count()


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


class ScalarEncoder:
    """The `Summary` bytes of float32 scalars under fixed tags, without building protos."""

    def __init__(self):
        self._prefixes = {}

    def prefix(self, tag: str) -> bytes:
        prefix = self._prefixes.get(tag)
        if prefix is None:
            value = summary_pb2.Summary.Value(tag=tag, metadata=_SCALAR).SerializeToString()
            value += _FLOAT_TENSOR
            # Summary.value (field 1) holding that Value and the 4 bytes of the float
            prefix = self._prefixes[tag] = _varint(1 << 3 | 2) + _varint(len(value) + 4) + value
        return prefix

    def encode(self, tags, values) -> bytes:
        """`tags` (a list of str) with `values` (float32, one each)."""
        data = np.asarray(values, "<f4").tobytes()
        return b"".join(self.prefix(tag) + data[4 * i : 4 * i + 4] for i, tag in enumerate(tags))


def histogram_value(tag: str, low: float, high: float, counts) -> bytes:
    """The `Summary.Value` bytes of a histogram (rows of left edge, right edge, count)."""
    counts = np.asarray(counts, dtype=np.float64)
    if not counts.sum():
        tensor = tensor_util.make_tensor_proto(np.zeros((0, 3)))
    else:
        edges = np.linspace(float(low), float(high), len(counts) + 1)
        tensor = tensor_util.make_tensor_proto(np.stack([edges[:-1], edges[1:], counts], axis=1))
    value = summary_pb2.Summary.Value(tag=tag, metadata=_HISTOGRAM, tensor=tensor)
    return _field(1, value.SerializeToString())


def text_value(tag: str, strings, description: str = "") -> bytes:
    """The `Summary.Value` bytes of a text summary: a string tensor (shown by the Text tab)."""
    metadata = text_metadata.create_summary_metadata(display_name=None, description=description)
    tensor = tensor_util.make_tensor_proto(np.asarray(strings, dtype=object))
    return _field(1, summary_pb2.Summary.Value(tag=tag, metadata=metadata, tensor=tensor).SerializeToString())


def summary_event(summary: bytes, step: int, wall_time: float | None = None) -> bytes:
    """An `Event` (wall_time, step, summary) from the bytes of a `Summary`."""
    wall_time = time.time() if wall_time is None else wall_time
    return b"\x09" + struct.pack("<d", wall_time) + b"\x10" + _varint(step) + _field(5, summary)


def proto_event(summary: summary_pb2.Summary, step: int) -> bytes:
    return summary_event(summary.SerializeToString(), step)


class EventFile:
    """One event file of a run, written in bulk.

    `add` keeps an event's bytes; `flush` writes what was kept and flushes the file
    (no fsync). TensorBoard's own writers drop writes to a directory that vanished
    without a word, and so would this one: `flush` checks that the file grew, and
    raises an OSError where it did not.
    """

    def __init__(self, run_dir: str):
        import tensorflow as tf

        os.makedirs(run_dir, exist_ok=True)
        name = (
            f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}.{next(_FILES)}.v2"
        )
        self.path = os.path.join(run_dir, name)
        self._writer = tf.io.TFRecordWriter(self.path)
        self._pending = [
            event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2").SerializeToString()
        ]
        self._written = 0
        self.flushed_at = time.monotonic()

    def add(self, event: bytes) -> None:
        self._pending.append(event)

    def flush(self) -> None:
        pending, self._pending = self._pending, []
        for event in pending:
            self._writer.write(event)
        self._writer.flush()
        self.flushed_at = time.monotonic()
        if pending:
            size = os.path.getsize(self.path) if os.path.exists(self.path) else 0
            if size <= self._written:
                raise OSError(f"no event data reached {os.path.dirname(self.path)}")
            self._written = size

    def close(self) -> None:
        """Writes what is pending (a fit that ended on an exception never flushed it), then closes."""
        try:
            self.flush()
        finally:
            self._pending = []
            self._writer.close()
