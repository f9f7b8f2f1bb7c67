"""Resolving references in the stores and fetching their files into a digest-checked cache.

`fetch` downloads a version's files once into `<home>/artifact-cache/<name>-<digest>/` (the
rename is the commit point) and checks the content digest every time the copy is used.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from tunelab.artifacts.core import ArtifactVersion, Home, Resolved, content_digest, parse
from tunelab.artifacts.env import isolated, prepare
from tunelab.errors import TunelabError
from tunelab.refs import STORES


def store_for(store: str, home: Home):
    """The artifact store of one backend in `home`."""
    d = prepare(home.dir)
    if store == "trackio":
        from tunelab.artifacts.trackio_store import TrackioStore

        return TrackioStore(d)
    if store == "wandb":
        from tunelab.artifacts.wandb_store import WandbStore

        return WandbStore(d)
    if store == "mlflow":
        from tunelab.artifacts.mlflow_store import MlflowStore

        return MlflowStore(d, home.mlflow_uri)
    raise TunelabError(f"{store}: has no artifact store (artifact stores: {', '.join(STORES)})")


def resolve(text: str, home: Home, expected_type: str | None = None) -> tuple[Any, ArtifactVersion]:
    """(store, version) for a reference; unknown names, versions, aliases and wrong types are user errors."""
    ref = parse(text).in_project(home.project)
    with isolated(home.dir):
        store = store_for(ref.store, home)
        version = store.get(ref)
    if expected_type and version.type != expected_type:
        raise TunelabError(f"{text}: is a {version.type} artifact, not a {expected_type}")
    return store, version


def fetch(text: str, home: Home, expected_type: str | None = None) -> Resolved:
    """Resolve a reference and return its files, downloaded once and cached by content digest.

    The cached copy is checked against the version's digest every time it is used (cheap next to
    training on it): a copy edited or truncated since it was downloaded is fetched again, so what a
    run reads, and records in lineage.json, is what the store holds.
    """
    store, v = resolve(text, home, expected_type)
    key = (v.digest or v.native_digest or f"{v.store}-{v.project}-{v.version}")[:16]
    cache = Path(home.dir).resolve() / "artifact-cache" / f"{v.name}-{key}"
    read = content_digest(cache) if cache.is_dir() and v.digest else None
    if read is not None and read != v.digest:
        stale = cache.with_name(cache.name + ".stale")
        shutil.rmtree(stale, ignore_errors=True)
        cache.rename(stale)
        shutil.rmtree(stale, ignore_errors=True)
        read = None
    if not cache.is_dir():
        tmp = cache.with_name(cache.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            tmp.mkdir(parents=True)
            with isolated(home.dir):
                store.download(v, tmp)
        except TunelabError:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        except Exception as e:  # noqa: BLE001 - the store lost its copy, or the disk is full
            shutil.rmtree(tmp, ignore_errors=True)
            from tunelab.errors import as_user_error

            err = as_user_error(e)
            raise err or TunelabError(
                f"{text}: the store could not hand out its files ({type(e).__name__}: "
                f"{(str(e).splitlines() or [''])[0][:200]})"
            ) from None
        read = content_digest(tmp) if v.digest else None
        if v.digest and read != v.digest:
            shutil.rmtree(tmp, ignore_errors=True)
            raise TunelabError(
                f"{text}: the store's files do not match the recorded digest {v.digest[:12]}",
                hint="the stored copy was changed after it was logged; push the data again",
            )
        tmp.rename(cache)
    return Resolved(v, cache, text, read)
