"""A stub LLM judge: an OpenAI-compatible chat-completions server on 127.0.0.1 whose verdicts follow a rule.

The rule: the longer answer wins, equal lengths tie. It reads the answers from tunelab's default judge
template. Asked with the `rubric` scorer's template instead, it grades the answer one point a word, at
most 10 (`grade`); an answer holding `NOGRADE` gets no `Score:` line. Faults are injected so a test can
check they are retried and counted:

- by instruction text: `NOVERDICT` is always answered without a verdict line; `POSITION` is always
  answered `A` (a judge that favours the first position); `MALFORMED` gets one reply without a
  verdict, then good ones;
- by request number (`faults`, 1-based, counted over all requests): "429" (with Retry-After: 0),
  "500", "slow" (answers after `slow_s`, past the client's timeout), "malformed".

Every request is recorded (prompt, model, Authorization header) for the test to inspect.
"""

from __future__ import annotations

import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_SECTION = re.compile(r"\[Instruction\]\n(.*?)\n\n\[Answer A\]\n(.*?)\n\n\[Answer B\]\n(.*?)\n\nExplain", re.DOTALL)
_GRADED = re.compile(r"\[Answer\]\n(.*?)\n\nExplain", re.DOTALL)  # the rubric scorer's template


def rule(answer_a: str, answer_b: str) -> str:
    """The stub's verdict: the longer answer, or a tie."""
    if len(answer_a) == len(answer_b):
        return "tie"
    return "A" if len(answer_a) > len(answer_b) else "B"


def grade(answer: str) -> int:
    """The stub's rubric grade: one point a word, at most 10."""
    return min(len(answer.split()), 10)


def expected(tuned: list[str], baseline: list[str]) -> tuple[int, int, int]:
    """(wins, ties, losses) of the tuned answers by the rule, both orders agreeing."""
    verdicts = [rule(t, b) for t, b in zip(tuned, baseline, strict=True)]
    return verdicts.count("A"), verdicts.count("tie"), verdicts.count("B")


class StubJudge:
    def __init__(self, faults: dict[int, str] | None = None, slow_s: float = 1.5, usage: bool = True):
        self.faults = dict(faults or {})
        self.slow_s = slow_s
        self.usage = usage
        self.requests: list[dict] = []
        self._lock = threading.Lock()
        self._seen: dict[str, int] = {}
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))))
                status, headers, reply = stub.answer(body, self.headers.get("authorization"), self.path)
                data = json.dumps(reply).encode()
                try:
                    self.send_response(status)
                    for k, v in {**headers, "content-type": "application/json"}.items():
                        self.send_header(k, v)
                    self.send_header("content-length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up waiting (a "slow" fault)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> StubJudge:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def answer(self, body: dict, authorization: str | None, path: str) -> tuple[int, dict, dict]:
        prompt = body["messages"][-1]["content"]
        with self._lock:
            self.requests.append({"prompt": prompt, "model": body.get("model"), "auth": authorization, "path": path})
            number = len(self.requests)
            fault = self.faults.get(number)
            self._seen[prompt] = self._seen.get(prompt, 0) + 1
            attempt = self._seen[prompt]
        if fault == "429":
            return 429, {"retry-after": "0"}, {"error": {"message": "rate limited"}}
        if fault == "500":
            return 500, {}, {"error": {"message": "overloaded"}}
        if fault == "slow":
            time.sleep(self.slow_s)
        text = self._text(prompt, fault, attempt)
        if text is None:
            return 400, {}, {"error": {"message": "not the judge template"}}
        reply = {
            "id": f"stub-{number}",
            "object": "chat.completion",
            "model": body.get("model"),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        }
        if self.usage:
            reply["usage"] = {"prompt_tokens": 100, "completion_tokens": 10, "total_tokens": 110}
        return 200, {}, reply

    def _text(self, prompt: str, fault: str | None, attempt: int) -> str | None:
        """The reply to the pairwise judge's template or the rubric's; None for any other prompt."""
        found = _SECTION.search(prompt)
        if found is not None:
            instruction, a, b = found.groups()
            malformed = (
                fault == "malformed" or "NOVERDICT" in instruction or ("MALFORMED" in instruction and attempt == 1)
            )
            letter = "A" if "POSITION" in instruction else rule(a, b)
            return "I cannot decide." if malformed else f"Answer lengths {len(a)} and {len(b)}.\nVerdict: {letter}"
        graded = _GRADED.search(prompt)
        if graded is None:
            return None
        if fault == "malformed" or "NOGRADE" in graded[1]:
            return "I cannot decide."
        return f"Reasonable.\nScore: {grade(graded[1])}"
