"""One run's tracking: the sinks it logs to, what it logs at start, while training and at the end,
and the lineage it records.

`Tracking(cfg)` is built before anything is loaded (so W&B online without a key fails first);
`start()` opens every backend once the run directory, model and data exist; afterwards the object is
itself the single sink the trainer's callbacks talk to, fanning out to the guarded backend sinks.
Besides the trackers, the run directory gets `lineage.json` (artifacts read and written),
`tracking.json` (where each tracker keeps this run) and `system.jsonl` (system metric samples).
"""

from __future__ import annotations

import os
import time
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunelab.artifacts import ArtifactSpec, Home, content_digest, fetch, is_artifact_ref, resolve
from tunelab.artifacts.env import isolated
from tunelab.config.load import config_to_dict, redact
from tunelab.runs import RunDir, Summary, step_dir_name
from tunelab.runs.metric_table import FINAL_EVAL_LOSS, FINAL_TRAIN_LOSS, SAMPLES_EXACT_MATCH_AFTER
from tunelab.runs.reading import read_json
from tunelab.tracking.base import GuardedSink, Sink

if TYPE_CHECKING:
    from tunelab.config import RunConfig

CHECKPOINT_SKIP = {
    "optimizer.pt",
    "scheduler.pt",
    "rng_state.pth",
    "training_args.bin",
    "trainer_state.json",
    "tunelab_data_state.json",
}


def artifact_name(text: str) -> str:
    """A run name made safe for every store (letters, digits, '.', '_', '-')."""
    import re

    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "run"


def build_sinks(cfg: RunConfig, run_dir: str | Path, tracking_dir: Path, resume: bool = False) -> list[Sink]:
    """One sink per configured backend, logging into `tracking_dir` (inside `isolated(tracking_dir)`)."""
    t = cfg.tracking
    d = tracking_dir
    run_dir = Path(run_dir)
    name = redact(t.run_name or run_dir.name)
    previous = (read_json(RunDir(run_dir).tracking) or {}) if resume else {}
    sinks: list[Sink] = []
    for b in t.backends():
        if b == "trackio":
            from tunelab.tracking.trackio_backend import TrackioSink

            sinks.append(TrackioSink(d, t.project, name, resume=resume, group=t.group))
        elif b == "wandb":
            from tunelab.tracking.wandb_backend import WandbSink

            key = f"{run_dir.resolve()}|{time.time_ns()}"
            sinks.append(WandbSink(d, t, name, key, resume_id=previous.get("wandb", {}).get("id")))
        elif b == "mlflow":
            from tunelab.tracking.mlflow_backend import MlflowSink

            sinks.append(MlflowSink(d, t, name, resume_id=previous.get("mlflow", {}).get("run_id")))
        elif b == "tensorboard":
            from tunelab.tracking.tensorboard_backend import TensorBoardSink

            sinks.append(TensorBoardSink(d, artifact_name(name)))
    return sinks


