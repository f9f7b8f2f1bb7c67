"""`tunelab report` on hand-made run directories: tables, best values, plots, gaps, escaping, errors."""

import re

import pytest

from conftest import run_cli
from report_runs import make_run, make_unfinished_run
from tunelab.errors import TunelabError
from tunelab.evaluation.report import write_report


def cells_of_row(html: str, table_id: str, label: str) -> list[str]:
    table = html[html.index(f'id="{table_id}"') :]
    table = table[: table.index("</table>")]
    row = next(r for r in table.split("<tr>") if f"<td>{label}</td>" in r)
    return re.findall(r"<td class=\"([^\"]*)\">", row)


def test_three_runs_compared(tmp_path):
    runs = [
        make_run(tmp_path, "lr-1e-3", 1e-3, 0.50),
        make_run(tmp_path, "lr-3e-3", 3e-3, 0.75),
        make_run(tmp_path, "lr-2e-3", 2e-3, None, evaluated=False),
    ]
    out = tmp_path / "report.html"
    info = write_report(runs, out)
    html = out.read_text()
    assert info["bytes"] == len(html.encode()) and info["gaps"] == []
    # config values that differ, and key ones that are the same
    differ = html[html.index('id="config-differ"') : html.index('id="config-same"')]
    assert "training.learning_rate" in differ and "0.003" in differ and "model.name" not in differ
    same = html[html.index('id="config-same"') :]
    assert "model.name" in same[: same.index("</table>")] and "tiny:llama-2l" in same[: same.index("</table>")]
    # final metrics: the best exact match (0.75, second run) and the lowest final train loss (lr 3e-3) are marked
    assert cells_of_row(html, "eval-metrics", "exact match") == ["num", "num best", "num gap"]
    assert cells_of_row(html, "eval-metrics", "loss (response tokens)") == ["num", "num best", "num gap"]
    assert cells_of_row(html, "train-metrics", "final train loss") == ["num", "num best", "num"]
    assert "75.0%" in html and "base 5.0%" in html
    # every curve drawn, as inline images; nothing loaded from elsewhere
    assert html.count('<img src="data:image/png;base64,') == 6
    assert not re.search(r"(src|href)=\"(?!data:|#)", html) and "<script" not in html
    # answers across steps and runs, with the reference
    assert html.count('class="sample"') == 3 and "Repeat the word cat 2 times." in html
    assert html.count(">step 20<") == 3 and html.count(">step 40<") == 3 and ">tunelab eval: base<" in html
    assert "not evaluated (run: tunelab eval" in html  # the third run's gap is named
    assert "test-host" in html and "900 MB RSS" in html and "184 train / 16 test rows" in html
    assert "trackio:tunelab/tasks:v3 (sha256 abababababab)" in html  # the data version, from lineage.json


def test_one_run_and_escaping(tmp_path):
    run = make_run(tmp_path, "solo", 1e-3, 0.5, answer="<script>alert(1)</script>")
    out = tmp_path / "sub" / "r.html"
    write_report([run], out)
    html = out.read_text()
    assert "<script>alert(1)</script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "One run: nothing to compare." in html and "num best" not in html  # no "best" among one
    assert not list(out.parent.glob("*.tmp*"))  # written under a temporary name, then renamed


def test_runs_without_metrics_are_marked_gaps(tmp_path):
    runs = [make_run(tmp_path, "done", 1e-3, 0.5), make_unfinished_run(tmp_path, "starting")]
    out = tmp_path / "r.html"
    info = write_report(runs, out)
    html = out.read_text()
    assert info["gaps"] == ["starting: no metrics yet"]
    assert "no metrics yet" in html and "no summary.json (not finished)" in html
    assert cells_of_row(html, "train-metrics", "final train loss") == ["num", "num gap"]
    assert "not logged by: starting" in html
    # a run that has only started, alone: nothing to compare, one line
    with pytest.raises(TunelabError, match="no metrics yet"):
        write_report([runs[1]], tmp_path / "empty.html")
    assert not (tmp_path / "empty.html").exists()


def test_ten_runs(tmp_path):
    runs = [make_run(tmp_path, f"r{i}", (i + 1) * 1e-4, i / 10) for i in range(10)]
    write_report(runs, tmp_path / "r.html")
    html = (tmp_path / "r.html").read_text()
    assert cells_of_row(html, "eval-metrics", "exact match") == ["num"] * 9 + ["num best"]
    assert html.count("<th>r9</th>") >= 4  # a column in each comparison table


def test_cli_bad_inputs_one_line_exit_2(tmp_path):
    make_unfinished_run(tmp_path, "starting")
    (tmp_path / "empty").mkdir()
    for args, expected in [
        ([str(tmp_path / "missing")], "no such run directory"),
        ([str(tmp_path / "empty")], "not a run directory"),
        ([str(tmp_path / "starting")], "nothing to compare"),
    ]:
        r = run_cli("report", *args, "-o", str(tmp_path / "r.html"))
        assert r.returncode == 2 and expected in r.stderr and "Traceback" not in r.stderr, r.stderr
