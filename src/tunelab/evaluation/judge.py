"""The pairwise LLM judge of `tunelab eval --judge`: which of two answers to the same instruction is better.

Each held-out prompt is put to the judge twice, the tuned answer first (A) and then second (B), so a
judge that favours a position cancels itself out. A prompt is a win or a loss for the tuned model
only when both orders agree; disagreeing orders, and an order that got no verdict after every retry,
make a tie (and are counted: `inconsistent`, `failed_pairs`). The win rate counts a tie as half a
win, AlpacaEval's convention; its 95 % interval is a seeded bootstrap over the prompts (the same
resampling as `evaluation.intervals`). It costs two requests per prompt, plus retries.

The judge is an OpenAI-compatible chat-completions endpoint (a hosted API, Ollama, vLLM, another
`tunelab serve`), or a tunelab TARGET that is served in-process on 127.0.0.1 for the time of judging.
The prompt is `DEFAULT_TEMPLATE` unless `eval.judge.template` names a file holding another one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from tunelab.config.schema import JudgeConfig
from tunelab.errors import TunelabError
from tunelab.evaluation.intervals import RESAMPLES, SEED, paired_interval
from tunelab.runs.records import JudgeResult
from tunelab.scoring.judge_client import JudgeClient, api_key, check_url, fill_template, labelled_value, last_value

PLACEHOLDERS = ("instruction", "answer_a", "answer_b")
_VERDICT = labelled_value("verdict", r"(?:A|B|tie)\b")
REASON_CHARS = 2000  # of each reply kept in eval_samples.jsonl

DEFAULT_TEMPLATE = """You are comparing two answers to the same instruction. Decide which answer follows the \
instruction better: correct, helpful, relevant and clear. Do not let the order of the answers, their length or \
their style decide.

[Instruction]
{instruction}

[Answer A]
{answer_a}

[Answer B]
{answer_b}

