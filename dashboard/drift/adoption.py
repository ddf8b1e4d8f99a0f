"""Adopting Alembic: find the revision whose reference a database without a version table matches."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from dashboard.config import Environment, Project
from dashboard.databases import schema, scratch
from dashboard.drift import reference
from dashboard.history import Graph
from dashboard.runner import bundle

# Each candidate costs one replay the first time (cached after): the newest revisions first,
# since a create_all database was usually made from recent models.
MAX_CANDIDATES = 30
CLOSEST = 3


def match(
    project: Project,
    url: str,
    env: Environment,
    graph: Graph,
    *,
    drop_env: Collection[str] = (),
) -> dict[str, Any]:
    """Return {"exact": rev or None, "closest": [{revision, count, items}], "compared": n}."""
    # topological() runs from the heads to the bases: the newest revisions come first.
    candidates = graph.topological()[:MAX_CANDIDATES]
    found = bundle.bundle_read(project)
    backend = scratch.backend_of(url)
    scored: list[dict[str, Any]] = []
    for revision in candidates:
        ref, _replayed = reference.reference_for(
            project, found, [revision], backend, drop_env=drop_env
        )
        compared = schema.compare_live(
            url,
            ref.metadata,
            version_table=project.version_table,
            version_table_schema=project.version_table_schema,
            timeout=env.timeout,
            deadline=env.schema_timeout,
        )
        items = [d.as_dict() for d in compared.differences]
        scored.append({"revision": revision, "count": len(items), "items": items[:20]})
        if not items:
            break  # the newest exact match wins: later candidates are older
    scored.sort(key=lambda s: s["count"])
    exact = scored[0]["revision"] if scored and scored[0]["count"] == 0 else None
    return {
        "exact": exact,
        "closest": scored[:CLOSEST],
        "compared": len(scored),
        "of": len(graph.revisions),
    }
