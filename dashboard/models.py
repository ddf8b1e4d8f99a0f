"""The dashboard's own tables: snapshots, actions, rollouts, approvals, audit events, tokens."""

from __future__ import annotations

from collections.abc import Collection, Iterable
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import models
from django.db.models import Q


class Snapshot(models.Model):
    """What one read of an environment's version table found."""

    class State(models.TextChoices):
        CURRENT = "current", "current"  # heads equal the script directory's heads
        BEHIND = "behind", "behind"  # every head known, revisions pending
        UNINITIALIZED = "uninitialized", "uninitialized"  # no version table, or an empty one
        UNKNOWN = "unknown", "unknown"  # a head the script directory does not have
        UNREACHABLE = "unreachable", "unreachable"  # could not connect or read in time
        NOT_CONFIGURED = "not_configured", "not configured"  # its URL variable is unset
        INVALID = "invalid", "invalid history"  # heads known but the history cannot plan from them

    environment = models.CharField(max_length=100, db_index=True)
    project = models.CharField(max_length=100)
    heads = models.JSONField(default=list)
    state = models.CharField(max_length=20, choices=State.choices)
    pending = models.JSONField(default=list)
    # The script directory's heads when read: what "current" meant then.
    script_heads = models.JSONField(default=list)
    # Messages of the heads, script heads and pending revisions, as the history said then.
    messages = models.JSONField(default=dict)
    # Each head's branch labels, declared and inherited as Alembic assigns them: its branch.
    branch_labels = models.JSONField(default=dict)
    # Why the state is what it is, in a sentence ("no version table alembic_version").
    detail = models.TextField(blank=True)
    # The read's failure or the history's complaint; empty when the table was read and planned.
    error = models.TextField(blank=True)
    latency_ms = models.FloatField(null=True)
    read_at = models.DateTimeField()
    # The heads differ from the previous successful read's (the first successful read counts).
    changed = models.BooleanField(default=False)
    # Who held the environment's run lock when it was read ({} when nobody did).
    run_lock = models.JSONField(default=dict)

    class Meta:
        ordering = ["-read_at", "-id"]
        indexes = [models.Index(fields=["environment", "-read_at"], name="snapshot_env_read_at")]

    def __str__(self) -> str:
        return f"{self.environment} {self.state} at {self.read_at:%Y-%m-%d %H:%M:%S}"


class ActionQuerySet(models.QuerySet["Action"]):
    """Queries over actions that read as adjectives."""

    def awaiting_approval(self) -> ActionQuerySet:
        return self.filter(status=Action.Status.REQUESTED)

    def active(self) -> ActionQuerySet:
        return self.filter(status__in=Action.ACTIVE)

    def queued(self) -> ActionQuerySet:
        return self.filter(status=Action.Status.QUEUED)

    def running(self) -> ActionQuerySet:
        return self.filter(status=Action.Status.RUNNING)

    def silent_since(self, moment: datetime) -> ActionQuerySet:
        """Return running actions whose last heartbeat (or start) is older than moment."""
        return self.running().filter(
            Q(heartbeat_at__lt=moment) | Q(heartbeat_at__isnull=True, started_at__lt=moment)
        )

    def finished(self) -> ActionQuerySet:
        return self.filter(status__in=Action.FINISHED)


class Requested:
    """Who requested an action or a rollout: the account, and the name it was made under."""

    requested_by_id: int | None
    requested_by_name: str

    def requested_by_account(self, user: Any) -> bool:
        """Say whether this very account made the request (not a later one of its name)."""
        return self.requested_by_id is not None and self.requested_by_id == getattr(
            user, "pk", None
        )

    def may_be_requested_by(self, user: Any) -> bool:
        """Say whether the user may be the requester: the account, or the name it was made under."""
        # For refusals only (self-approval): being wrong here refuses, never permits.
        return self.requested_by_account(user) or self.requested_by_name == user.get_username()