Explain your judgement in one or two sentences. Then end with a last line that is exactly one of:
Verdict: A
Verdict: B
Verdict: tie
"""


@dataclass(frozen=True)
class JudgeTemplate:
    """The judge prompt with `{instruction}`, `{answer_a}`, `{answer_b}`, and where it came from."""

    text: str
    source: str = "default"

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()

    def render(self, instruction: str, answer_a: str, answer_b: str) -> str:
        """The prompt filled in; other braces (a JSON example in a user's template) are left alone."""
        return fill_template(self.text, {"instruction": instruction, "answer_a": answer_a, "answer_b": answer_b})


def load_template(path: str | None, where: str = "eval.judge.template") -> JudgeTemplate:
    """The default template, or the one in the file at `path`; a one-line TunelabError for a file that
    cannot be read or lacks a placeholder."""
    if path is None:
        return JudgeTemplate(DEFAULT_TEMPLATE)
    try:
        text = Path(path).expanduser().read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise TunelabError(f"{where} {path}: cannot be read ({getattr(e, 'strerror', None) or e})") from None
    missing = [p for p in PLACEHOLDERS if "{" + p + "}" not in text]
    if missing:
        raise TunelabError(
            f"{where} {path}: the template lacks {', '.join('{' + p + '}' for p in missing)}",
            hint="a judge template holds {instruction}, {answer_a} and {answer_b} once each",
        )
    return JudgeTemplate(text, str(path))


def parse_verdict(text: str) -> str | None:
    """ "A", "B" or "tie" from the reply's last `Verdict:` line; None when it has none."""
    last = last_value(_VERDICT, text)
    if last is None:
        return None
    return "tie" if last.lower() == "tie" else last.upper()


@dataclass(frozen=True)
class JudgeSpec:
    """What judges, checked before any model loads: an endpoint `url` or a `target` served in-process."""

    url: str | None
    target: str | None
    model: str | None
    key_env: str
    template: JudgeTemplate
    concurrency: int
    timeout_s: float
    max_retries: int

    @property
    def endpoint(self) -> str:
        """Where the judge is, as records show it: the URL without credentials, or the TARGET."""
        if self.url is None:
            return f"{self.target} (served in-process)"
        parts = urlsplit(self.url)
        return urlunsplit(parts._replace(netloc=parts.hostname + (f":{parts.port}" if parts.port else "")))


def judge_spec(
    config: JudgeConfig | None,
    judge: str | None = None,
    model: str | None = None,
    concurrency: int | None = None,
) -> JudgeSpec | None:
    """The judge a `tunelab eval` asks: `--judge` (URL or TARGET) over the run's eval.judge, the CLI's
    model and concurrency over the config's; None when neither names a judge. Every problem is a
    one-line TunelabError naming the option or field."""
    config = config or JudgeConfig()
    if judge is not None:
        url, target, where = (judge, None, "--judge") if _is_url(judge) else (None, judge, "--judge")
    elif config.configured:
        url, target, where = config.url, config.target, "eval.judge.url"
    else:
        return None
    if url is not None:
        check_url(url, where)
    model = model if model is not None else config.model
    if url is not None and not model:
        raise TunelabError(
            f"{where} {url}: which model judges?", hint="pass --judge-model NAME (or set eval.judge.model)"
        )
    if concurrency is not None and concurrency < 1:
        raise TunelabError(f"--judge-concurrency {concurrency}: must be at least 1")
    return JudgeSpec(
        url=url,
        target=target,
        model=model,
        key_env=config.api_key_env,
        template=load_template(config.template),
        concurrency=concurrency or config.concurrency,
        timeout_s=config.timeout_s,
        max_retries=config.max_retries,
    )


def _is_url(text: str) -> bool:
    """Whether `--judge` names an endpoint rather than a TARGET: anything with a scheme (an ftp:// one is refused)."""
    return "://" in text


@dataclass
class PairVerdict:
    """One prompt judged in both orders, from the tuned model's side: `verdict` is win, tie or loss."""

    index: int
    first: str | None = None  # the judge's letter with the tuned answer as A
    second: str | None = None  # ... with the tuned answer as B
    reasons: list[str] = field(default_factory=lambda: ["", ""])

    @property
    def failed(self) -> bool:
        return self.first is None or self.second is None

    @property
    def consistent(self) -> bool | None:
        """Whether both orders named the same answer (or both a tie); None when an order got no verdict."""
        return None if self.failed else _tuned_side(self.first, True) == _tuned_side(self.second, False)

    @property
    def verdict(self) -> str:
        if not self.consistent:
            return "tie"  # disagreeing orders, or one without a verdict
        return _tuned_side(self.first, True)

    def sample(self) -> dict[str, Any]:
        """The `judge` field of this prompt's eval_samples.jsonl row."""
        return {
            "verdict": self.verdict,
            "consistent": self.consistent,
            "failed": self.failed,
            "orders": [
                {"a": "target", "b": "baseline", "verdict": self.first, "reason": self.reasons[0]},
                {"a": "baseline", "b": "target", "verdict": self.second, "reason": self.reasons[1]},
            ],
        }


def _tuned_side(letter: str, tuned_is_a: bool) -> str:
    if letter == "tie":
        return "tie"
    return "win" if (letter == "A") == tuned_is_a else "loss"


@dataclass(frozen=True)
class AnswerPairs:
    """What the judge compares: each prompt's instruction, the tuned model's answer and the baseline's."""

    instructions: Sequence[str]
    tuned: Sequence[str]
    baseline: Sequence[str]


def judge_pairs(
    client: JudgeClient, template: JudgeTemplate, pairs: AnswerPairs, concurrency: int, on_done=None
) -> list[PairVerdict]:
    """Every prompt asked in both orders, at most `concurrency` requests in flight; `on_done(1)` after each question."""
    instructions, tuned, baseline = pairs.instructions, pairs.tuned, pairs.baseline
    verdicts = [PairVerdict(i) for i in range(len(instructions))]

    def ask(i: int, tuned_first: bool) -> None:
        a, b = (tuned[i], baseline[i]) if tuned_first else (baseline[i], tuned[i])
        letter, text = client.ask(template.render(instructions[i], a, b), parse_verdict)
        slot = 0 if tuned_first else 1
        verdicts[i].reasons[slot] = text.strip()[-REASON_CHARS:] if letter is not None else f"no verdict: {text}"
        if slot == 0:
            verdicts[i].first = letter
        else:
            verdicts[i].second = letter
        if on_done is not None:
            on_done(1)

    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="judge") as pool:
        jobs = [pool.submit(ask, i, first) for i in range(len(instructions)) for first in (True, False)]
        for job in jobs:
            job.result()  # a bug in asking is a traceback; what the server does was counted, never raised
    return verdicts


