"""One response's engine requests, one per choice, from their first outputs to their end.

A run holds what the request was admitted with (its place in the admission queue and its key's lease) and
gives it back exactly once, in `end`, with every choice still running aborted in the engine and counted in
the metrics. `end` is synchronous so it also works in a cancelled task (a client gone mid-stream), where any
await would be cancelled again; every path out of a response calls it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar

from lpu_runtime import FinishReason, GenerationRequest, RequestOutput
from server.admission import Ticket
from server.chunks import ResponseMeta
from server.limits import Lease
from server.metrics import RequestTracker

T = TypeVar("T")


class Admitted:
    """A request's place in the admission queue and its key's lease."""

    def __init__(self, ticket: Ticket, lease: Lease) -> None:
        self.ticket = ticket
        self.lease = lease

    def end(self, generated_tokens: int) -> None:
        """Gives both back (once: later calls do nothing)."""
        self.ticket.close()
        self.lease.release(generated_tokens)


class Run:
    def __init__(
        self,
        meta: ResponseMeta,
        requests: Sequence[GenerationRequest],
        trackers: Sequence[RequestTracker],
        admitted: Admitted,
        abort: Callable[[str], None],
    ) -> None:
        """abort: ends an engine request (by id) and frees its KV cache."""
        self.meta = meta
        self.requests = list(requests)
        self.trackers = list(trackers)
        self.admitted = admitted
        self.abort = abort
        self.outputs: list[AsyncIterator[RequestOutput]] = []  # per choice, from its first output on
        self.generated = [0] * len(self.requests)  # tokens per choice so far
        self._open = set(range(len(self.requests)))  # choices the engine may still be running

    @property
    def headers(self) -> dict[str, str]:
        """The key's rate-limit headers, for every answer."""
        return self.admitted.lease.headers

    async def merged(self) -> AsyncIterator[tuple[int, RequestOutput]]:
        """Every choice's outputs as they come, tagged with the choice's index and counted in the metrics."""
        async for index, output in merged(self.outputs):
            self.trackers[index].on_output(output)
            self.generated[index] = output.completion_tokens
            if output.finished:
                self._open.discard(index)
            yield index, output

    def end(self, reason: FinishReason = FinishReason.ABORT) -> None:
        """Aborts every choice still running (counted as `reason`) and gives the admission back. Idempotent."""
        for index in sorted(self._open):
            self.abort(self.requests[index].request_id)
            self.trackers[index].on_abandoned(reason)
        self._open.clear()
        self.admitted.end(sum(self.generated))


async def aclose(iterator: AsyncIterator[Any]) -> None:
    close: Callable[[], Awaitable[None]] | None = getattr(iterator, "aclose", None)
    if close is not None:
        await close()


async def chain(first: RequestOutput, rest: AsyncIterator[RequestOutput]) -> AsyncIterator[RequestOutput]:
    try:
        yield first
        async for output in rest:
            yield output
    finally:
        await aclose(rest)


async def gather_all(awaitables: Sequence[Awaitable[T]]) -> list[T]:
    """Every result, or the first exception once the others are cancelled and have wound down."""
    tasks = [asyncio.ensure_future(a) for a in awaitables]
    try:
        return list(await asyncio.gather(*tasks))
    finally:
        for task in tasks:
            if not task.done():
                task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def merged(streams: Sequence[AsyncIterator[T]]) -> AsyncIterator[tuple[int, T]]:
    """The streams' items as they come, tagged with the stream's index, until every stream has ended."""
    if len(streams) == 1:
        try:
            async for item in streams[0]:
                yield 0, item
        finally:
            await aclose(streams[0])
        return
    queue: asyncio.Queue[tuple[int, T | BaseException | None]] = asyncio.Queue()

    async def pump(index: int, stream: AsyncIterator[T]) -> None:
        try:
            async for item in stream:
                queue.put_nowait((index, item))
            queue.put_nowait((index, None))
        except Exception as exc:
            queue.put_nowait((index, exc))

    pumps = [asyncio.ensure_future(pump(i, s)) for i, s in enumerate(streams)]
    try:
        running = len(streams)
        while running:
            index, got = await queue.get()
            if got is None:
                running -= 1
            elif isinstance(got, BaseException):
                raise got
            else:
                yield index, got
    finally:
        for task in pumps:
            task.cancel()
        await asyncio.gather(*pumps, return_exceptions=True)
        for stream in streams:
            await aclose(stream)