class Action(Requested, models.Model):
    """A request to upgrade or downgrade one environment to a target, with its pinned plan."""

    class Status(models.TextChoices):
        REQUESTED = "requested", "requested"  # waiting for approvals
        APPROVED = "approved", "approved"  # enough approvals, not yet handed to the queue
        SCHEDULED = "scheduled", "scheduled"  # approved, waiting for its window (or run-at time)
        QUEUED = "queued", "queued"  # enqueued for a worker
        RUNNING = "running", "running"  # a worker runs Alembic now
        SUCCEEDED = "succeeded", "succeeded"  # exit 0 and the environment at the expected heads
        FAILED = "failed", "failed"  # Alembic failed, the plan was stale, or the heads were wrong
        INTERRUPTED = "interrupted", "interrupted"  # the worker died while running it
        REJECTED = "rejected", "rejected"  # an approver said no
        CANCELLED = "cancelled", "cancelled"  # withdrawn before or while it ran
        SUPERSEDED = "superseded", "superseded"  # its plan no longer holds; requested anew

    class Direction(models.TextChoices):
        UPGRADE = "upgrade", "upgrade"
        DOWNGRADE = "downgrade", "downgrade"
        STAMP = "stamp", "stamp"  # writes the version table only; runs no revision

    ACTIVE = (
        Status.REQUESTED,
        Status.APPROVED,
        Status.SCHEDULED,
        Status.QUEUED,
        Status.RUNNING,
    )
    FINISHED = (
        Status.SUCCEEDED,
        Status.FAILED,
        Status.INTERRUPTED,
        Status.REJECTED,
        Status.CANCELLED,
        Status.SUPERSEDED,
    )

    environment = models.CharField(max_length=100, db_index=True)
    project = models.CharField(max_length=100)
    direction = models.CharField(max_length=10, choices=Direction.choices)
    target = models.CharField(max_length=255)
    target_heads = models.JSONField(default=list)
    from_heads = models.JSONField(default=list)
    plan = models.JSONField(default=list)
    sql = models.TextField(blank=True)
    sql_sha256 = models.CharField(max_length=64, blank=True)
    sql_note = models.TextField(blank=True)
    lint = models.JSONField(default=list)
    fingerprint = models.CharField(max_length=64)
    plan_hash = models.CharField(max_length=64)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.REQUESTED)
    approvals_required = models.PositiveIntegerField(default=0)
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    requested_by_name = models.CharField(max_length=150)
    reason = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    decided_at = models.DateTimeField(null=True)
    queued_at = models.DateTimeField(null=True)
    started_at = models.DateTimeField(null=True)
    finished_at = models.DateTimeField(null=True)
    heartbeat_at = models.DateTimeField(null=True)
    after_heads = models.JSONField(null=True)
    error = models.TextField(blank=True)
    progress_done = models.PositiveIntegerField(default=0)
    progress_total = models.PositiveIntegerField(default=0)
    log = models.TextField(blank=True)
    task_id = models.CharField(max_length=64, blank=True)
    worker = models.CharField(max_length=255, blank=True)
    # When the offline SQL and its lint were stored (or sql_note says why there is none).
    prepared_at = models.DateTimeField(null=True)
    # Set on a running action; its worker polls it and terminates Alembic.
    cancel_requested = models.BooleanField(default=False)
    cancel_requested_by = models.CharField(max_length=150, blank=True)
    # The unfinished action this one was explicitly queued behind: it plans from that one's end.
    queued_behind = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    # Every file the run loads, as {name: sha256 of its bytes}; fingerprint is its digest.
    bundle = models.JSONField(default=dict)
    # What each plan revision's file says about how it runs, read statically at request time:
    # {revision: {"non_transactional": [why, ...], "limits": {"lock_timeout": "10min", ...}}}.
    plan_marks = models.JSONField(default=dict)
    # The sessions in the run's way (run lock holder, lock holders, old transactions), as last
    # seen by the worker while it waited or ran; blockers_at is when.
    blockers = models.JSONField(default=list)
    blockers_at = models.DateTimeField(null=True)
    # How many times the run was retried after a lock timeout rolled it back.
    retries = models.PositiveIntegerField(default=0)
    # Invalid indexes (PostgreSQL) found on the environment after a failed run.
    invalid_indexes = models.JSONField(default=list)
    # A fleet member's run: the rollout it belongs to and its wave there (1 is the first).
    rollout = models.ForeignKey(
        "Rollout", null=True, blank=True, on_delete=models.PROTECT, related_name="actions"
    )
    wave = models.PositiveSmallIntegerField(null=True)
    # The requester's chosen start ("run at"), inside one of the environment's windows.
    run_at = models.DateTimeField(null=True, blank=True)
    # When a scheduled action may start next (a window's opening or run_at), and why it waits.
    scheduled_for = models.DateTimeField(null=True, blank=True)
    schedule_note = models.TextField(blank=True)

    objects = ActionQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            # The database, not only a check, keeps two runs off one environment.
            models.UniqueConstraint(
                fields=["environment"],
                condition=Q(status="running"),
                name="one_running_action_per_environment",
            ),
            models.CheckConstraint(
                condition=Q(direction__in=["upgrade", "downgrade", "stamp"]),
                name="action_direction_valid",
            ),
        ]

    def __str__(self) -> str:
        return f"#{self.pk} {self.direction} {self.environment} to {self.target} ({self.status})"

    @property
    def is_finished(self) -> bool:
        return self.status in self.FINISHED

    @property
    def is_prepared(self) -> bool:
        """Say whether the plan's SQL (or the reason there is none) is ready for review."""
        return self.prepared_at is not None


