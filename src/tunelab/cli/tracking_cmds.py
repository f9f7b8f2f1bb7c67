"""CLI verbs for tracking: `tunelab artifacts push|list|pull|show`, `tunelab runs list|show|compare`,
`tunelab dashboard`. All of them work offline, on the local tracking directory and run directories."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from tunelab.cli.common import print_table, user_errors

TrackingDirOpt = Annotated[
    Path | None, typer.Option("--dir", help="Tracking directory (default $TUNELAB_TRACKING_DIR, else runs/.tracking).")
]
StoreOpt = Annotated[str, typer.Option("--store", help="Artifact store: trackio (local), wandb or mlflow.")]
ProjectOpt = Annotated[str, typer.Option("--project", help="Tracker project (trackio, W&B) or MLflow experiment.")]
UriOpt = Annotated[
    str | None, typer.Option("--uri", help="MLflow tracking URI (default: sqlite:/// in the tracking dir).")
]
RunsDirOpt = Annotated[Path, typer.Option("--dir", help="Folder holding the run directories.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def _home(tracking_dir: Path | None, project: str | None = None, uri: str | None = None):
    """The artifact home these commands work in: --dir, else $TUNELAB_TRACKING_DIR, else runs/.tracking."""
    from tunelab.artifacts import Home

    return Home.default(tracking_dir, project, uri)


def _fmt(x) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.4g}"
    return str(x)


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _check_shape(path: Path, type_: str) -> None:
    """A model artifact is a model or adapter folder; a dataset is data files. Anything else is refused now."""
    from tunelab.data.sources import SUFFIXES
    from tunelab.errors import TunelabError

    if type_ == "model":
        if not (path.is_dir() and ((path / "config.json").is_file() or (path / "adapter_config.json").is_file())):
            raise TunelabError(
                f"{path}: a model artifact is a model or adapter folder (with config.json or adapter_config.json)",
                hint="push data files with --type dataset",
            )
        return
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    if not any(f.suffix in SUFFIXES for f in files):
        raise TunelabError(f"{path}: a dataset artifact holds data files ({', '.join(sorted(SUFFIXES))})")


@user_errors
def artifacts_push(
    path: Annotated[Path, typer.Argument(help="File or folder to store.", show_default=False)],
    name: Annotated[str, typer.Option("--name", help="Artifact name (letters, digits, '.', '_', '-').")],
    type_: Annotated[str, typer.Option("--type", help="dataset or model.")],
    alias: Annotated[
        list[str] | None, typer.Option("--alias", help="Alias for this version (repeatable); latest is automatic.")
    ] = None,
    store: StoreOpt = "trackio",
    project: ProjectOpt = "tunelab",
    tracking_dir: TrackingDirOpt = None,
    uri: UriOpt = None,
):
    """Store PATH as a new version of an artifact (identical content reuses the version)."""
    from tunelab.artifacts import ArtifactSpec, content_digest, parse, store_for
    from tunelab.artifacts.env import isolated
    from tunelab.cli.common import _quiet_libraries, out
    from tunelab.errors import TunelabError, as_user_error

    if type_ not in ("dataset", "model"):
        raise TunelabError(f"--type: {type_!r} is not dataset or model")
    if not path.exists():
        raise TunelabError(f"{path}: no such file or folder")
    _check_shape(path, type_)
    where = "" if store == "mlflow" else f"{project}/"
    for a in alias or ["latest"]:
        parse(f"{store}:{where}{name}:{a}")  # the same name and alias rules as references
    _quiet_libraries()
    home = _home(tracking_dir, project, uri)
    digest = content_digest(path)
    meta = {"source": path.name, "files": 1 if path.is_file() else sum(1 for p in path.rglob("*") if p.is_file())}
    try:
        with isolated(home.dir):
            v = store_for(store, home).push(
                ArtifactSpec(path.resolve(), name, type_, list(alias or []), meta, digest), project
            )
    except OSError as e:  # a full or read-only store is the user's to fix; anything else is a bug
        err = as_user_error(e, home.dir)
        if err is None:
            raise
        raise err from None
    if v.version == "offline":
        out.print(
            f"logged W&B artifact {name} ({', '.join(v.aliases)}) digest {digest[:16]} offline in {v.producer_run}; "
            f"`wandb sync {v.producer_run}` uploads it and W&B numbers the version",
            highlight=False,
            emoji=False,
        )
        return
    out.print(
        f"pushed [bold]{v.ref}[/] ({', '.join(v.aliases) or 'no aliases'}) digest {digest[:16]}",
        highlight=False,
        emoji=False,
    )


@user_errors
def artifacts_list(
    store: StoreOpt = "trackio",
    project: Annotated[str | None, typer.Option("--project", help="Only this project (default: all).")] = None,
    type_: Annotated[str | None, typer.Option("--type", help="Only dataset or model artifacts.")] = None,
    tracking_dir: TrackingDirOpt = None,
    uri: UriOpt = None,
    as_json: JsonOpt = False,
):
    """Every version of every artifact, newest first, with aliases, digest and producing run."""
    from tunelab.artifacts import store_for
    from tunelab.artifacts.env import isolated
    from tunelab.cli.common import _quiet_libraries, out

    _quiet_libraries()
    home = _home(tracking_dir, project, uri)
    d = home.dir
    with isolated(home.dir):
        versions = [v for v in store_for(store, home).versions(project) if type_ is None or v.type == type_]
    if as_json:
        out.print_json(json.dumps([v.as_record() for v in versions]))
        return
    print_table(
        ["reference", "type", "aliases", "digest", "size", "made by run"],
        [
            [
                v.ref,
                v.type,
                ", ".join(v.aliases),
                (v.digest or v.native_digest or "-")[:12],
                _size(v.size_bytes),
                v.producer_run or "-",
            ]
            for v in versions
        ],
        title=f"{store} artifacts in {d}",
    )


@user_errors
def artifacts_pull(
    ref: Annotated[
        str,
        typer.Argument(help="trackio:PROJECT/NAME[:vN|:ALIAS], wandb:..., mlflow:NAME[:N|:ALIAS]", show_default=False),
    ],
    out_dir: Annotated[
        Path | None, typer.Option("--out", help="Folder to write the files to (default ./NAME-VERSION).")
    ] = None,
    tracking_dir: TrackingDirOpt = None,
    uri: UriOpt = None,
):
    """Download an artifact version's files (checked against its digest)."""
    import shutil

    from tunelab.artifacts import fetch
    from tunelab.cli.common import _quiet_libraries, out
    from tunelab.errors import TunelabError

    _quiet_libraries()
    got = fetch(ref, _home(tracking_dir, None, uri))
    dest = out_dir or Path(f"{got.version.name}-{got.version.version}")
    if dest.exists() and any(dest.iterdir()):
        raise TunelabError(f"--out: {dest} exists and is not empty")
    from tunelab.outputs import staged_folder

    with staged_folder(dest) as tmp:  # a failed copy (a full disk) leaves nothing at dest, in one line
        shutil.copytree(got.path, tmp, dirs_exist_ok=True)
    out.print(
        f"pulled [bold]{got.version.ref}[/] ({', '.join(got.version.aliases)}) to {dest} "
        f"digest {(got.version.digest or '-')[:16]}",
        highlight=False,
        emoji=False,
    )


