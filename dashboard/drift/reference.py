"""Reference schemas: what replaying the history to some heads produces, reflected and cached."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Collection, Sequence
from dataclasses import dataclass

import sqlalchemy as sa
from django.db import transaction

from dashboard.config import NotConfigured, Project
from dashboard.databases import schema, scratch
from dashboard.runner import bundle, replay
from dashboard.runner.process import RunnerError

CACHE_SIZE = 64


class ReferenceUnavailable(Exception):
    """No reference can be built as configured (no scratch server): not an error, a reason."""


class ReferenceFailed(Exception):
    """Building the reference was tried and failed (the replay broke); the message says how."""


@dataclass(frozen=True)
class Key:
    """What a reference depends on: the files' content, the heads, the dialect, the version table."""

    fingerprint: str
    heads: tuple[str, ...]
    backend: str
    version_table: str
    version_table_schema: str | None


@dataclass(frozen=True)
class Reference:
    """A reflected reference schema, and what `alembic check` said at the heads (if asked)."""

    key: Key
    metadata: sa.MetaData
    models: replay.ModelsCheck | None


_cache: OrderedDict[tuple[Key, bool], Reference] = OrderedDict()
_cache_lock = threading.Lock()
_key_locks: dict[tuple[Key, bool], threading.Lock] = {}
replays = 0  # how many replays this process ran: the benchmark's "100 environments, 1 replay"


def key_for(project: Project, found: bundle.Bundle, heads: Sequence[str], backend: str) -> Key:
    """Return the cache key of the reference for heads on backend, from the files as read."""
    return Key(
        fingerprint=found.digest,
        heads=tuple(sorted(heads)),
        backend=backend,
        version_table=project.version_table,
        version_table_schema=project.version_table_schema,
    )


def reference_for(
    project: Project,
    found: bundle.Bundle,
    heads: Sequence[str],
    backend: str,
    *,
    with_models: bool = False,
    drop_env: Collection[str] = (),
) -> tuple[Reference, bool]:
    """Return the reference for heads on backend and whether this call replayed to build it.

    Raises ReferenceUnavailable when no scratch server is configured for backend, and
    ReferenceFailed when the replay or the reflection failed.
    """
    key = key_for(project, found, heads, backend)
    if not key.heads:
        return Reference(key=key, metadata=sa.MetaData(), models=None), False  # base: no tables
    # Asked before the cache, so removing the scratch server from the config stops checks a
    # cached reference would still serve.
    scratch_server(project, backend)
    slot = (key, with_models)
    with _cache_lock:
        cached = _cache.get(slot)
        if cached is not None:
            _cache.move_to_end(slot)
            return cached, False
        lock = _key_locks.setdefault(slot, threading.Lock())
    # One replay per key even when many environments at one revision are checked at once.
    with lock:
        with _cache_lock:
            cached = _cache.get(slot)
            if cached is not None:
                return cached, False
        built = _build(project, found, key, with_models=with_models, drop_env=drop_env)
        with _cache_lock:
            _cache[slot] = built
            while len(_cache) > CACHE_SIZE:
                _cache.popitem(last=False)
            _key_locks.pop(slot, None)
        return built, True


def forget() -> None:
    """Drop every cached reference (tests, and a config reload that moved scratch servers)."""
    global replays
    with _cache_lock:
        _cache.clear()
        replays = 0


def scratch_server(project: Project, backend: str) -> str | None:
    """Return the scratch server URL for backend, None for SQLite; raise ReferenceUnavailable."""
    if backend == "sqlite":
        return None
    try:
        url = project.scratch_database_url()
    except NotConfigured as exc:
        raise ReferenceUnavailable(str(exc)) from None
    if url is None:
        raise ReferenceUnavailable(
            f"no scratch server: set scratch_url or scratch_url_env in [projects.{project.name}]"
            f" to check {backend} environments"
        )
    if scratch.backend_of(url) != backend:
        raise ReferenceUnavailable(
            f"no scratch server for {backend}: project {project.name}'s is {scratch.backend_of(url)}"
        )
    return url


def _build(
    project: Project,
    found: bundle.Bundle,
    key: Key,
    *,
    with_models: bool,
    drop_env: Collection[str],
) -> Reference:
    global replays
    server = scratch_server(project, key.backend)
    with transaction.atomic():
        bundle.bundle_store(found)
    try:
        with (
            bundle.approved_copy(manifest=found.manifest, digest=found.digest) as copy,
            scratch.scratch_database(key.backend, server) as url,
        ):
            with _cache_lock:
                replays += 1
            replay.replay(
                project,
                url,
                key.heads,
                approved=copy,
                time_limit=project.replay_time_limit,
                drop_env=drop_env,
            )
            metadata = schema.reflect(
                url, version_table=key.version_table, version_table_schema=key.version_table_schema
            )
            models = None
            if with_models:
                models = replay.check_models(
                    project,
                    url,
                    approved=copy,
                    time_limit=project.replay_time_limit,
                    drop_env=drop_env,
                )
    except (RunnerError, scratch.ScratchError, bundle.BundleError) as exc:
        raise ReferenceFailed(str(exc)) from None
    except sa.exc.SQLAlchemyError as exc:
        raise ReferenceFailed(
            f"reading the reference schema failed: {type(exc).__name__}"
        ) from None
    return Reference(key=key, metadata=metadata, models=models)
