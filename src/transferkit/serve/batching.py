"""Micro-batching: concurrent requests to one model are grouped into one forward pass.

Each model has a :class:`Batcher`: a request announces itself (:meth:`Batcher.expect`)
when it arrives, then decodes and preprocesses its input and puts it on a queue,
and waits on a future.  One loop per model takes the first waiting input, then
whatever else is queued, and waits up to ``max_wait_s`` more only while other
announced requests are still decoding, up to ``max_batch``; it runs the batch
on the model's own single inference thread, so the event loop keeps accepting
and decoding requests while the network runs.  While a batch runs, new requests
queue up, so under load batches fill by themselves; a lone request never waits.

``max_batch=1`` turns batching off (each request is its own forward pass):
the baseline of ``benchmarks/serve_load.py``.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
from typing import Any, Callable, Sequence


class Batcher:
    """Groups calls of ``run(list_of_inputs) -> list_of_results`` across concurrent requests.

    Args:
        run: the model's batch function (one result per input, in order).
        max_batch: largest batch (1 = no batching).
        max_wait_s: how long the first input of a batch waits for company.
        name: for the thread's name.
    """

    def __init__(self, run: Callable[[Sequence[Any]], list[Any]], max_batch: int = 32, max_wait_s: float = 0.005,
                 name: str = "model"):
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.run, self.max_batch, self.max_wait_s = run, int(max_batch), float(max_wait_s)
        self.sizes: collections.Counter[int] = collections.Counter()  # batch size -> how many batches ran
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"tk-{name}")
        self._queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None
        self._incoming = 0  # announced inputs still being prepared

    def start(self) -> None:
        """Start the batching loop on the running event loop (the app's startup)."""
        self._queue = asyncio.Queue()
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
        self._executor.shutdown(wait=False, cancel_futures=True)

    def expect(self) -> None:
        """An input is on its way (being decoded): a batch that has room may wait for it."""
        self._incoming += 1

    def cancel_expect(self) -> None:
        """The announced input will not come (it failed to decode)."""
        self._incoming = max(0, self._incoming - 1)

    async def submit(self, item: Any, expected: bool = False) -> Any:
        """Queue one prepared input and wait for its result (exceptions come back as raised).

        ``expected``: the input was announced with :meth:`expect`."""
        if self._queue is None:
            raise RuntimeError("Batcher.start() was not called")
        if expected:
            self.cancel_expect()
        fut = asyncio.get_running_loop().create_future()
        await self._queue.put((item, fut))
        return await fut

    async def _collect(self) -> list[tuple[Any, asyncio.Future]]:
        q = self._queue
        batch = [await q.get()]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_wait_s
        while len(batch) < self.max_batch:
            if not q.empty():
                batch.append(q.get_nowait())
                continue
            left = deadline - loop.time()
            if left <= 0 or self._incoming <= 0:  # nobody else is on the way: run now
                break
            try:
                batch.append(await asyncio.wait_for(q.get(), left))
            except asyncio.TimeoutError:
                break
        return [(item, fut) for item, fut in batch if not fut.done()]  # callers that timed out are gone

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            if not batch:
                continue
            items = [item for item, _ in batch]
            try:
                results = await loop.run_in_executor(self._executor, self._run_checked, items)
            except Exception as err:  # noqa: BLE001 - handed to each caller
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(err)
                continue
            for (_, fut), res in zip(batch, results):
                if fut.done():
                    continue
                if isinstance(res, BaseException):
                    fut.set_exception(res)
                else:
                    fut.set_result(res)

    def _run_checked(self, items: list[Any]) -> list[Any]:
        """Run a batch; if it fails as a whole, run its inputs one by one so one bad input fails alone."""
        self.sizes[len(items)] += 1
        try:
            out = self.run(items)
            if len(out) != len(items):
                raise RuntimeError(f"the model returned {len(out)} results for {len(items)} inputs")
            return out
        except Exception as err:
            if len(items) == 1:
                return [err]
        results: list[Any] = []
        for item in items:
            try:
                results.extend(self.run([item]))
            except Exception as err:  # noqa: BLE001
                results.append(err)
        return results