@user_errors
def artifacts_show(
    ref: Annotated[str, typer.Argument(help="Artifact reference.", show_default=False)],
    tracking_dir: TrackingDirOpt = None,
    uri: UriOpt = None,
    as_json: JsonOpt = False,
):
    """One version: aliases, digest, metadata and lineage (the run that made it, what that run read)."""
    from tunelab.artifacts import resolve
    from tunelab.artifacts.env import isolated
    from tunelab.cli.common import _quiet_libraries, out

    _quiet_libraries()
    home = _home(tracking_dir, None, uri)
    store, v = resolve(ref, home)
    with isolated(home.dir):
        lineage = store.lineage(v) if hasattr(store, "lineage") else {"producer_run": v.producer_run}
    meta = {k: val for k, val in v.metadata.items() if k not in ("config", "tunelab_digest")}
    data = {**v.as_record(), "metadata": meta, "lineage": lineage}
    if as_json:
        out.print_json(json.dumps(data, default=str))
        return
    out.print(f"[bold]{v.ref}[/]  {v.type}  aliases: {', '.join(v.aliases) or '-'}", highlight=False, emoji=False)
    out.print(
        f"digest {v.digest or '-'}  size {_size(v.size_bytes)}  created {v.created_at or '-'}",
        highlight=False,
        emoji=False,
    )
    for k, val in meta.items():
        out.print(f"  {k}: {_fmt(val)}", highlight=False, emoji=False)
    out.print(
        f"made by run: {lineage.get('producer_run') or '-'}"
        + (f", which read {', '.join(lineage['producer_inputs'])}" if lineage.get("producer_inputs") else ""),
        highlight=False,
        emoji=False,
    )
    if lineage.get("consumers"):
        out.print(f"read by runs: {', '.join(lineage['consumers'])}", highlight=False, emoji=False)


