"""The overview: every configured project and its environments."""

from __future__ import annotations

from dataclasses import dataclass

from dashboard.config import ConfigError, NotConfigured, current_config


@dataclass(frozen=True)
class EnvironmentRow:
    """One environment as the overview shows it."""

    name: str
    description: str
    approvals_required: int
    problem: str | None


@dataclass(frozen=True)
class ProjectRow:
    """One project and its environments, in display order."""

    name: str
    description: str
    script_location: str
    environments: list[EnvironmentRow]


@dataclass(frozen=True)
class Overview:
    """Everything the overview page shows, or why the config cannot be read."""

    projects: list[ProjectRow]
    config_error: str | None


def overview() -> Overview:
    """Return the configured projects and environments."""
    try:
        config = current_config()
    except ConfigError as exc:
        return Overview(projects=[], config_error=str(exc))
    rows = []
    for project in sorted(config.projects.values(), key=lambda p: p.name):
        envs = []
        for env in config.environments_of(project.name):
            try:
                env.database_url()
                problem = None
            except NotConfigured as exc:
                problem = str(exc)
            envs.append(
                EnvironmentRow(
                    name=env.name,
                    description=env.description,
                    approvals_required=env.approvals_required,
                    problem=problem,
                )
            )
        rows.append(
            ProjectRow(
                name=project.name,
                description=project.description,
                script_location=str(project.script_location),
                environments=envs,
            )
        )
    return Overview(projects=rows, config_error=None)
