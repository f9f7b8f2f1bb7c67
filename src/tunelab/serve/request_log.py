"""One log line per request (method, path, status, model, tokens in/out, latency; never the API key)."""

from __future__ import annotations

import logging
import time

log = logging.getLogger("tunelab.serve")


class RequestLog:
    """ASGI middleware: one log line per request once its last byte is sent (streams included)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        state = scope.setdefault("state", {})
        status = {"code": 500, "logged": False, "disconnected": False}

        def line() -> None:
            if status["logged"]:
                return
            status["logged"] = True
            parts = [scope["method"], scope["path"], str(status["code"])]
            for key in ("model", "prompt_tokens", "completion_tokens", "error"):
                if key in state:
                    parts.append(f"{key}={state[key]}")
            parts.append(f"latency_ms={(time.perf_counter() - start) * 1000:.0f}")
            log.info(" ".join(parts))

        async def logged_send(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                line()

        async def watched_receive():
            message = await receive()
            if message["type"] == "http.disconnect":
                status["disconnected"] = True
            return message

        try:
            await self.app(scope, watched_receive, logged_send)
        except Exception:
            # the app raised past its handlers (starlette's outer error middleware answers the 500)
            state.setdefault("error", "server_error")
            raise
        finally:
            if not status["logged"]:
                # nothing (or not all) was sent: the client left, else the response never finished
                state.setdefault("error", "client_disconnected" if status["disconnected"] else "no_response")
                line()


def configure_logging() -> None:
    """Request lines to stderr with a timestamp (the CLI's setup; tests capture the logger instead)."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
