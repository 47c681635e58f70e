"""Reading scalar series from TensorBoard's data provider as NumPy arrays, and the heatmap's matrix.

Under TensorBoard's fast loading the data provider is `GrpcDataProvider`, a client of the Rust data
server. Its public `read_scalars` turns every point of the answer into a Python `ScalarDatum`: for a
heatmap of 200 layers x 1,000 steps that took 1.1 to 1.5 s on 2 busy cores, about all of the
route's time. So, for that provider, `Reader` sends the same `ReadScalars` request through the
provider's own gRPC stub and reads the answer's packed arrays with NumPy (0.05 s for the same
points, `bench/optimizer_tab_render.py`); any other provider (TensorBoard's Python loading,
`--load_fast=false`), or a TensorBoard whose provider lacks what the fast path uses, goes through
`read_scalars`. Both give the same arrays (the browser test holds the data server's answers to the
Python loader's).
"""

from __future__ import annotations

import numpy as np
from tensorboard import errors
from tensorboard.data import provider


def _stub_of(data_provider):
    """The ReadScalars request class and the stub of a GrpcDataProvider; None for other providers."""
    try:
        import grpc
        from tensorboard.data import grpc_provider
        from tensorboard.data.proto import data_provider_pb2
    except ImportError:
        return None
    stub = getattr(data_provider, "_stub", None)
    if not isinstance(data_provider, grpc_provider.GrpcDataProvider) or not hasattr(stub, "ReadScalars"):
        return None
    return grpc, data_provider_pb2.ReadScalarsRequest, stub


class Reader:
    def __init__(self, data_provider):
        self.provider = data_provider
        self._grpc = _stub_of(data_provider)

    @property
    def fast(self) -> bool:
        return self._grpc is not None

    def scalars(self, ctx, experiment, plugin_name, run, tags, downsample):
        """{tag: (steps as int64, values as float64)}, sorted by step, for the tags the run has."""
        if self._grpc is None:
            data = self.provider.read_scalars(
                ctx,
                experiment_id=experiment,
                plugin_name=plugin_name,
                downsample=downsample,
                run_tag_filter=provider.RunTagFilter(runs=[run], tags=tags),
            )
            return {
                tag: (
                    np.fromiter((d.step for d in series), np.int64, len(series)),
                    np.fromiter((d.value for d in series), np.float64, len(series)),
                )
                for tag, series in data.get(run, {}).items()
            }
        grpc, request_class, stub = self._grpc
        request = request_class(experiment_id=experiment)
        request.plugin_filter.plugin_name = plugin_name
        request.run_tag_filter.runs.names.append(run)
        request.run_tag_filter.tags.names.extend(sorted(tags))
        request.downsample.num_points = downsample
        try:
            answer = stub.ReadScalars(request)
        except grpc.RpcError as error:  # as GrpcDataProvider translates them
            if error.code() == grpc.StatusCode.INVALID_ARGUMENT:
                raise errors.InvalidArgumentError(error.details()) from None
            if error.code() == grpc.StatusCode.NOT_FOUND:
                raise errors.NotFoundError(error.details()) from None
            raise
        return {
            entry.tag_name: (
                np.array(entry.data.step, dtype=np.int64),
                np.array(entry.data.value, dtype=np.float64),
            )
            for run_entry in answer.runs
            if run_entry.run_name == run
            for entry in run_entry.tags
        }


def matrix(rows):
    """(steps, values, missing, aligned) of rows of (steps, values).

    The columns are the steps of the rows. Every row has the same steps when every layer logged at
    every log (the callback does) and TensorBoard's sampling, seeded alike for every tag, kept the same
    ones: then `aligned` is True. Otherwise the columns are every step any row has, and each row has
    gaps. values: float32 (NaN where not logged); missing: uint8, 1 where not logged.
    """
    logged = [steps for steps, _ in rows if len(steps)]
    longest = max(logged, key=len, default=np.zeros(0, np.int64))
    aligned = all(len(steps) == len(longest) and np.array_equal(steps, longest) for steps in logged)
    columns = longest if aligned else np.unique(np.concatenate(logged))
    values = np.full((len(rows), len(columns)), np.nan, dtype="<f4")
    missing = np.ones((len(rows), len(columns)), dtype=np.uint8)
    for r, (steps, row) in enumerate(rows):
        if not len(steps):
            continue
        positions = slice(None) if aligned else np.searchsorted(columns, steps)
        values[r, positions] = row
        missing[r, positions] = 0
    return columns.tolist(), values, missing, aligned