@user_errors
def runs_list(runs_dir: RunsDirOpt = Path("runs"), as_json: JsonOpt = False):
    """A table of the runs: status, method, base model, key hyper-parameters, final losses, duration.
    A damaged run is left out with a note saying which file is damaged and how."""
    from tunelab.cli.common import out
    from tunelab.runs.index import rows as list_rows
    from tunelab.runs.metric_table import FINAL_EVAL_LOSS, FINAL_TRAIN_LOSS

    rows, notes = list_rows(runs_dir)
    _notes(notes)
    if as_json:
        out.print_json(json.dumps(rows))
        return
    cols = (
        "name",
        "status",
        "base_model",
        "method",
        "adapter",
        "quantization",
        "learning_rate",
        "batch",
        "steps",
        FINAL_TRAIN_LOSS,
        FINAL_EVAL_LOSS,
        "duration_s",
        *(["benchmarks"] if any(r["benchmarks"] for r in rows) else []),  # only once a run has `eval --tasks`
    )
    print_table(
        [c.replace("_", " ") for c in cols], [[_fmt(r[c]) for c in cols] for r in rows], title=f"runs in {runs_dir}"
    )


def _notes(notes: list[str]) -> None:
    """One line each on stderr, so a table or JSON on stdout stays clean."""
    from tunelab.cli.common import console

    for note in notes:
        console.print(note, highlight=False, markup=False, soft_wrap=True)


