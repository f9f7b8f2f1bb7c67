"""W&B artifacts, and the W&B client settings the W&B sink (tunelab.tracking) shares. Resolving and
downloading go through W&B's public API, so they need W&B online; pushing works offline."""

from __future__ import annotations

import os
from pathlib import Path

from tunelab.artifacts.core import ArtifactSpec, ArtifactVersion
from tunelab.errors import TunelabError
from tunelab.refs import ArtifactRef


def wandb_mode(mode: str | None) -> str:
    """`tracking.mode`, else $WANDB_MODE, else offline (`disabled` and `dryrun` count as offline)."""
    m = mode or os.environ.get("WANDB_MODE") or "offline"
    return "online" if m in ("online", "run") else "offline"


def has_api_key() -> bool:
    """Whether W&B would find credentials: $WANDB_API_KEY, an identity token file, or a .netrc entry."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    try:
        from tunelab.compat import wandb_netrc_auth

        return bool(wandb_netrc_auth(host=os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai"))
    except Exception:  # noqa: BLE001 - an unreadable .netrc means no key
        return False


def preflight(mode: str | None) -> None:
    """Online without a key would stop at a login prompt mid-run: say so before anything starts."""
    if wandb_mode(mode) == "online" and not has_api_key():
        raise TunelabError(
            "tracking: W&B online mode needs an API key, and none is set (WANDB_API_KEY or `wandb login`)",
            hint="log offline instead with tracking.mode=offline (or WANDB_MODE=offline) "
            "and upload later with `wandb sync`",
        )


def settings(mode: str, timeout_s: float):
    import wandb

    return wandb.Settings(
        mode=mode,
        x_disable_meta=True,
        x_disable_stats=True,
        disable_git=True,
        save_code=False,
        disable_job_creation=True,
        console="off",
        silent=True,
        init_timeout=timeout_s,
        x_save_requirements=False,
    )


class WandbStore:
    """W&B artifacts. Resolving and downloading go through W&B's public API, so they need W&B online;
    pushing works offline (the artifact is uploaded with `wandb sync`)."""

    store = "wandb"

    def __init__(self, tracking_dir: Path):
        self.dir = Path(tracking_dir)

    def _api(self, ref_text: str):
        if wandb_mode(None) != "online" or not has_api_key():
            raise TunelabError(
                f"{ref_text}: resolving a W&B artifact needs W&B online with an API key",
                hint="set WANDB_MODE=online and WANDB_API_KEY, or push the files to trackio: "
                "tunelab artifacts push PATH --name N --type T",
            )
        import wandb

        return wandb.Api(timeout=30)

    def get(self, ref: ArtifactRef) -> ArtifactVersion:
        api = self._api(ref.text)
        path = "/".join(p for p in (ref.entity, ref.project, ref.name) if p) + f":{ref.version or 'latest'}"
        try:
            art = api.artifact(path)
        except Exception as e:  # noqa: BLE001 - the public API raises CommError / ValueError alike
            raise TunelabError(f"{ref.text}: W&B cannot resolve it ({str(e).splitlines()[0][:200]})") from None
        meta = dict(art.metadata or {})
        return ArtifactVersion(
            store="wandb",
            project=art.project,
            name=art.name.split(":")[0],
            type=art.type,
            version=art.version,
            aliases=list(art.aliases),
            digest=meta.get("tunelab_digest"),
            native_digest=art.digest,
            size_bytes=art.size,
            metadata=meta,
            producer_run=getattr(art.logged_by(), "name", None),
            created_at=str(art.created_at),
        )

    def download(self, version: ArtifactVersion, dest: Path) -> None:
        api = self._api(version.ref)
        api.artifact(f"{version.project}/{version.name}:{version.version}").download(root=str(dest))

    def versions(self, project: str | None = None) -> list[ArtifactVersion]:
        raise TunelabError("listing W&B artifacts needs the W&B web app or `wandb artifact ls` (online)")

    def push(self, spec: ArtifactSpec, project: str) -> ArtifactVersion:
        import wandb

        mode = wandb_mode(None)
        run = wandb.init(
            project=project,
            job_type="upload",
            name=f"upload-{spec.name}",
            dir=str(self.dir),
            settings=settings(mode, 30),
            reinit="create_new",
        )
        try:
            art = wandb.Artifact(spec.name, type=spec.type, metadata={**spec.metadata, "tunelab_digest": spec.digest})
            (art.add_dir if spec.path.is_dir() else art.add_file)(str(spec.path))
            run.log_artifact(art, aliases=list(dict.fromkeys(["latest", *spec.aliases])))
            sync_dir = run.settings.sync_dir
        finally:
            run.finish()
            # finish() can return before W&B's service has written the last records; teardown waits for it
            wandb.teardown()
        if mode == "online":
            art.wait(timeout=60)
        return ArtifactVersion(
            store="wandb",
            project=project,
            name=spec.name,
            type=spec.type,
            version=art.version if mode == "online" else "offline",  # numbered by `wandb sync`
            aliases=list(dict.fromkeys(["latest", *spec.aliases])),
            digest=spec.digest,
            native_digest=art.digest,
            metadata=spec.metadata,
            producer_run=str(sync_dir),
        )
