"""Reference schemas: what replaying the history to some heads produces, reflected and cached."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Collection, Sequence
from dataclasses import dataclass

import sqlalchemy as sa
from django.db import transaction

from dashboard.config import NotConfigured, Project, parse_database_url
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


# The reflected references, by key. What `alembic check` says is never cached: the models may
# come from code installed in the project's interpreter, which no digest of the files covers.
_cache: OrderedDict[Key, Reference] = OrderedDict()
_cache_lock = threading.Lock()
_key_locks: dict[Key, threading.Lock] = {}
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

    with_models replays anew (refreshing the cached reference) to run `alembic check` on the
    replayed database: callers ask it once per check of all environments, not per environment.
    Raises ReferenceUnavailable when no scratch server is configured for backend, and
    ReferenceFailed when the replay or the reflection failed.
    """
    key = key_for(project, found, heads, backend)
    if not key.heads:
        return Reference(key=key, metadata=sa.MetaData(), models=None), False  # base: no tables
    # Asked before the cache, so removing the scratch server from the config stops checks a
    # cached reference would still serve.
    scratch_server(project, backend)
    with _cache_lock:
        cached = None if with_models else _cache.get(key)
        if cached is not None:
            _cache.move_to_end(key)
            return cached, False
        lock = _key_locks.setdefault(key, threading.Lock())
    # One replay per key even when many environments at one revision are checked at once.
    try:
        with lock:
            if not with_models:
                with _cache_lock:
                    cached = _cache.get(key)
                if cached is not None:
                    return cached, False
            built = _build(project, found, key, with_models=with_models, drop_env=drop_env)
            with _cache_lock:
                _cache[key] = Reference(key=key, metadata=built.metadata, models=None)
                _cache.move_to_end(key)
                while len(_cache) > CACHE_SIZE:
                    _cache.popitem(last=False)
            return built, True
    finally:
        with _cache_lock:
            # A waiter still holding this lock object is fine: it finds the cache filled.
            if _key_locks.get(key) is lock and not lock.locked():
                del _key_locks[key]


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


def replay_version_schema(key: Key, url: str) -> str | None:
    """Return where a replay into the scratch database at url keeps its version table."""
    if key.backend == "mysql":
        # A MySQL schema is a database: the project's would be a database beside the scratch
        # one on the same server, perhaps the live environment's own version table.
        return parse_database_url(url).database
    return key.version_table_schema


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
            version_schema = replay_version_schema(key, url)
            if key.backend == "postgresql" and version_schema is not None:
                scratch.create_schema(url, version_schema)  # the scratch database has none
            with _cache_lock:
                replays += 1
            replay.replay(
                project,
                url,
                key.heads,
                approved=copy,
                time_limit=project.replay_time_limit,
                drop_env=drop_env,
                version_table_schema=version_schema,
            )
            metadata = schema.reflect(
                url, version_table=key.version_table, version_table_schema=version_schema
            )
            models = None
            if with_models:
                models = replay.check_models(
                    project,
                    url,
                    approved=copy,
                    time_limit=project.replay_time_limit,
                    drop_env=drop_env,
                    version_table_schema=version_schema,
                )
    except (RunnerError, scratch.ScratchError, bundle.BundleError) as exc:
        raise ReferenceFailed(str(exc)) from None
    except sa.exc.SQLAlchemyError as exc:
        raise ReferenceFailed(
            f"reading the reference schema failed: {type(exc).__name__}"
        ) from None
    return Reference(key=key, metadata=metadata, models=models)