class Approval(models.Model):
    """One approver's decision on one action, bound to the plan hash it saw."""

    class Decision(models.TextChoices):
        APPROVE = "approve", "approve"
        REJECT = "reject", "reject"

    action = models.ForeignKey(Action, on_delete=models.CASCADE, related_name="approvals")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    username = models.CharField(max_length=150)
    decision = models.CharField(max_length=10, choices=Decision.choices)
    comment = models.TextField(blank=True)
    plan_hash = models.CharField(max_length=64)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created_at", "id"]
        constraints = [
            # Each approver counts once per action.
            models.UniqueConstraint(
                fields=["action", "username"], name="one_decision_per_approver"
            ),
            # ...also after a rename: the account, not its name, is the approver.
            models.UniqueConstraint(
                fields=["action", "user"],
                condition=models.Q(user__isnull=False),
                name="one_decision_per_approver_account",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.username} {self.decision} #{self.action_id}"


class AuditEventQuerySet(models.QuerySet["AuditEvent"]):
    """Refuse bulk changes: the trail is append-only."""

    def update(self, **kwargs: Any) -> int:
        raise PermissionError("audit events cannot be changed")

    def delete(self) -> tuple[int, dict[str, int]]:
        raise PermissionError("audit events cannot be deleted")

    def bulk_create(
        self,
        objs: Iterable[Any],
        batch_size: int | None = None,
        ignore_conflicts: bool = False,
        update_conflicts: bool = False,
        update_fields: Collection[str] | None = None,
        unique_fields: Collection[str] | None = None,
    ) -> list[Any]:
        # Inserting is fine (tests make large trails); an upsert would rewrite old rows.
        if update_conflicts or update_fields:
            raise PermissionError("audit events cannot be changed")
        return super().bulk_create(objs, batch_size=batch_size, ignore_conflicts=ignore_conflicts)


class AuditEvent(models.Model):
    """One append-only, hash-chained record of something that happened."""

    created_at = models.DateTimeField()
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    actor_name = models.CharField(max_length=150)
    verb = models.CharField(max_length=64, db_index=True)
    environment = models.CharField(max_length=100, blank=True, db_index=True)
    # A plain id, not a foreign key: deleting an action must never rewrite the trail.
    action_id = models.PositiveBigIntegerField(null=True, db_index=True)
    payload = models.JSONField(default=dict)
    ip = models.GenericIPAddressField(null=True)
    user_agent = models.CharField(max_length=512, blank=True)
    # Unique, so two concurrent writers cannot both extend the same link: one retries.
    prev_hash = models.CharField(max_length=64, unique=True)
    hash = models.CharField(max_length=64, unique=True)

    objects = AuditEventQuerySet.as_manager()

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return f"{self.created_at:%Y-%m-%d %H:%M:%S} {self.actor_name} {self.verb}"

    def save(self, *args: Any, **kwargs: Any) -> None:
        if self.pk is not None:
            raise PermissionError("audit events cannot be changed")
        super().save(*args, **kwargs)

    def delete(self, *args: Any, **kwargs: Any) -> tuple[int, dict[str, int]]:
        raise PermissionError("audit events cannot be deleted")


class ApprovedFile(models.Model):
    """The exact bytes of one file an action's run loads, stored once per content."""

    sha256 = models.CharField(max_length=64, unique=True)
    content = models.BinaryField()
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"{self.sha256[:12]} ({len(self.content)} bytes)"


class WorkerBeat(models.Model):
    """When a worker process was last seen alive, so pages can tell that none is."""

    name = models.CharField(max_length=255, unique=True)  # host:pid, as on the actions it runs
    started_at = models.DateTimeField()
    seen_at = models.DateTimeField(db_index=True)

    def __str__(self) -> str:
        return f"{self.name} seen {self.seen_at:%Y-%m-%d %H:%M:%S}"


class ApiToken(models.Model):
    """A read-only bearer token for CI, stored as its sha256."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens"
    )
    name = models.CharField(max_length=100, blank=True)
    prefix = models.CharField(max_length=12)
    key_hash = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True)

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.user})"


class SSOIdentity(models.Model):
    """The provider's account (issuer, subject) an account signs in as; never matched by name."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="sso_identities"
    )
    issuer = models.CharField(max_length=255)
    subject = models.CharField(max_length=255)  # OpenID Connect Core 2: sub is at most 255
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["issuer", "subject"], name="sso_identity_one_per_sub")
        ]

    def __str__(self) -> str:
        return f"{self.issuer} {self.subject} -> {self.user_id}"


