"""Why an action cannot be requested or changed as asked: messages safe to show users."""

from __future__ import annotations

from collections.abc import Sequence

SCRIPT_CHANGED = "the script directory changed since this plan was made: request it again"


class ActionRefused(Exception):
    """The action cannot be requested or changed as asked; the message is safe to show."""


class NotAllowed(ActionRefused):
    """The user's role does not allow this."""


class SelfApproval(ActionRefused):
    """The requester tried to approve or reject their own action."""


class AlreadyDecided(ActionRefused):
    """This approver already approved or rejected the action."""


class WrongState(ActionRefused):
    """The action is not in a state that allows this."""


class NotPrepared(WrongState):
    """The plan's SQL is still being prepared, so there is nothing to review yet."""


class PlanChanged(ActionRefused):
    """The plan differs from the one reviewed, or the script directory changed since."""


class NothingToDo(ActionRefused):
    """The environment is already where the target would take it."""


class UnknownEnvironment(ActionRefused):
    """The config has no environment of that name."""


class EnvironmentUnavailable(ActionRefused):
    """The environment or its project's history cannot be read now."""


class UnknownTarget(ActionRefused):
    """The target names no revision, or several where one is needed."""


class NotReachable(ActionRefused):
    """The target cannot be reached from the current heads in that direction."""


class StampRefused(ActionRefused):
    """A stamp was asked of an environment that already has version rows, or behind an action."""


class AmbiguousTarget(ActionRefused):
    """Alembic would have to guess a branch; `proposals` are explicit targets to pick from."""

    def __init__(self, message: str, proposals: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.proposals = list(proposals)


class AmbiguousDowngrade(AmbiguousTarget):
    """A downgrade across a branch or merge point that Alembic would refuse as ambiguous."""


class ActionNotFound(ActionRefused):
    """No action has that id."""


class WouldBeStale(ActionRefused):
    """Another unfinished action will move the heads first; `ahead_id` is the one to queue behind."""

    def __init__(self, message: str, ahead_id: int | None = None) -> None:
        super().__init__(message)
        self.ahead_id = ahead_id
