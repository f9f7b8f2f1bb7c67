"""One client for LLM judges over an OpenAI-compatible chat-completions endpoint: the pairwise judge of
`tunelab eval --judge` (`evaluation.judge`) and the pointwise `rubric` scorer both ask through it.

Each question is retried within a bound: a timeout, a connection error, a 5xx, a 429 (after its
Retry-After, capped) and a reply the caller cannot parse each cost one attempt. A question that runs
out of attempts is a failure the caller counts; nothing here raises for what the server does. The
API key is only ever put in the Authorization header: no message, count or record holds it.
Both judges fill their prompt (`fill_template`) and read their reply's last `Label: value` line
(`labelled_value`, `last_value`) through the helpers here: each asks for its own label (Verdict, Score),
and both tolerate the same markdown around it.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlsplit

from tunelab.errors import TunelabError

T = TypeVar("T")

DEFAULT_KEY_ENV = "OPENAI_API_KEY"
RETRY_AFTER_CAP_S = 30.0  # a server asking for longer waits than this is treated as if it asked for this
CHAT_PATH = "/chat/completions"


def check_url(url: str, where: str) -> str:
    """`url` as a chat-completions base URL (http[s]://host[:port]/path), or a one-line TunelabError naming `where`."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise TunelabError(
            f"{where} {url}: not an http(s) URL", hint="give the API's base URL, e.g. http://localhost:11434/v1"
        )
    return url


def fill_template(text: str, values: dict[str, str]) -> str:
    """`text` with each `{name}` of `values` filled in; other braces (a JSON example in a user's template) stay."""
    if not values:
        return text
    placeholder = re.compile(r"\{(" + "|".join(map(re.escape, values)) + r")\}")
    return placeholder.sub(lambda m: values[m[1]], text)


def labelled_value(label: str, value: str) -> re.Pattern[str]:
    """A reply's `label: value` (any case), tolerating markdown around it (**Verdict:** [[A]], Score: **7**);
    `value` is a regex, its match the one group."""
    return re.compile(label + r"\W{0,4}\s*[\[\(\*\"'`]*\s*(" + value + ")", re.IGNORECASE)


def last_value(pattern: re.Pattern[str], text: str | None) -> str | None:
    """The value of the reply's last `label: value` (a `labelled_value` pattern); None when it has none."""
    found = pattern.findall(text or "")
    return found[-1] if found else None


def chat_url(base_url: str) -> str:
    """The chat-completions endpoint under an OpenAI-style base URL (`.../v1`); a URL that already names it is kept."""
    base = base_url.rstrip("/")
    return base if base.endswith(CHAT_PATH) else base + CHAT_PATH


def api_key(env_name: str | None) -> str | None:
    """The key held by the environment variable `env_name` (None when unset or empty: a local server needs none)."""
    return (os.environ.get(env_name) or None) if env_name else None


@dataclass
class Counts:
    """What asking cost: HTTP requests sent, attempts after the first, questions that got no usable
    reply, replies that could not be parsed, 429s, and the tokens the server's `usage` reported."""

    requests: int = 0
    retries: int = 0
    failures: int = 0
    unparsable: int = 0
    rate_limited: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    errors: dict[str, int] = field(default_factory=dict)  # why attempts failed: "timeout", "HTTP 503", ...


class JudgeClient:
    """Asks one model at one endpoint; thread-safe (one `httpx.Client`, counts under a lock)."""

    def __init__(
        self,
        url: str,
        model: str,
        key: str | None = None,
        timeout_s: float = 60.0,
        max_retries: int = 3,
        max_tokens: int = 512,
        backoff_s: float = 1.0,
    ):
        import httpx

        self.endpoint = chat_url(url)
        self.model = model
        self.max_retries = max_retries
        self.max_tokens = max_tokens
        self.backoff_s = backoff_s
        self.counts = Counts()
        self._lock = threading.Lock()
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._http = httpx.Client(headers=headers, timeout=timeout_s)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> JudgeClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def ask(self, prompt: str, parse: Callable[[str], T | None]) -> tuple[T | None, str]:
        """The parsed reply to one user message and the reply's text; (None, why) once every attempt failed."""
        why = "no attempt"
        for attempt in range(self.max_retries + 1):
            if attempt:
                self._count(retries=1)
            text, wait, why = self._attempt(prompt)
            if text is not None:
                value = parse(text)
                if value is not None:
                    return value, text
                self._count(unparsable=1)
                why = "unparsable reply"
                self._note(why)
                continue  # asking again may draw a well-formed reply; no wait needed
            if wait is None:
                break  # a request the server refuses as such (400, 401, 404) fails the same way again
            time.sleep(wait if wait >= 0 else self.backoff_s * 2**attempt)
        self._count(failures=1)
        return None, why

    def _attempt(self, prompt: str) -> tuple[str | None, float | None, str]:
        """(reply text, None, "") or (None, seconds to wait before retrying (-1: back off) or None: do not, why)."""
        import httpx

        body = {
            "model": self.model,
            "messages": [{"role": "user", "content": prompt}],
            "temperature": 0,
            "max_tokens": self.max_tokens,
        }
        self._count(requests=1)
        try:
            r = self._http.post(self.endpoint, json=body)
        except httpx.TimeoutException:
            return None, -1, self._note("timeout")
        except httpx.TransportError as e:
            return None, -1, self._note(f"connection error ({type(e).__name__})")
        if r.status_code == 429:
            self._count(rate_limited=1)
            return None, _retry_after(r.headers.get("retry-after")), self._note("HTTP 429")
        if r.status_code >= 500:
            return None, -1, self._note(f"HTTP {r.status_code}")
        if r.status_code in (401, 403):  # the body may quote the key back: never keep it
            return None, None, self._note(f"HTTP {r.status_code} (the key was refused)")
        if r.status_code != 200:
            return None, None, self._note(f"HTTP {r.status_code}: {_error_message(r)}")
        try:
            data = r.json()
            text = data["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            return None, -1, self._note("not a chat completion")
        usage = data.get("usage") if isinstance(data, dict) else None
        if isinstance(usage, dict):
            self._count(
                prompt_tokens=_int(usage.get("prompt_tokens")), completion_tokens=_int(usage.get("completion_tokens"))
            )
        return (text if isinstance(text, str) else ""), None, ""

    def _count(self, **added: int) -> None:
        with self._lock:
            for name, n in added.items():
                setattr(self.counts, name, getattr(self.counts, name) + n)

    def _note(self, why: str) -> str:
        with self._lock:
            self.counts.errors[why] = self.counts.errors.get(why, 0) + 1
        return why


def _retry_after(header: str | None) -> float:
    """Seconds a 429's Retry-After asks for, capped; -1 (back off) when absent or an HTTP date."""
    try:
        return min(max(float(header), 0.0), RETRY_AFTER_CAP_S) if header is not None else -1
    except ValueError:
        return -1


def _error_message(r) -> str:
    """The server's own error message, first line, short (an OpenAI error body, else the text)."""
    try:
        message = r.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = r.text
    return str(message).strip().splitlines()[0][:160] if str(message).strip() else r.reason_phrase


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0
