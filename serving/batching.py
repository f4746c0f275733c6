"""Merges concurrent Predict requests for the same servable and signature into one call, as
tensorflow_model_server's BatchingSession does.

No thread of its own: the first request queued for a group leads it, waiting up to the batch
timeout for others (or until max_batch_size rows are queued), runs the merged call, and hands
each request its rows of the outputs. A request takes part only if BatchingSession would take it:
every input has a batch dimension, all of the same size (a scalar, e.g. a SignatureDef default,
is refused with TF Serving's message). With `allowed_batch_sizes`, each batch is padded to the
lowest allowed size that holds it with copies of its last request's first row, so the model sees
only those batch sizes (the ones the export's warmup records compile). Unlike TF Serving, a
request larger than max_batch_size runs alone, requests merge only with others of the same
dimensions after the first, and when a merged call fails each of its requests runs alone, so that
one bad request fails only itself.
"""

import threading
import time
from typing import Callable, Hashable, Mapping

import numpy as np

Tensors = Mapping[str, np.ndarray]


class BatchingError(ValueError):
    """A request that TF Serving's BatchingSession refuses (its INVALID_ARGUMENT messages)."""


def batch_size(inputs: Tensors) -> int:
    """The rows of a request, by ComputeTensorBatchSize (tensorflow_serving/batching/batching_util.h)."""
    if not inputs:
        raise BatchingError("Batching Run() must have at least one input tensor")
    if any(value.ndim == 0 for value in inputs.values()):
        raise BatchingError("Batching Run() input tensors must have at least one dimension")
    sizes = {value.shape[0] for value in inputs.values()}
    if len(sizes) != 1:
        raise BatchingError("Batching Run() input tensors must have equal 0th-dimension size")
    return sizes.pop()


def merge_key(inputs: Tensors) -> tuple:
    """Requests merge only when their inputs agree in names, dtypes and dims after dim 0."""
    return tuple(sorted((a, v.dtype.str, v.shape[1:]) for a, v in inputs.items()))


class _Request:
    def __init__(self, inputs: Tensors, rows: int):
        self.inputs, self.rows = inputs, rows
        self.arrived = time.monotonic()
        self.taken = False  # Out of the queue, into a batch.
        self.done = False
        self.outputs: dict | None = None
        self.error: BaseException | None = None
        self.run_alone = False


class Batcher:
    def __init__(self, max_batch_size: int = 8, batch_timeout_micros: int = 2000, allowed_batch_sizes=()):
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        self.allowed_batch_sizes = sorted(allowed_batch_sizes)
        if self.allowed_batch_sizes and self.allowed_batch_sizes[-1] != max_batch_size:
            raise ValueError(f"the last entry of allowed_batch_sizes ({self.allowed_batch_sizes[-1]}) must equal "
                             f"max_batch_size ({max_batch_size}), as in TF Serving")
        self.max_batch_size = max_batch_size
        self.timeout = batch_timeout_micros / 1e6
        self._cond = threading.Condition()
        self._queues: dict[Hashable, list[_Request]] = {}
        self._stats = {"calls": 0, "merged_calls": 0, "requests": 0, "max_requests_per_call": 0,
                       "max_rows_per_call": 0}

    def stats(self) -> dict:
        """Counters of successful model calls: all, those that merged requests, largest merges."""
        with self._cond:
            return dict(self._stats)

    def run(self, group: Hashable, inputs: Tensors, call: Callable[[Tensors], dict]) -> dict:
        """Runs call(inputs), merged with concurrent requests of the same group when possible.
        `group` identifies the servable and signature. Raises BatchingError for what TF Serving's
        batching refuses."""
        rows = batch_size(inputs)
        if rows > self.max_batch_size:
            return self._call(call, [inputs], pad=False)[0]
        request = _Request(inputs, rows)
        key = (group, merge_key(inputs))
        batch = self._wait_for_turn(key, request)
        if batch is not None:
            self._run_batch(call, batch)
        if request.run_alone:
            return self._call(call, [inputs])[0]
        if request.error is not None:
            raise request.error
        return request.outputs

    def _wait_for_turn(self, key, request: _Request) -> list[_Request] | None:
        """Blocks until another request has run ours (-> None), or until we lead a batch."""
        with self._cond:
            queue = self._queues.setdefault(key, [])
            queue.append(request)
            self._cond.notify_all()
            while not request.done:
                if request.taken or queue[0] is not request:
                    self._cond.wait()
                    continue
                queued_rows = sum(r.rows for r in queue)
                remaining = request.arrived + self.timeout - time.monotonic()
                if queued_rows < self.max_batch_size and remaining > 0:
                    self._cond.wait(remaining)
                    continue
                batch, rows = [], 0
                while queue and rows + queue[0].rows <= self.max_batch_size:
                    rows += queue[0].rows
                    batch.append(queue.pop(0))
                    batch[-1].taken = True
                if not queue:
                    del self._queues[key]
                self._cond.notify_all()  # The next in line leads the rest.
                return batch
            return None

    def _run_batch(self, call, batch: list[_Request]) -> None:
        outputs = None
        try:
            outputs = self._call(call, [r.inputs for r in batch])
        except Exception as e:
            if len(batch) == 1:
                batch[0].error = e
        finally:  # Whatever happened, no request may be left waiting.
            with self._cond:
                for i, request in enumerate(batch):
                    if outputs is not None:
                        request.outputs = outputs[i]
                    elif len(batch) > 1:
                        request.run_alone = True  # So that one bad request fails only itself.
                    request.done = True
                self._cond.notify_all()

    def _call(self, call, requests: list[Tensors], pad: bool = True) -> list[dict]:
        """One model call for the requests, padded to an allowed batch size when `pad`; outputs
        split back along dim 0."""
        if len(requests) == 1 and not (pad and self.allowed_batch_sizes):
            outputs = call(requests[0])
            self._count(1, 0)
            return [outputs]
        merged = {a: np.concatenate([r[a] for r in requests]) for a in requests[0]}
        rows = [next(iter(r.values())).shape[0] for r in requests]
        total = sum(rows)
        size = next((s for s in self.allowed_batch_sizes if s >= total), total) if pad else total
        if size > total:
            merged = {a: np.concatenate([v, np.repeat(requests[-1][a][:1], size - total, axis=0)])
                      for a, v in merged.items()}
        outputs = call(merged)
        if any(v.ndim == 0 or v.shape[0] != size for v in outputs.values()):
            raise ValueError("outputs are not batched along dim 0; cannot split them")
        self._count(len(requests), total)
        bounds = np.cumsum(rows)
        split = {a: np.split(v, bounds)[:-1] for a, v in outputs.items()}  # the last part is the padding
        return [{a: parts[i] for a, parts in split.items()} for i in range(len(requests))]

    def _count(self, requests: int, rows: int) -> None:
        with self._cond:
            s = self._stats
            s["calls"] += 1
            s["requests"] += requests
            if requests > 1:
                s["merged_calls"] += 1
                s["max_requests_per_call"] = max(s["max_requests_per_call"], requests)
                s["max_rows_per_call"] = max(s["max_rows_per_call"], rows)
