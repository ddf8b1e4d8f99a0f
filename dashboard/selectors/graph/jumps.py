"""Read the graph header's jump links: every environment and fleet, to the rows around its heads."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, replace

from django.urls import reverse

from dashboard.config import current_config
from dashboard.history import Graph
from dashboard.selectors.graph.links import SHORT_ID, _link, graph_url
from dashboard.selectors.graph.records import FleetGroup, FleetJump, Jump, RevisionLink
from dashboard.selectors.status import fleet_url, latest_of, revision_key

# A fleet's header line names its largest groups; the fleet page lists every member.
FLEET_GROUPS = 5


@dataclass(frozen=True)
class Header:
    """The header's environments and fleets, and every revision they sit at."""

    environments: list[Jump]
    fleets: list[FleetJump]
    revisions: frozenset[str]  # collapsing never hides these


def header(project: str, graph: Graph) -> Header:
    """Return the project's environments and fleets with links around the revisions they hold."""
    config = current_config()
    envs = config.environments_of(project)
    fleets = config.fleets_of(project)
    members = {fleet.name: config.members_of(fleet.name) for fleet in fleets}
    latest = latest_of([*envs, *(m for found in members.values() for m in found)])
    held: set[str] = set()
    jumps = []
    for env in envs:
        snapshot = latest.get(env.name)
        heads = list(snapshot.heads) if snapshot is not None else []
        known = [head for head in heads if head in graph.revisions]
        held.update(known)
        note = ""
        if snapshot is None:
            note = "not read yet"
        elif not heads:
            note = "no revision"
        elif len(known) < len(heads):
            missing = ", ".join(h[:SHORT_ID] for h in heads if h not in graph.revisions)
            note = f"at {missing}, which this history does not have"
        jumps.append(
            Jump(
                environment=env.name,
                state=snapshot.state if snapshot is not None else "unknown",
                state_label=snapshot.get_state_display() if snapshot is not None else "never read",
                url=reverse("environment", args=[env.name]),
                heads=[_around(project, graph, head) for head in known],
                note=note,
            )
        )
    summaries = []
    for fleet in fleets:
        counted: Counter[str] = Counter()
        unread = 0
        for member in members[fleet.name]:
            snapshot = latest.get(member.name)
            heads = [h for h in snapshot.heads if h in graph.revisions] if snapshot else []
            if not heads:
                unread += 1
                continue
            held.update(heads)
            counted[revision_key(heads)] += 1
        ordered = sorted(counted.items(), key=lambda item: (-item[1], item[0]))
        summaries.append(
            FleetJump(
                name=fleet.name,
                url=fleet_url(fleet.name),
                total=len(members[fleet.name]),
                groups=[
                    _group(project, fleet.name, key, count) for key, count in ordered[:FLEET_GROUPS]
                ],
                more=max(0, len(ordered) - FLEET_GROUPS),
                unread=unread,
            )
        )
    return Header(environments=jumps, fleets=summaries, revisions=frozenset(held))


def _around(project: str, graph: Graph, rev: str) -> RevisionLink:
    return replace(_link(project, graph, rev), graph_url=graph_url(project, around=rev))


def _group(project: str, fleet: str, key: str, count: int) -> FleetGroup:
    heads = key.split(",")
    return FleetGroup(
        count=count,
        short=" + ".join(head[:SHORT_ID] for head in heads),
        revision=heads[0],
        graph_url=graph_url(project, around=heads[0]),
        fleet_url=fleet_url(fleet, revision=key),
    )