@user_errors
def runs_show(
    run: Annotated[str, typer.Argument(help="Run directory or run name.", show_default=False)],
    runs_dir: RunsDirOpt = Path("runs"),
    as_json: JsonOpt = False,
):
    """One run: summary, what it read (data and model artifacts, with versions) and wrote, where its trackers are."""
    from tunelab.cli.common import out
    from tunelab.runs.index import resolve_run, show

    info = show(resolve_run(run, runs_dir))
    if as_json:
        out.print_json(json.dumps(info, default=str))
        return
    out.print(f"[bold]{info['name']}[/]  {info['status']}  {info['path']}", highlight=False, emoji=False)
    for k, v in info["summary"].items():
        out.print(f"  {k}: {_fmt(v)}", highlight=False, emoji=False)
    out.print("read:", highlight=False, emoji=False)
    for r in info["reads"]:
        extra = f" (asked as {r['requested']})" if r.get("requested") and r["requested"] != r["ref"] else ""
        out.print(
            f"  {r.get('type') or '-'}: {r['ref']}{extra}" + (f" digest {r['digest'][:12]}" if r.get("digest") else ""),
            highlight=False,
            emoji=False,
        )
    out.print("wrote:", highlight=False, emoji=False)
    out.print(f"  files: {', '.join(info['files'])}", highlight=False, emoji=False)
    for w in info["writes"]:
        out.print(
            f"  {w.get('type')}: {w.get('ref') or w.get('store') + ' ' + w.get('name', '') + ' (offline)'} "
            f"({', '.join(w.get('aliases', []))}) digest {(w.get('digest') or '-')[:12]}",
            highlight=False,
            emoji=False,
        )
    if info["trackers"]:
        out.print("trackers:", highlight=False, emoji=False)
        for name, where in info["trackers"].items():
            rest = ", ".join(f"{k} {v}" for k, v in where.items() if k != "active")
            out.print(
                f"  {name}: {'active' if where.get('active') else 'off (failed)'}{', ' + rest if rest else ''}",
                highlight=False,
                emoji=False,
            )


@user_errors
def runs_compare(
    runs: Annotated[list[str], typer.Argument(help="Two or more runs (directories or names).", show_default=False)],
    runs_dir: RunsDirOpt = Path("runs"),
    as_json: JsonOpt = False,
):
    """Config differences and metrics side by side."""
    from tunelab.cli.common import out
    from tunelab.runs.index import compare, resolve_run

    res = compare([resolve_run(r, runs_dir) for r in runs])
    _notes(res["notes"])
    if as_json:
        out.print_json(json.dumps(res, default=str))
        return
    for title, rows in (("config differences", res["config"]), ("metrics", res["metrics"])):
        body = [[k, *(_fmt(v) for v in values)] for k, values in rows.items()] or [
            ["(none)", *("" for _ in res["runs"])]
        ]
        print_table([title, *res["runs"]], body, title=title)


@user_errors
def dashboard(
    backend: Annotated[str, typer.Option("--backend", help="trackio, mlflow or tensorboard.")] = "trackio",
    tracking_dir: TrackingDirOpt = None,
    project: Annotated[str | None, typer.Option("--project", help="Open this project (trackio).")] = None,
    port: Annotated[
        int | None, typer.Option("--port", help="Port on 127.0.0.1 (default: the backend's usual one).")
    ] = None,
    uri: UriOpt = None,
):
    """Start the tracker's own web UI on 127.0.0.1 over the local tracking directory; Ctrl-C stops it."""
    import signal
    import threading

    from tunelab.cli.common import _quiet_libraries, console, out
    from tunelab.tracking.dashboard import start

    _quiet_libraries()
    d = _home(tracking_dir, project, uri).dir
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())  # a plain `kill` also stops the server cleanly
    url, stop = start(backend, d, project, port, uri)
    out.print(f"{backend} dashboard: {url}", highlight=False, emoji=False, soft_wrap=True)
    console.print("[dim]Ctrl-C stops it[/]")
    try:
        while not done.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        stop()


def register(app: typer.Typer) -> None:
    """Add `artifacts`, `runs` and `dashboard` to the app."""
    artifacts_app = typer.Typer(
        help="Versioned datasets and models in the tracker's store (trackio by default).", no_args_is_help=True
    )
    runs_app = typer.Typer(help="Local runs: list, show, compare (from the run directories).", no_args_is_help=True)
    app.add_typer(artifacts_app, name="artifacts")
    app.add_typer(runs_app, name="runs")
    artifacts_app.command("push")(artifacts_push)
    artifacts_app.command("list")(artifacts_list)
    artifacts_app.command("pull")(artifacts_pull)
    artifacts_app.command("show")(artifacts_show)
    runs_app.command("list")(runs_list)
    runs_app.command("show")(runs_show)
    runs_app.command("compare")(runs_compare)
    app.command()(dashboard)