class SignInThrottle(models.Model):
    """Failed sign-ins counted for one username from one address, or for one whole address."""

    class Scope(models.TextChoices):
        USER = "user"  # one username from one address: one person's typos, or a guesser
        ADDRESS = "address"  # every username from one address: an office, a proxy, a sprayer

    scope = models.CharField(max_length=7, choices=Scope.choices)
    username = models.CharField(max_length=150, blank=True)  # "" for the whole address
    # An IPv4 address or an IPv6 /64 (one host owns a whole /64); "" when the server gave none.
    address = models.CharField(max_length=64, blank=True)
    failures = models.PositiveIntegerField(default=0)
    blocked_until = models.DateTimeField(null=True)
    # After this the failures are forgotten and the row may be swept.
    forget_at = models.DateTimeField(db_index=True)
    # The tally of the current block's refusals; None until the first refusal records it.
    refusals = models.ForeignKey(
        "SignInRefusals", null=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["scope", "username", "address"], name="signin_throttle_one_row_per_key"
            )
        ]

    def __str__(self) -> str:
        return f"{self.scope} {self.username}@{self.address}: {self.failures} failures"


class SignInRefusals(models.Model):
    """How often one block refused a sign-in: its audit event records the first refusal only."""

    # Mutable, unlike the event: the append-only trail gets one row per block, not one per try.
    event = models.OneToOneField(AuditEvent, on_delete=models.PROTECT, related_name="refusals")
    count = models.PositiveIntegerField(default=1)
    last_at = models.DateTimeField()
    until = models.DateTimeField()  # when the block ended (or ends)

    def __str__(self) -> str:
        return f"{self.count} refusals under audit event {self.event_id}"


class SchemaCheck(models.Model):
    """One comparison of an environment's live schema with the reference its heads produce."""

    class State(models.TextChoices):
        PENDING = "pending", "checking"  # asked for; a worker has not finished it yet
        IN_SYNC = "in_sync", "in sync"  # no difference from the reference schema
        DRIFT = "drift", "drift"  # the live schema differs from the reference
        NOT_CHECKED = "not_checked", "not checked"  # cannot be checked as configured (reason)
        FAILED = "check_failed", "check failed"  # the check was tried and broke (reason)

    class Trigger(models.TextChoices):
        PERIODIC = "periodic", "periodic"
        ACTION = "action", "after an action"
        DEMAND = "demand", "on demand"
        COMMAND = "command", "command line"

    environment = models.CharField(max_length=100, db_index=True)
    project = models.CharField(max_length=100)
    state = models.CharField(max_length=20, choices=State.choices, default=State.PENDING)
    trigger = models.CharField(max_length=20, choices=Trigger.choices)
    requested_by = models.CharField(max_length=150, blank=True)
    # The environment's heads the reference was built for, and the script directory's digest.
    heads = models.JSONField(default=list)
    fingerprint = models.CharField(max_length=64, blank=True)
    # Each difference as {kind, table, name, detail}; kind is Alembic's operation name.
    differences = models.JSONField(default=list)
    reason = models.TextField(blank=True)
    # `alembic check` of the models against the reference at the heads (check_models only).
    models_state = models.CharField(max_length=20, blank=True)
    models_differences = models.JSONField(default=list)
    models_reason = models.TextField(blank=True)
    # The live schema as read, table by table, for the environment page.
    live_schema = models.JSONField(default=dict)
    # For a database with tables but no version table: the revisions it matches.
    adoption = models.JSONField(default=dict)
    replayed = models.BooleanField(default=False)  # this check built its reference (cache miss)
    created_at = models.DateTimeField(auto_now_add=True)
    checked_at = models.DateTimeField(null=True)
    duration_ms = models.FloatField(null=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            # The latest finished check per environment, for every overview.
            models.Index(fields=["environment", "-checked_at"], name="schemacheck_env_checked")
        ]

    def __str__(self) -> str:
        return f"{self.environment} schema {self.state}"

    @property
    def is_finished(self) -> bool:
        return self.state != self.State.PENDING


