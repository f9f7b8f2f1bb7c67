"""Streamed answers: generated pieces with stop sequences held back, sent as server-sent events."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator

from fastapi import Request
from fastapi.responses import StreamingResponse

from tunelab.inference.generate import Generation, GenerationSettings
from tunelab.serve.engine import Engine, ServedModel
from tunelab.serve.openai_api import ApiError, StopTrimmer, sse

log = logging.getLogger("tunelab.serve")


async def stream_pieces(
    engine: Engine, served: ServedModel, ids: list[int], settings: GenerationSettings, stop: list[str]
) -> AsyncIterator[tuple[str, Generation | None]]:
    """(text, None) pieces as they are generated, then ("", Generation) once done.

    Text that could begin a stop sequence is held back until it is known not to; if the client
    goes away, generation is cancelled at its next token.
    """
    from transformers import AsyncTextIteratorStreamer

    streamer = AsyncTextIteratorStreamer(engine.tokenizer, skip_prompt=True, skip_special_tokens=True)
    cancel = threading.Event()
    task = asyncio.ensure_future(engine.generate(served, ids, settings, stop, streamer=streamer, cancel=cancel))
    task.add_done_callback(lambda t: t.cancelled() or t.exception())  # retrieved below, or moot after a disconnect
    trimmer = StopTrimmer(stop)
    try:
        async for text in streamer:
            piece = trimmer.feed(text)
            if piece:
                yield piece, None
        gen: Generation = await task
        tail = trimmer.flush()
        if tail:
            yield tail, None
        yield "", gen
    finally:
        cancel.set()


def event_stream(events: AsyncIterator[str], request: Request) -> StreamingResponse:
    """`events` as a text/event-stream response; a failure mid-stream ends it with an error event."""

    async def guarded():
        try:
            async for event in events:
                yield event
        except Exception as e:  # the 200 and earlier chunks are already sent: end the stream with an error event
            log.exception("generation failed mid-stream")
            request.state.error = "server_error"
            yield sse(ApiError(500, f"generation failed: {type(e).__name__}", type="server_error").body())

    return StreamingResponse(guarded(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
