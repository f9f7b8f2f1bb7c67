"""The HTTP process around the app: uvicorn on a host and port until SIGTERM / Ctrl-C, then the engine closed."""

from __future__ import annotations

import signal
import threading

from tunelab.serve.app import DEFAULT_MAX_BODY_BYTES, create_app
from tunelab.serve.engine import Engine


def run_server(
    engine: Engine,
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key: str | None = None,
    max_tokens_limit: int = 1024,
    sock=None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
) -> None:
    """Serve until SIGTERM / Ctrl-C: uvicorn stops taking connections, lets running requests finish
    (10 s at most), then the engine cancels what is left."""
    import uvicorn

    config = uvicorn.Config(
        create_app(engine, api_key, max_tokens_limit, max_body_bytes),
        host=host,
        port=port,
        access_log=False,
        log_level="info",
        timeout_graceful_shutdown=10,
        lifespan="off",
    )
    server = uvicorn.Server(config)
    # uvicorn shuts down gracefully on SIGTERM / SIGINT, then re-raises the signal to the handler that
    # was there before it. A no-op SIGTERM handler (and catching the re-raised SIGINT) lets the
    # engine close and the command exit 0 instead of dying by the signal after a clean shutdown.
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, lambda *_: None) if main else None
    try:
        server.run(sockets=[sock] if sock is not None else None)
    except KeyboardInterrupt:
        pass
    finally:
        engine.close()
        if main:
            signal.signal(signal.SIGTERM, previous)