class FleetMember(models.Model):
    """A member of a fleet whose members a query finds, as the worker last discovered it."""

    fleet = models.CharField(max_length=100)
    name = models.CharField(max_length=100)
    discovered_at = models.DateTimeField()

    class Meta:
        ordering = ["fleet", "name"]
        constraints = [
            models.UniqueConstraint(fields=["fleet", "name"], name="one_member_per_name"),
        ]

    def __str__(self) -> str:
        return f"{self.fleet}/{self.name}"


class FleetDiscovery(models.Model):
    """When a fleet's members were last looked for, and why that failed (blank when it worked)."""

    fleet = models.CharField(max_length=100, unique=True)
    looked_at = models.DateTimeField()
    error = models.TextField(blank=True)
    members = models.PositiveIntegerField(default=0)

    def __str__(self) -> str:
        return f"{self.fleet} discovered at {self.looked_at:%Y-%m-%d %H:%M:%S}"


class RolloutQuerySet(models.QuerySet["Rollout"]):
    """Queries over rollouts that read as adjectives."""

    def open(self) -> RolloutQuerySet:
        return self.filter(status__in=Rollout.OPEN)

    def running(self) -> RolloutQuerySet:
        return self.filter(status=Rollout.Status.RUNNING)


class Rollout(Requested, models.Model):
    """One change to a fleet (or part of one): one request, one approval, members in waves."""

    class Status(models.TextChoices):
        PREPARING = "preparing", "preparing"  # the groups' SQL is being rendered
        REQUESTED = "requested", "requested"  # waiting for approvals
        RUNNING = "running", "running"  # approved; members run wave after wave
        PAUSED = "paused", "paused"  # a member failed (on_error = pause) or an operator paused it
        SUCCEEDED = "succeeded", "succeeded"  # every member succeeded or was skipped
        FAILED = "failed", "failed"  # it ended with failed members, or could not be prepared
        REJECTED = "rejected", "rejected"  # an approver said no
        CANCELLED = "cancelled", "cancelled"  # stopped by an operator; started members finished

    OPEN = (Status.PREPARING, Status.REQUESTED, Status.RUNNING, Status.PAUSED)
    FINISHED = (Status.SUCCEEDED, Status.FAILED, Status.REJECTED, Status.CANCELLED)

    fleet = models.CharField(max_length=100, db_index=True)
    project = models.CharField(max_length=100)
    direction = models.CharField(max_length=10)
    target = models.CharField(max_length=255)
    # The fnmatch pattern that chose the members ("*" for all of them).
    members_glob = models.CharField(max_length=200, default="*")
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.PREPARING)
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    requested_by_name = models.CharField(max_length=150)
    reason = models.TextField(blank=True)
    # Members by plan: [{"members": [...], "from_heads", "target_heads", "plan", "plan_marks",
    # "sql", "sql_sha256", "sql_note", "lint"}]; the SQL is rendered once per group.
    groups = models.JSONField(default=list)
    # Members that matched but will not run, with why: [{"member", "reason"}].
    left_out = models.JSONField(default=list)
    # The wave sizes as members (e.g. [1, 19, 180]) and the waves as configured ([1, "10%"]).
    wave_sizes = models.JSONField(default=list)
    waves = models.JSONField(default=list)
    parallel = models.PositiveIntegerField(default=1)
    on_error = models.CharField(max_length=10, default="pause")
    current_wave = models.PositiveSmallIntegerField(default=0)
    # Failed members an operator chose to skip when resuming: they no longer hold it up.
    skipped = models.JSONField(default=list)
    # Every approved file's sha256 and their digest, like an action's bundle and fingerprint.
    bundle = models.JSONField(default=dict)
    fingerprint = models.CharField(max_length=64)
    # What approvers vouch for: the groups, their SQL and members, the target and the files.
    rollout_hash = models.CharField(max_length=64, blank=True)
    approvals_required = models.PositiveIntegerField(default=0)
    paused_reason = models.TextField(blank=True)
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    prepared_at = models.DateTimeField(null=True)
    decided_at = models.DateTimeField(null=True)
    started_at = models.DateTimeField(null=True)
    finished_at = models.DateTimeField(null=True)

    objects = RolloutQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"rollout #{self.pk} {self.direction} {self.fleet} to {self.target} ({self.status})"

    @property
    def is_finished(self) -> bool:
        return self.status in self.FINISHED

    @property
    def member_count(self) -> int:
        return sum(len(group["members"]) for group in self.groups)