class Tracking:
    """Fan-out to the run's tracker sinks (guarded), plus lineage and system metrics in the run dir."""

    def __init__(
        self, cfg, config_path: str | Path | None = None, extra_sinks=(), console=None, home: Home | None = None
    ):
        self.cfg = cfg
        self.home = home or Home.of(cfg)  # where this config's artifact references resolve
        self.env = ExitStack()  # the trackers' environment, from start() to finish()
        self.config_path = config_path
        self.extra = list(extra_sinks or [])
        self.console = console
        if "wandb" in cfg.tracking.backends():
            from tunelab.tracking.wandb_backend import preflight

            preflight(cfg.tracking.mode)
        self.guards: list[GuardedSink] = []
        self.run = None
        self.sampler = None
        self.last_system = 0.0
        self.lineage: dict[str, list] = {"inputs": [], "outputs": []}
        self.finished = False
        self.off: dict[str, str] = {}  # tracker -> why it was turned off before it started

    def _store_writable(self, sink) -> bool:
        """A tracker whose store cannot be written would drop every metric silently (trackio's sender
        does): it is turned off before training, with one warning, and tracking.json says why."""
        from tunelab.writability import unwritable

        for path in getattr(sink, "store_paths", lambda: [])():
            why = None
            if path.is_file() and not os.access(path, os.W_OK):
                why = f"{path} is read-only"
            elif path.is_file():
                try:
                    with path.open("ab"):
                        pass
                except OSError as e:
                    why = f"{path} cannot be written ({(e.strerror or str(e)).lower()})"
            elif not path.exists() or path.is_dir():
                why = unwritable(path)
            if why:
                name = getattr(sink, "name", type(sink).__name__)
                self.off[name] = why
                self._warn(f"tracking: {name} is off for this run: {why}; the run directory keeps everything")
                return False
        return True

    # --- start
    def start(self, run, params: dict[str, Any], data_stats: dict[str, Any], device: str, resume: bool = False) -> None:
        """Open the trackers and log config, versions, git, parameters, data statistics and the machine."""
        from tunelab.tracking.context import SystemSampler, git_state, library_versions, machine

        self.run = run
        t = self.cfg.tracking
        sinks = []
        if t.backends():
            d = self.env.enter_context(isolated(self.home.dir, t.timeout_s))
            sinks = build_sinks(self.cfg, run.path, d, resume=resume)
        sinks = [s for s in sinks if self._store_writable(s)]
        self.guards = [GuardedSink(s, t.timeout_s, self._warn) for s in sinks + self.extra]
        self.lineage["inputs"] = self._inputs()
        info = redact(
            {
                "config": config_to_dict(self.cfg),
                "run_dir": str(run.path.resolve()),
                "versions": library_versions(),
                "git": git_state(Path(self.config_path).resolve().parent if self.config_path else None),
                "parameters": params,
                "data": data_stats,
                "machine": machine(),
                "device": device,
                "inputs": [i["ref"] for i in self.lineage["inputs"]],
                "tags": list(t.tags),
                "notes": t.notes,
            }
        )
        self._write_lineage()
        # a tracker that cannot even start (no server, bad URI) is dropped here, with its one warning
        self._each("start", info)
        for rec in self.lineage["inputs"]:
            self._each("use_artifact", rec)
        self._write_where()
        if t.system_every_s > 0:
            self.sampler = SystemSampler()

    def _inputs(self) -> list[dict[str, Any]]:
        refs = [s.path for s in self.cfg.data.sources]
        refs.append(self.cfg.model.name)
        out = []
        for text in refs:
            if is_artifact_ref(text):
                out.append(fetch(text, self.home).as_record())  # already fetched by the loaders: a checked cache hit
        return out

    # --- the sink interface the trainer callbacks use
    def log_metrics(self, record: dict[str, Any]) -> None:
        self._each("log_metrics", record)
        now = time.monotonic()
        if self.sampler is not None and now - self.last_system >= self.cfg.tracking.system_every_s:
            self.last_system = now
            sample = self.sampler.sample()
            self.run.append_jsonl(self.run.system, {"step": record.get("step"), "time": time.time(), **sample})
            self._each("log_system", record.get("step", 0), sample)

    def log_samples(self, step: int, table: list[dict[str, Any]]) -> None:
        self._each("log_samples", step, redact(table))

    def callback(self):
        """A trainer callback that logs each checkpoint as a model version (tracking.log_checkpoints)."""
        from transformers import TrainerCallback

        tracking = self

        class CheckpointArtifacts(TrainerCallback):
            def on_save(self, args, state, control, **kw):
                ckpt = tracking.run.checkpoints / step_dir_name(state.global_step)
                if tracking.cfg.tracking.log_checkpoints and ckpt.is_dir():
                    tracking.log_model(
                        ckpt, {"step": state.global_step, "checkpoint": True}, [f"step-{state.global_step}"]
                    )

        return CheckpointArtifacts()

    def log_model(
        self, folder: Path, extra_meta: dict[str, Any], aliases: list[str], best_metric: float | None = None
    ) -> list[dict]:
        """Log `folder` as a version of the run's model artifact on every backend with artifacts."""
        import shutil
        import tempfile

        cfg = self.cfg
        name = artifact_name(cfg.tracking.model_artifact or f"{cfg.output.name or self.run.path.name}-model")
        staged = None
        if any(p.name in CHECKPOINT_SKIP for p in folder.iterdir()):
            # a checkpoint: the adapter and tokenizer only, not optimizer or RNG state
            staged = Path(tempfile.mkdtemp(prefix="tunelab-ckpt-"))
            for p in folder.iterdir():
                if p.is_file() and p.name not in CHECKPOINT_SKIP:
                    shutil.copy2(p, staged / p.name)
        path = staged or folder
        meta = redact(
            {
                "base_model": self._root_base_model(cfg.model.name),
                "adapter": cfg.adapter.type,
                "quantization": cfg.quantization.bits,
                "prompt_format": cfg.prompt.format,
                "run_name": self.run.path.name,
                "run_dir": str(self.run.path.resolve()),
                "inputs": [i["ref"] for i in self.lineage["inputs"]],
                "config": config_to_dict(cfg),
                **extra_meta,
            }
        )
        digest = content_digest(path)
        size_gb = sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**30
        # storing copies every byte once more: allow for it beyond the per-call deadline
        deadline = max(self.cfg.tracking.timeout_s, 120 + 60 * size_gb)
        outputs = []
        try:
            for g in self.guards:
                if g.disabled or not hasattr(g.sink, "log_artifact"):
                    continue
                these = list(aliases)
                if best_metric is not None and hasattr(g.sink, "current_best"):
                    best = (g.call("current_best", name) or {}).get("best_metric")
                    if g.disabled:
                        continue
                    if best is None or best_metric <= float(best):
                        these.append("best")
                spec = ArtifactSpec(path, name, "model", these, {**meta, "best_metric": best_metric}, digest)
                rec = g.call("log_artifact", spec, timeout_s=deadline)
                if rec:
                    ref = (
                        (
                            f"{rec['store']}:{rec.get('project')}/{rec['name']}:{rec['version']}"
                            if rec["store"] != "mlflow"
                            else f"mlflow:{rec['name']}:{rec['version']}"
                        )
                        if rec.get("version")
                        else None
                    )
                    outputs.append({**rec, "ref": ref, "type": "model", "digest": digest, "step": meta.get("step")})
        finally:
            if staged is not None:
                shutil.rmtree(staged, ignore_errors=True)
        self.lineage["outputs"] += outputs
        self._write_lineage()
        return outputs

    def finish(self, summary: Summary) -> None:
        """Log the final model (tracking.log_model) and the summary; close every tracker."""
        if self.finished:
            return
        if summary.status == "completed" and self.cfg.tracking.log_model and self.run.is_complete():
            metric = summary.final_eval_loss if summary.final_eval_loss is not None else summary.final_train_loss
            outs = self.log_model(
                self.run.final,
                {
                    "step": summary.steps,
                    FINAL_TRAIN_LOSS: summary.final_train_loss,
                    FINAL_EVAL_LOSS: summary.final_eval_loss,
                    SAMPLES_EXACT_MATCH_AFTER: summary.samples_exact_match_after,
                },
                ["final", *self.cfg.tracking.model_aliases],
                best_metric=metric,
            )
            for o in outs:
                if self.console is not None:
                    self.console.print(
                        f"[bold]model artifact[/]: {o['ref'] or o['store'] + ' (offline: versioned on sync)'} "
                        f"({', '.join(o['aliases'])})",
                        highlight=False,
                        emoji=False,
                    )
        self._each("finish", redact(summary.to_dict()))
        self.finished = True  # only now: a finish that failed half-way (full disk) may be retried as failed
        try:
            self._write_where()
        finally:
            self.env.close()

    def abort(self, status: str, step: int, reason: str | None = None) -> None:
        """Close the trackers of a run that did not complete, marking it failed (or interrupted) there too."""
        if self.run is not None:
            try:
                self.finish(Summary(status=status, steps=step, reason=reason))
            except Exception:  # noqa: BLE001 - e.g. a full disk refusing tracking.json: the run's own error wins
                pass
        self.env.close()

    # --- helpers
    def _each(self, method: str, *args: Any) -> None:
        for g in self.guards:
            g.call(method, *args)

    def _warn(self, message: str) -> None:
        if self.console is not None:
            self.console.print(f"[yellow]warning:[/] {message}", highlight=False, markup=True)
        else:
            import warnings

            warnings.warn(message, stacklevel=3)

    def _write_where(self) -> None:
        """tracking.json: where each tracker keeps this run, whether it is still on, and the time the run waited
        on it."""
        where = {}
        for g in self.guards:
            info = {}
            if hasattr(g.sink, "where") and not g.disabled:
                try:
                    info = g.sink.where()
                except Exception:  # noqa: BLE001 - a tracker that never opened its run has nothing to say
                    info = {}
            where[g.name] = {**info, "active": not g.disabled, "seconds": round(g.seconds, 3)}
        for name, why in self.off.items():
            where[name] = {"active": False, "seconds": 0.0, "reason": why}
        self.run.write_json(self.run.tracking, redact(where))

    def _write_lineage(self) -> None:
        if self.run is not None:
            self.run.write_json(self.run.lineage, redact(self.lineage))

    def _root_base_model(self, name: str) -> str:
        """The base model a model artifact ultimately rests on (following artifact references)."""
        if is_artifact_ref(name):
            _, v = resolve(name, self.home)
            return v.metadata.get("base_model") or name
        return name
