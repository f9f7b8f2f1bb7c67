"""The `rubric` scorer over a stub grader: the grade parsed, an ungraded answer left out, bad parameters refused."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tunelab.errors import ConfigError
from tunelab.scoring import build_scorers, score_set
from tunelab.scoring.rubric import parse_score

pytestmark = pytest.mark.timeout(60)


class Grader(BaseHTTPRequestHandler):
    """Grades by answer length (one point a word, at most 10); an answer saying `mumble` gets no grade line."""

    seen: list[str] = []

    def log_message(self, *args):
        pass

    def do_POST(self):
        prompt = json.loads(self.rfile.read(int(self.headers["content-length"])))["messages"][0]["content"]
        Grader.seen.append(prompt)
        answer = prompt.split("[Answer]\n", 1)[1].split("\n\nExplain", 1)[0]
        text = "hmm" if "mumble" in answer else f"Reasonable.\nScore: {min(len(answer.split()), 10)}"
        data = json.dumps({"choices": [{"message": {"role": "assistant", "content": text}}]}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def grader_url():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Grader)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def test_rubric_grades_each_answer_and_leaves_out_what_it_cannot(grader_url):
    Grader.seen.clear()
    declared = {"rubric": {"url": grader_url, "model": "g", "rubric": "Be brief {answer}.", "max_retries": 1}}
    (scorer,) = build_scorers([("eval.scorers[0]", declared)])
    answers = ["one two three", "a b c d e f g h i j k l", "mumble"]
    per_answer, aggregate = score_set([scorer], ["q1", "q2", "q3"], answers, ["r", None, "r"], [{}, {}, {}])
    assert [s["rubric"] for s in per_answer] == [3.0, 10.0, None]
    assert aggregate["rubric"] == pytest.approx(6.5)
    assert len(Grader.seen) == 4  # the ungraded answer asked twice (one retry)
    # the rubric's own braces are not placeholders: the answer appears once, where it belongs
    assert Grader.seen[0].count("one two three") == 1 and "Be brief {answer}." in Grader.seen[0]
    assert scorer.direction == 1


def test_rubric_parameters_are_checked():
    with pytest.raises(ConfigError, match="parameter 'model' is required"):
        build_scorers([("eval.scorers[0]", {"rubric": {"url": "http://localhost:1/v1"}})])
    with pytest.raises(ConfigError, match="not an http"):
        build_scorers([("eval.scorers[0]", {"rubric": {"url": "localhost:1", "model": "m"}})])


@pytest.mark.parametrize(
    ("text", "score"), [("Score: 7", 7.0), ("**Score:** 9.5", 9.5), ("Score: 11", None), ("", None)]
)
def test_parse_score(text, score):
    assert parse_score(text) == score