class RolloutApproval(models.Model):
    """One approver's decision on one rollout, bound to the rollout hash it saw."""

    rollout = models.ForeignKey(Rollout, on_delete=models.CASCADE, related_name="approvals")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    username = models.CharField(max_length=150)
    decision = models.CharField(max_length=10, choices=Approval.Decision.choices)
    comment = models.TextField(blank=True)
    rollout_hash = models.CharField(max_length=64)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created_at", "id"]
        constraints = [
            models.UniqueConstraint(
                fields=["rollout", "username"], name="one_decision_per_rollout_approver"
            ),
            models.UniqueConstraint(
                fields=["rollout", "user"],
                condition=models.Q(user__isnull=False),
                name="one_decision_per_rollout_account",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.username} {self.decision} rollout #{self.rollout_id}"


class RevisionRun(models.Model):
    """How long one revision took in one environment and direction, from the runner's lines."""

    class Outcome(models.TextChoices):
        SUCCEEDED = "succeeded", "succeeded"
        FAILED = "failed", "failed"
        INTERRUPTED = "interrupted", "interrupted"
        CANCELLED = "cancelled", "cancelled"
        RETRIED = "retried", "retried"  # rolled back by a lock timeout and run again

    action = models.ForeignKey(Action, on_delete=models.CASCADE, related_name="revision_runs")
    environment = models.CharField(max_length=100)
    project = models.CharField(max_length=100)
    revision = models.CharField(max_length=255)
    direction = models.CharField(max_length=10)
    attempt = models.PositiveSmallIntegerField(default=1)
    started_at = models.DateTimeField()
    finished_at = models.DateTimeField()
    duration_s = models.FloatField()
    outcome = models.CharField(max_length=20, choices=Outcome.choices)

    class Meta:
        ordering = ["-started_at", "-id"]
        indexes = [
            models.Index(fields=["project", "revision", "direction"], name="revisionrun_revision"),
            models.Index(fields=["environment", "-started_at"], name="revisionrun_env_started"),
        ]

    def __str__(self) -> str:
        return f"{self.environment} {self.direction} {self.revision} {self.duration_s:.1f} s"


class NotificationDelivery(models.Model):
    """One notification for one receiver: the body sent, each attempt's outcome."""

    class Status(models.TextChoices):
        PENDING = "pending", "pending"  # not tried yet, or waiting for its next attempt
        DELIVERED = "delivered", "delivered"  # the receiver answered 2xx
        FAILED = "failed", "failed"  # every attempt failed; given up

    notifier = models.CharField(max_length=100)
    event = models.CharField(max_length=40)
    # What the event is about, so one event reaches one receiver once.
    dedupe_key = models.CharField(max_length=200)
    environment = models.CharField(max_length=100, blank=True)
    action_id = models.PositiveBigIntegerField(null=True)
    rollout_id = models.PositiveBigIntegerField(null=True)
    # The exact body posted: never a URL, a secret or SQL.
    body = models.TextField()
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveSmallIntegerField(default=0)
    response_status = models.PositiveSmallIntegerField(null=True)
    last_error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    next_attempt_at = models.DateTimeField(null=True)
    delivered_at = models.DateTimeField(null=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["notifier", "dedupe_key"], name="one_delivery_per_notifier_and_event"
            )
        ]
        indexes = [
            models.Index(fields=["status", "next_attempt_at"], name="delivery_status_next"),
        ]

    def __str__(self) -> str:
        return f"{self.notifier} {self.event} ({self.status})"


class HistoryCheck(models.Model):
    """Whether Alembic itself could load a project's history, as a worker last checked."""

    project = models.CharField(max_length=100, unique=True)
    fingerprint = models.CharField(max_length=64, blank=True)
    ok = models.BooleanField()
    # The first failure: the file, its line and Alembic's error (blank when ok).
    file = models.CharField(max_length=500, blank=True)
    line = models.PositiveIntegerField(null=True)
    error = models.TextField(blank=True)
    checked_at = models.DateTimeField()

    def __str__(self) -> str:
        return f"{self.project} history {'loads' if self.ok else 'fails'}"
