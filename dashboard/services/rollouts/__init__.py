"""Rollouts: one request and one approval for a fleet's members, run in waves."""

from dashboard.services.rollouts.decisions import (
    rollout_approve,
    rollout_cancel,
    rollout_pause,
    rollout_reject,
    rollout_resume,
)
from dashboard.services.rollouts.errors import RolloutNotFound, RolloutRefused
from dashboard.services.rollouts.requests import rollout_prepare, rollout_request
from dashboard.services.rollouts.waves import rollout_advance, rollouts_advance_running

__all__ = [
    "RolloutNotFound",
    "RolloutRefused",
    "rollout_advance",
    "rollout_approve",
    "rollout_cancel",
    "rollout_pause",
    "rollout_prepare",
    "rollout_reject",
    "rollout_request",
    "rollout_resume",
    "rollouts_advance_running",
]
