"""Merges concurrent Predict requests for the same servable and signature into one call.

No thread of its own: the first request queued for a group leads it, waiting up to the batch
timeout for others (or until max_batch_size rows are queued), runs the merged call, and hands
each request its rows of the outputs. Requests that cannot merge run alone, unchanged.
"""

import threading
import time
from typing import Callable, Hashable, Mapping

import numpy as np

Tensors = Mapping[str, np.ndarray]


def batch_form(inputs: Tensors, any_rank: frozenset) -> tuple[int, dict] | None:
    """(rows, inputs with a leading batch dim of `rows`), or None if the request can't merge.

    The batch size is the dim 0 shared by the rank >= 1 inputs. A scalar fed to an input of
    any rank is broadcast to [rows]: the model broadcasts it itself, so each row sees the same
    value. An empty [1, ...] input (e.g. a default of no images) becomes [rows, ...]; it has no
    values to mismatch.
    """
    def empty_single(v):
        return v.ndim >= 1 and v.shape[0] == 1 and v.size == 0

    sizes = {v.shape[0] for v in inputs.values() if v.ndim >= 1 and not empty_single(v)}
    if not sizes:
        sizes = {1} if any(empty_single(v) for v in inputs.values()) else set()
    if len(sizes) != 1:
        return None
    rows = sizes.pop()
    batched = {}
    for alias, value in inputs.items():
        if value.ndim == 0:
            if alias not in any_rank:
                return None
            value = np.full((rows,), value, dtype=value.dtype)
        elif value.shape[0] != rows:
            value = np.empty((rows,) + value.shape[1:], dtype=value.dtype)  # empty_single
        batched[alias] = value
    return rows, batched


def merge_key(inputs: Tensors) -> tuple:
    """Requests merge only when their inputs agree in names, dtypes and dims after dim 0."""
    return tuple(sorted((a, v.dtype.str, v.shape[1:]) for a, v in inputs.items()))


class _Request:
    def __init__(self, inputs: Tensors, rows: int, batched: Tensors):
        self.inputs, self.rows, self.batched = inputs, rows, batched
        self.arrived = time.monotonic()
        self.taken = False  # Out of the queue, into a batch.
        self.done = False
        self.outputs: dict | None = None
        self.error: BaseException | None = None
        self.run_alone = False


class Batcher:
    def __init__(self, max_batch_size: int = 8, batch_timeout_micros: int = 2000):
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
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

    def run(self, group: Hashable, inputs: Tensors, call: Callable[[Tensors], dict],
            any_rank: frozenset = frozenset()) -> dict:
        """Runs call(inputs), merged with concurrent requests of the same group when possible.

        `group` identifies the servable and signature; `any_rank` names inputs whose
        SignatureDef shape has unknown rank.
        """
        form = batch_form(inputs, any_rank)
        if form is None or form[0] > self.max_batch_size:
            return self._call(call, [inputs])[0]
        request = _Request(inputs, *form)
        key = (group, merge_key(request.batched))
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
            if len(batch) == 1:
                outputs = [self._call(call, [batch[0].inputs])[0]]
            else:
                outputs = self._call(call, [r.batched for r in batch])
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

    def _call(self, call, requests: list[Tensors]) -> list[dict]:
        """One model call for the requests, outputs split back along dim 0."""
        if len(requests) == 1:
            outputs = call(requests[0])
            self._count(1, 0)
            return [outputs]
        merged = {a: np.concatenate([r[a] for r in requests]) for a in requests[0]}
        rows = [next(iter(r.values())).shape[0] for r in requests]
        outputs = call(merged)
        total = sum(rows)
        if any(v.ndim == 0 or v.shape[0] != total for v in outputs.values()):
            raise ValueError("outputs are not batched along dim 0; cannot split them")
        self._count(len(requests), total)
        bounds = np.cumsum(rows)[:-1]
        split = {a: np.split(v, bounds) for a, v in outputs.items()}
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
