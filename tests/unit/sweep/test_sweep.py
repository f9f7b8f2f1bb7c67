"""`tunelab sweep` without training: the sweep file's checks, the search space, Optuna pinned (seeds per
trial, the grid's trial -> point mapping, re-attaching a trial), the stored study's fingerprint, ranking."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
import yaml

from conftest import ROOT, run_cli
from tunelab.errors import ConfigError
from tunelab.sweep import space
from tunelab.sweep.resolved import prepare
from tunelab.sweep.spec import load_spec
from tunelab.sweep.study import make_sampler

BASE = {
    "model": {"name": "tiny:llama-2l"},
    "adapter": {"r": 8, "alpha": 16, "dropout": 0.0},
    "data": {"train": {"path": "synthetic:64:seed=3"}, "test_size": 8},
    "training": {
        "max_steps": 4,
        "batch_size": 4,
        "grad_accum": 1,
        "max_length": 128,
        "eval_steps": 2,
        "gradient_checkpointing": False,
    },
    "samples": {"enabled": False},
    "tracking": {"backend": "none"},
    "output": {"dir": "runs"},
}
SWEEP = {
    "base": {"config": "base.yaml"},
    "method": "grid",
    "space": {"adapter.r": [4, 8], "training.learning_rate": [1.0e-3, 1.0e-2]},
    "objective": "eval_loss",
}


def write_sweep(tmp_path: Path, sweep: dict | None = None, base: dict | None = None, name: str = "s.yaml") -> Path:
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base or BASE))
    p = tmp_path / name
    p.write_text(yaml.safe_dump(sweep or SWEEP, sort_keys=False))
    return p


def problems(tmp_path: Path, monkeypatch, **changes) -> list[str]:
    """The one-line problems `prepare` reports for SWEEP with `changes` (None deletes a key)."""
    monkeypatch.chdir(tmp_path)
    sweep = {**SWEEP, **changes}
    sweep = {k: v for k, v in sweep.items() if v is not None}
    with pytest.raises(ConfigError) as e:
        prepare(write_sweep(tmp_path, sweep))
    return e.value.problems


@pytest.mark.parametrize(
    "changes, expected",
    [
        ({"trails": 4}, "trails: unknown key; did you mean trials?"),
        (
            {"space": {"adapter.rank": [4, 8]}},
            "space.adapter.rank: no config setting adapter.rank; did you mean adapter.r?",
        ),
        ({"space": {"adapter.r.x": [4]}}, "space.adapter.r.x: adapter.r is a value, it has no setting 'x'"),
        ({"space": {"output.name": ["a", "b"]}}, "space.output.name: set by the sweep"),
        ({"space": {"adapter.r": []}}, "space.adapter.r: empty choice list"),
        (
            {"method": "random", "trials": 3, "space": {"training.learning_rate": {"float": [1e-2, 1e-3]}}},
            "space.training.learning_rate: low must be below high (got [0.01, 0.001])",
        ),
        (
            {"method": "random", "trials": 3, "space": {"training.warmup_ratio": {"float": [0.0, 0.2], "log": True}}},
            "space.training.warmup_ratio: log needs a positive range (got [0.0, 0.2])",
        ),
        ({"method": "tpe", "trials": None}, "trials: required for method tpe"),
        (
            {"space": {"training.learning_rate": {"float": [1e-4, 1e-2]}}},
            "space.training.learning_rate: a range, but method grid",
        ),
        (
            {"objective": "eval_los"},
            "objective.0.metric: no metric a run writes; did you mean eval_loss? (got 'eval_los')",
        ),
        ({"objective": {"metric": "tokens_per_s"}}, "objective.0.direction: required for tokens_per_s"),
        (
            {"pruner": "median", "objective": ["eval_loss", {"metric": "tokens_per_s", "direction": "maximize"}]},
            "pruner: Optuna prunes single-objective studies only",
        ),
        (
            {"pruner": {"name": "hyperband", "startup_trials": 3}},
            "pruner: startup_trials: not an option of the hyperband pruner",
        ),
        (
            {"storage": "postgresql://tunelab:secret@127.0.0.1:9/sweeps"},
            "storage: cannot connect to postgresql://***@127.0.0.1:9/sweeps",
        ),
        ({"storage": "nosuchdb://x/y"}, "storage: nosuchdb://x/y is no database URL SQLAlchemy knows"),
        ({"storage": "somewhere.db"}, "storage: 'somewhere.db' is not journal, sqlite or a database URL"),
        ({"space": {"adapter.r": [0, 8]}}, "space adapter.r=0: adapter.r: Input should be greater than 0 (got 0)"),
        (
            {"space": {"model.name": ["tiny:llama-2l", "tiny:nope"]}},
            "space model.name=tiny:nope: model.name: unknown tiny preset 'tiny:nope'",
        ),
        (
            {"paired": [{"adapter.r": 4}, {"adapter.alpha": 8}]},
            "paired: entry 1 sets adapter.alpha; every entry must set adapter.r",
        ),
        ({"base": {"config": "missing.yaml"}}, "base.config: missing.yaml not found"),
    ],
)
def test_bad_sweep_files_are_one_line_each_naming_the_key(tmp_path, monkeypatch, changes, expected):
    found = problems(tmp_path, monkeypatch, **changes)
    assert any(p.startswith(expected) for p in found), found
    assert all("\n" not in p for p in found)
    assert not (tmp_path / "sweeps").exists()  # nothing started, nothing written


def test_an_objective_the_runs_do_not_write_is_refused_before_any_trial(tmp_path, monkeypatch):
    base = {**BASE, "data": {"train": {"path": "synthetic:64:seed=3"}}}  # no test split: no eval loss
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as e:
        prepare(write_sweep(tmp_path, {**SWEEP, "pruner": "median"}, base=base))
    assert any("eval_loss: the run has no test split" in p for p in e.value.problems), e.value.problems
    with pytest.raises(ConfigError) as e:
        prepare(write_sweep(tmp_path, {**SWEEP, "objective": "samples_rougeL"}))
    assert any("samples_rougeL: the run generates no samples" in p for p in e.value.problems)


def test_a_pruner_needs_evaluations_during_training(tmp_path, monkeypatch):
    base = {**BASE, "training": {**BASE["training"], "eval_steps": None}}
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as e:
        prepare(write_sweep(tmp_path, {**SWEEP, "pruner": "median"}, base=base))
    assert any("a pruner needs evaluations during training" in p for p in e.value.problems)
    with pytest.raises(ConfigError) as e:
        prepare(write_sweep(tmp_path, {**SWEEP, "pruner": "median", "objective": "final_eval_loss"}))
    assert any("written once, at the end" in p for p in e.value.problems)


def test_the_cli_exits_2_with_every_problem_and_writes_nothing(tmp_path):
    sweep = {**SWEEP, "trails": 3, "objective": "eval_los", "space": {"adapter.r": [], "adapter.rank": [4]}}
    r = run_cli("sweep", str(write_sweep(tmp_path, sweep)), cwd=tmp_path, timeout=120)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and "error: 4 config problems" in r.stderr
    for line in (
        "trails: unknown key; did you mean trials?",
        "space.adapter.r: empty choice list",
        "space.adapter.rank: no config setting adapter.rank; did you mean adapter.r?",
        "objective.0.metric: no metric a run writes; did you mean eval_loss?",
    ):
        assert line in r.stderr
    assert not (tmp_path / "sweeps").exists()


def test_shipped_sweep_examples_validate_without_the_hub(monkeypatch):
    monkeypatch.chdir(ROOT)
    for path in sorted((ROOT / "examples").glob("sweep-*.yaml")):
        assert path.read_text().startswith("# tunelab sweep "), "examples carry their command in the first line"
        sweep = prepare(path, check_data=path.name == "sweep-quickstart.yaml")
        assert sweep.budget >= 9
    big = prepare(ROOT / "examples" / "sweep-openllama-3b.yaml", check_data=False)
    values = {
        k: {json.dumps(o[k]) for a in big.axes for o in a.options if k in o}
        for k in ("adapter.r", "training.learning_rate", "model.name")
    }
    assert values["adapter.r"] == {"8", "16", "64"} and values["training.learning_rate"] == {
        "0.0001",
        "0.0002",
        "0.0004",
    }
    assert len(values["model.name"]) == 2 and big.budget == 18


def test_overrides_of_the_sweep_file_reach_space_keys(tmp_path):
    spec = load_spec(write_sweep(tmp_path), ["parallel=2", "space.adapter.r=[2, 4, 8]", "pruner.name=median"])
    assert spec.parallel == 2 and spec.space["adapter.r"].choice == [2, 4, 8] and spec.pruner.name == "median"


def test_grid_points_paired_settings_and_labels(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    sweep = prepare(
        write_sweep(
            tmp_path,
            {
                **SWEEP,
                "space": {"adapter.r": [4, 8], "adapter.target_modules": [["q_proj", "v_proj"], "all-linear"]},
                "paired": [
                    {"training.learning_rate": 1e-3, "training.batch_size": 4},
                    {"training.learning_rate": 1e-2, "training.batch_size": 2},
                ],
            },
        )
    )
    assert sweep.budget == 8 and [a.name for a in sweep.axes][-1] == "training.learning_rate+training.batch_size"
    g = space.grid(sweep.axes)
    assert g["adapter.target_modules"] == ['["q_proj", "v_proj"]', "all-linear"]  # non-scalars stored as JSON
    study = optuna.create_study(sampler=make_sampler("grid", g, seed=0))
    seen = []
    for _ in range(8):
        t = study.ask()
        settings = space.suggest(t, sweep.axes)
        seen.append(json.dumps(settings, sort_keys=True))
        study.tell(t, 0.0)  # would raise in GridSampler.after_trial (study.stop) without _GridNoStop
        assert settings["training.batch_size"] == (4 if settings["training.learning_rate"] == 1e-3 else 2)
    assert len(set(seen)) == 8  # every point once
    assert space.trial_dir_name(3, json.loads(seen[0])).startswith("003-r")


def test_trial_names_are_one_short_folder_name():
    name = space.trial_dir_name(
        12,
        {
            "model.name": "openlm-research/open_llama_3b_v2",
            "adapter.r": 16,
            "training.learning_rate": 2e-4,
            "data.train_rows": 1000,
            "samples.enabled": False,
        },
    )
    assert name == "012-open_llama_3b_v2-r16-lr0.0002-rows1000-enabledoff"


def test_grid_trial_n_is_grid_point_n_whoever_asks():
    """Pinned: GridSampler gives trial N < grid size point N (Optuna >= 3.4), which makes two workers on one
    storage run every point exactly once."""
    grid = {"a": [1, 2, 3], "b": ["x", "y"]}
    storage = optuna.storages.InMemoryStorage()
    first = optuna.create_study(storage=storage, study_name="g", sampler=make_sampler("grid", grid, 0))
    second = optuna.load_study(storage=storage, study_name="g", sampler=make_sampler("grid", grid, 0))
    points = []
    for i in range(6):
        study = (first, second)[i % 2]
        t = study.ask()
        points.append((t.suggest_categorical("a", grid["a"]), t.suggest_categorical("b", grid["b"])))
        study.tell(t, 1.0)
    assert len(set(points)) == 6


@pytest.mark.parametrize("method", ["random", "tpe"])
def test_trial_n_draws_the_same_settings_in_any_process(method):
    """Seeds per trial: a resumed sweep (a new process) or a second worker proposes what one process would have."""
    dist = {"lr": optuna.distributions.FloatDistribution(1e-5, 1e-1, log=True)}

    def draws(split: bool) -> list[float]:
        storage = optuna.storages.InMemoryStorage()
        optuna.create_study(storage=storage, study_name="s")
        out = []
        study = None
        for _ in range(4):
            if study is None or split:  # split: a fresh study object (a new process) for every trial
                study = optuna.load_study(storage=storage, study_name="s", sampler=make_sampler(method, None, 7))
            t = study.ask(dist)
            out.append(t.params["lr"])
            study.tell(t, out[-1])
        return out

    together, apart = draws(False), draws(True)
    assert together == apart and len(set(together)) == 4


def test_a_stored_study_with_another_search_space_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    sweep = prepare(write_sweep(tmp_path))
    sweep.folder.mkdir(parents=True)
    assert sweep.study(create=True) is not None
    assert prepare(write_sweep(tmp_path)).study(create=False) is not None  # the same sweep loads it
    other = prepare(write_sweep(tmp_path, {**SWEEP, "space": {**SWEEP["space"], "adapter.r": [4, 8, 16]}}))
    with pytest.raises(ConfigError) as e:
        other.study(create=False)
    msg = e.value.problems[0]
    assert msg.startswith(
        "storage: it holds a study named 's' with a different search space (adapter.r: [4, 8] there, [4, 8, 16] here)"
    ), msg
    base_changed = {**BASE, "training": {**BASE["training"], "max_steps": 8}}
    with pytest.raises(ConfigError) as e:
        prepare(write_sweep(tmp_path, base=base_changed)).study(create=False)
    assert "a different base config (training.max_steps: 4 there, 8 here)" in e.value.problems[0]


def test_ranking_puts_the_best_completed_first_and_failed_last(tmp_path, monkeypatch):
    from tunelab.sweep.results import Row, rank

    monkeypatch.chdir(tmp_path)
    sweep = prepare(write_sweep(tmp_path))
    rows = [
        Row(0, "a", {}, "failed"),
        Row(1, "b", {}, "completed", [0.5]),
        Row(2, "c", {}, "pruned", [0.1]),
        Row(3, "d", {}, "completed", [0.2]),
        Row(4, "e", {}, "running", [0.3]),
    ]
    ranked = rank(sweep, rows)
    assert [r.name for r in ranked] == ["d", "b", "c", "e", "a"] and [r.rank for r in ranked] == [
        1,
        2,
        None,
        None,
        None,
    ]
    sweep.objectives = [("samples_exact_match", "maximize")]
    assert [r.name for r in rank(sweep, rows)][:2] == ["b", "d"]
