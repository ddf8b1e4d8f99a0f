"""Find the config, an environment or an action for the services, or refuse with the reason."""

from __future__ import annotations

from dashboard.config import ConfigError, DashboardConfig, Environment, Project, current_config
from dashboard.models import Action
from dashboard.services.actions.errors import (
    ActionNotFound,
    EnvironmentUnavailable,
    UnknownEnvironment,
)


def config_or_refuse() -> DashboardConfig:
    """Return the current config, or refuse when it cannot be read."""
    try:
        return current_config()
    except ConfigError as exc:
        raise EnvironmentUnavailable(f"the config cannot be read: {exc}") from exc


def environment_or_refuse(config: DashboardConfig, name: str) -> tuple[Environment, Project]:
    """Return the named environment and its project, or refuse naming the configured ones."""
    env = config.environments.get(name)
    if env is None:
        known = ", ".join(sorted(config.environments)) or "none"
        raise UnknownEnvironment(f"no environment named {name!r} (configured: {known})")
    return env, config.projects[env.project]


def action_or_refuse(action_id: int) -> Action:
    """Return the action, or refuse when there is none with that id."""
    action = Action.objects.filter(pk=action_id).first()
    if action is None:
        raise ActionNotFound(f"no action #{action_id}")
    return action


def locked_action_or_refuse(action_id: int) -> Action:
    """Return the action locked for update until the transaction ends, or refuse."""
    action = Action.objects.select_for_update().filter(pk=action_id).first()
    if action is None:
        raise ActionNotFound(f"no action #{action_id}")
    return action