def summarize(verdicts: list[PairVerdict], client: JudgeClient, spec: JudgeSpec, model: str) -> JudgeResult:
    """The record of a judging: counts, the win rate with ties as half and its bootstrap interval, costs."""
    n = len(verdicts)
    outcome = [v.verdict for v in verdicts]
    wins, ties, losses = outcome.count("win"), outcome.count("tie"), outcome.count("loss")
    per_prompt = [{"win": 1.0, "tie": 0.5, "loss": 0.0}[v] for v in outcome]
    # the bootstrap of a mean is the paired one against zeros: one resampling owner for every interval
    interval = paired_interval(per_prompt, [0.0] * n)
    parsed = [v for v in verdicts if not v.failed]
    c = client.counts
    return JudgeResult(
        model=model,
        endpoint=spec.endpoint,
        template=spec.template.text,
        template_source=spec.template.source,
        template_sha256=spec.template.sha256,
        n=n,
        wins=wins,
        ties=ties,
        losses=losses,
        win_rate=sum(per_prompt) / n,
        win_rate_low=interval.low,
        win_rate_high=interval.high,
        interval=f"percentile bootstrap over the {n} prompts, {RESAMPLES} resamples, seed {SEED}, 95 %",
        position_consistency=sum(bool(v.consistent) for v in parsed) / len(parsed) if parsed else None,
        inconsistent=sum(v.consistent is False for v in verdicts),
        failed_pairs=sum(v.failed for v in verdicts),
        requests=c.requests,
        retries=c.retries,
        failures=c.failures,
        unparsable=c.unparsable,
        rate_limited=c.rate_limited,
        prompt_tokens=c.prompt_tokens,
        completion_tokens=c.completion_tokens,
        errors=dict(c.errors),
    )


@contextmanager
def judge_endpoint(spec: JudgeSpec, trust_remote_code: bool = False) -> Iterator[tuple[str, str]]:
    """(base URL, model id) of the judge: the given URL, or the TARGET served on 127.0.0.1 while the block runs."""
    if spec.url is not None:
        yield spec.url, spec.model  # type: ignore[misc]  # judge_spec insists on a model for a URL
        return
    from tunelab.serve.engine import load_engine, plan_models

    served_id = plan_models(spec.target, (), None, trust_remote_code).target_id
    engine = load_engine(spec.target, trust_remote_code=trust_remote_code)
    try:
        with _serving(engine) as url:
            yield url + "/v1", spec.model or served_id
    finally:
        engine.close()


@contextmanager
def _serving(engine) -> Iterator[str]:
    """The engine behind uvicorn on a free port of 127.0.0.1, in a thread; stopped when the block ends."""
    import socket
    import threading
    import time

    import uvicorn

    from tunelab.serve.app import create_app

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(create_app(engine), lifespan="off", access_log=False, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True, name="judge-server")
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the in-process judge server did not start")
            time.sleep(0.02)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


def run_judge(
    spec: JudgeSpec,
    pairs: AnswerPairs,
    trust_remote_code: bool = False,
    progress=None,
    backoff_s: float = 1.0,
) -> tuple[JudgeResult, list[PairVerdict]]:
    """Judge every prompt's two answers (both orders) and summarize; the key is read from the environment
    variable `spec.key_env` and only ever sent, never returned or recorded."""
    with judge_endpoint(spec, trust_remote_code) as (url, model):
        task = progress.add_task(f"judge ({model})", total=len(pairs.instructions)) if progress is not None else None
        on_done = (lambda n: progress.advance(task, n / 2)) if progress is not None else None  # two orders a prompt
        key = api_key(spec.key_env) if spec.url is not None else None
        with JudgeClient(url, model, key, spec.timeout_s, spec.max_retries, backoff_s=backoff_s) as client:
            verdicts = judge_pairs(client, spec.template, pairs, spec.concurrency, on_done)
        return summarize(verdicts, client, spec, model), verdicts
