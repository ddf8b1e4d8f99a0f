"""Why a rollout cannot be requested or decided as asked."""

from __future__ import annotations

from dashboard.services.actions.errors import ActionRefused


class RolloutRefused(ActionRefused):
    """A rollout cannot be requested, decided or steered as asked; the message says why."""


class RolloutNotFound(RolloutRefused):
    """No rollout has the id asked for."""
