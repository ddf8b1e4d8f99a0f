"""The approved bytes: every file a run loads, stored by content and copied aside to run.

A request reads the files (never executing them) into a manifest {name: sha256} and stores
each file's bytes once per content in ApprovedFile; the manifest's digest is the plan's
fingerprint. The worker writes exactly those bytes into a private, read-only folder named by
that digest, verifies it, and points Alembic at it. Names in the manifest are the copy's
layout: "alembic.ini", "script/<file>" (env.py, the files beside it, script.py.mako) and
"versions/<n>/<path>" (the files of the n-th version location, subfolders kept).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
import secrets
import shutil
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path, PurePosixPath

from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from dashboard.config import Project
from dashboard.models import Action, ApprovedFile, Rollout
from dashboard.runner.process import ApprovedCopy
from dashboard.scripts.ini import read_settings
from dashboard.scripts.scan import RACY_NS, files_by_location, fingerprint_files

INI = "alembic.ini"
SCRIPT = "script"
VERSIONS = "versions"
TEMPLATE = "script.py.mako"
ROOT_PREFIX = "dashboard-approved-"  # + the user id: the default folder of private copies
READ_ATTEMPTS = 3
CHUNK = 500  # hashes per query, well under SQLite's limit of bound parameters
# A request stamps every row it relies on; no request takes this long, so a row stamped
# earlier than this is needed only by actions requested before then.
STORE_GRACE = timedelta(hours=1)

_DIGEST = re.compile(r"[0-9a-f]{64}")
_PARTIAL = re.compile(r"\.[0-9a-f]{64}\.(?P<pid>\d+)\.[0-9a-f]+")
_VERSIONS_NAME = re.compile(r"versions/(?P<index>0|[1-9][0-9]*)/.+")
# A `sqlalchemy.url = ...` or `sqlalchemy.url: ...` line of an ini (configparser lowercases
# keys), or the same commented out; group "keep" is all but its value.
_URL_LINE = re.compile(
    rb"(?P<keep>(?P<indent>[ \t]*)(?P<comment>[#;][ \t]*)?sqlalchemy\.url[ \t]*[=:])(?P<value>.*)",
    re.IGNORECASE,
)


class BundleError(Exception):
    """The approved files cannot be read, found or put in place exactly as approved."""


class CopyAltered(BundleError):
    """A private copy no longer holds exactly the approved bytes."""


class _ChangedWhileRead(Exception):
    """A file's stat moved between the scan and the read."""


@dataclass(frozen=True)
class Bundle:
    """Every file a run loads, by name and sha256, their bytes, and the scan they were read in."""

    manifest: dict[str, str]
    contents: dict[str, bytes]  # sha256 -> bytes
    revisions_stamp: str  # the revision files' stat fingerprint when they were read

    @property
    def digest(self) -> str:
        """Return the manifest's digest: the fingerprint a plan is bound to."""
        return manifest_digest(self.manifest)


def manifest_digest(manifest: dict[str, str]) -> str:
    """Return the sha256 of the manifest's canonical JSON."""
    text = json.dumps(manifest, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()


def bundle_read(project: Project) -> Bundle:
    """Read the bytes of every file a run of the project loads, without executing any."""
    for _ in range(READ_ATTEMPTS):
        try:
            return _read_once(project)
        except _ChangedWhileRead:
            continue
    raise BundleError(f"project {project.name}'s files kept changing while they were read")


def changed_names(before: dict[str, str], after: dict[str, str]) -> list[str]:
    """Return the names whose content differs, appeared or vanished between two manifests."""
    return sorted(
        name for name in before.keys() | after.keys() if before.get(name) != after.get(name)
    )


def bundle_store(bundle: Bundle) -> None:
    """Store each file's bytes once per content; call it in the transaction recording the action."""
    now = timezone.now()
    for chunk in _chunks(sorted(bundle.contents)):
        # Re-stamped, so the sweep's grace counts from the last request relying on a row; the
        # update also holds the rows against a sweep deleting them until this commits.
        ApprovedFile.objects.filter(sha256__in=chunk).update(created_at=now)
        present = set(
            ApprovedFile.objects.filter(sha256__in=chunk).values_list("sha256", flat=True)
        )
        ApprovedFile.objects.bulk_create(
            [
                ApprovedFile(sha256=sha, content=bundle.contents[sha], created_at=now)
                for sha in chunk
                if sha not in present
            ],
            ignore_conflicts=True,  # another request stored the same bytes meanwhile
        )


@contextlib.contextmanager
def approved_copy(*, manifest: dict[str, str], digest: str) -> Iterator[ApprovedCopy]:
    """Yield a verified private, read-only copy of exactly the approved bytes.

    The copy is made from the dashboard's database if this machine has none, reused if it
    has, and held against sweeping until the block ends. Raises BundleError (CopyAltered
    for a copy that no longer matches) before anything could run.
    """
    if not manifest:
        raise BundleError(
            "the action records no approved files (it was requested before they were"
            " recorded): request it again"
        )
    if manifest_digest(manifest) != digest:
        raise BundleError("the action's list of approved files does not match its fingerprint")
    _check_names(manifest)
    root = copies_root()
    fd = _acquire(root / f"{digest}.lock", exclusive=False, wait=True)
    if fd is None:  # a lock that waits is always taken
        raise BundleError(f"cannot lock the copy {digest}")
    try:
        folder = root / digest
        if not os.path.lexists(folder):
            _materialise(root, folder, manifest)
        try:
            verify_copy(folder, manifest)
        except CopyAltered:
            # Refused all the same; removed so that a later attempt copies the bytes afresh.
            with contextlib.suppress(OSError):
                _remove(folder)
            raise
        yield _described(folder, manifest)
    finally:
        os.close(fd)


def verify_copy(folder: Path, manifest: dict[str, str]) -> None:
    """Raise CopyAltered unless folder holds exactly the manifest's files, read-only and ours."""
    uid = os.geteuid()
    found: set[str] = set()
    try:
        _check_entry(folder, os.lstat(folder), uid, is_dir=True)
        for dirpath, dirnames, filenames in os.walk(folder):
            for name in dirnames:
                _check_entry(Path(dirpath, name), os.lstat(Path(dirpath, name)), uid, is_dir=True)
            for name in filenames:
                found.add(Path(dirpath, name).relative_to(folder).as_posix())
        extra = sorted(found - manifest.keys())
        missing = sorted(manifest.keys() - found)
        if extra or missing:
            raise CopyAltered(_altered(folder, extra and f"added {', '.join(extra[:5])}"
                                       or f"removed {', '.join(missing[:5])}"))  # fmt: skip
        for name, sha in sorted(manifest.items()):
            path = folder / name
            handle = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                _check_entry(path, os.fstat(handle), uid, is_dir=False)
                data = _read_all(handle)
            finally:
                os.close(handle)
            if hashlib.sha256(data).hexdigest() != sha:
                raise CopyAltered(_altered(folder, f"{name} holds other bytes"))
    except OSError as exc:
        raise CopyAltered(_altered(folder, str(exc))) from exc


def copies_root() -> Path:
    """Return this machine's folder of private copies, made closed to other users."""
    configured = getattr(settings, "DASHBOARD_APPROVED_DIR", "") or os.environ.get(
        "DASHBOARD_APPROVED_DIR", ""
    )
    if configured:
        root = Path(configured).absolute()
        root.parent.mkdir(parents=True, exist_ok=True)
    else:
        root = Path(tempfile.gettempdir()) / f"{ROOT_PREFIX}{os.geteuid()}"
    try:
        os.mkdir(root, 0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        raise BundleError(f"cannot make the folder of approved copies {root}: {exc}") from exc
    info = os.lstat(root)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
        # In a shared /tmp another user may have made it first, or left a link there.
        raise BundleError(f"{root} must be a folder of this user's, not a link, to hold copies")
    if stat.S_IMODE(info.st_mode) != 0o700:
        os.chmod(root, 0o700)
    return root


def copies_sweep(*, keep: Collection[str]) -> list[str]:
    """Remove the private copies whose digest is not in keep, unless a run holds them now."""
    root = copies_root()
    with os.scandir(root) as entries:
        names = sorted(entry.name for entry in entries)
    removed = []
    for name in names:
        partial = _PARTIAL.fullmatch(name)
        if partial is not None:
            # Half-written by a worker killed while copying.
            pid = int(partial["pid"])
            if pid != os.getpid() and not _alive(pid):
                _remove(root / name)
            continue
        digest = name.removesuffix(".lock")
        if not _DIGEST.fullmatch(digest) or digest in keep:
            continue
        if name != digest and digest in names:
            continue  # the lock file goes with its folder
        fd = _acquire(root / f"{digest}.lock", exclusive=True, wait=False)
        if fd is None:
            continue  # a run of another action with the same bytes uses it now
        try:
            if os.path.lexists(root / digest):
                _remove(root / digest)
                removed.append(digest)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(root / f"{digest}.lock")
        finally:
            os.close(fd)
    return removed


def copies_sweep_unneeded() -> list[str]:
    """Remove the private copies no unfinished action needs."""
    keep = set(
        Action.objects.exclude(status__in=Action.FINISHED).values_list("fingerprint", flat=True)
    )
    return copies_sweep(keep=keep)


def files_sweep(*, retention: timedelta) -> int:
    """Delete stored bytes no unfinished action needs and no action finished within retention.

    Returns how many files were deleted.
    """
    now = timezone.now()
    cutoff = now - max(retention, STORE_GRACE)
    candidates = list(
        ApprovedFile.objects.filter(created_at__lt=cutoff).values_list("pk", "sha256")
    )
    if not candidates:
        return 0
    # Rows a later request relied on were stamped after cutoff: only older requests count.
    needing = Action.objects.filter(created_at__lt=cutoff + STORE_GRACE).filter(
        ~Q(status__in=Action.FINISHED)
        | Q(finished_at__isnull=True)
        | Q(finished_at__gte=now - retention)
    )
    keep: set[str] = set()
    for manifest in needing.values_list("bundle", flat=True).iterator():
        keep.update((manifest or {}).values())
    # A rollout waiting for its approval has no member actions yet: its bytes stay too.
    for manifest in Rollout.objects.open().values_list("bundle", flat=True).iterator():
        keep.update((manifest or {}).values())
    stale = [pk for pk, sha in candidates if sha not in keep]
    deleted = 0
    for chunk in _chunks(stale):
        # A request stamping a row meanwhile makes it young again: then it stays.
        deleted += ApprovedFile.objects.filter(pk__in=chunk, created_at__lt=cutoff).delete()[0]
    return deleted


def approved_sweep(*, retention: timedelta) -> tuple[list[str], int]:
    """Sweep copies no unfinished action needs and stored bytes past their retention."""
    return copies_sweep_unneeded(), files_sweep(retention=retention)


def page_digest(project: Project) -> str:
    """Return the files' content digest for a page, re-reading only files whose stat moved.

    Pages (is this request's plan still current?) may trust timestamps; what runs never does:
    requests and runs use bundle_read, which reads every byte.
    """
    for _ in range(READ_ATTEMPTS):
        try:
            return manifest_digest(_read_once(project, cached=True).manifest)
        except _ChangedWhileRead:
            continue
    raise BundleError(f"project {project.name}'s files kept changing while they were read")


# (path, size, mtime_ns, inode) -> sha256, for page_digest alone.
_page_hashes: dict[tuple[str, int, int, int], str] = {}
_page_lock = threading.Lock()
PAGE_CACHE_MAX = 100_000


def _read_once(project: Project, *, cached: bool = False) -> Bundle:
    found = read_settings(project.script_location, alembic_ini=project.alembic_ini)
    manifest: dict[str, str] = {}
    contents: dict[str, bytes] = {}
    trusted_before = time.time_ns() - RACY_NS

    def add(
        name: str,
        path: str,
        size: int | None = None,
        mtime_ns: int | None = None,
        clean: Callable[[bytes], bytes] = bytes,
    ) -> None:
        if cached:
            info = os.stat(path)
            key = (path, info.st_size, info.st_mtime_ns, info.st_ino)
            with _page_lock:
                sha = _page_hashes.get(key)
            if sha is None:
                sha = hashlib.sha256(clean(_read_path(Path(path)))).hexdigest()
                # A file modified within the racy window may change again in the same tick.
                if info.st_mtime_ns < trusted_before:
                    with _page_lock:
                        if len(_page_hashes) >= PAGE_CACHE_MAX:
                            _page_hashes.clear()
                        _page_hashes[key] = sha
            manifest[name] = sha
            return
        data = clean(
            _read_path(Path(path))
            if size is None or mtime_ns is None
            else _read_scanned(path, size, mtime_ns)
        )
        sha = hashlib.sha256(data).hexdigest()
        manifest[name] = sha
        contents[sha] = data

    if project.alembic_ini is not None:
        add(INI, str(project.alembic_ini), clean=without_database_url)
    script = found.script_location
    beside = sorted(path for path in script.glob("*.py") if path.is_file())
    template = script / TEMPLATE
    for path in [*beside, *([template] if template.is_file() else [])]:
        add(f"{SCRIPT}/{path.name}", str(path))
    scanned = []
    for index, prefix, files in files_by_location(found):
        for f in files:
            add(f"{VERSIONS}/{index}/{f.relpath[len(prefix) :]}", f.path, f.size, f.mtime_ns)
            scanned.append(f)
    return Bundle(manifest=manifest, contents=contents, revisions_stamp=fingerprint_files(scanned))


def without_database_url(ini: bytes) -> bytes:
    """Return the ini with every sqlalchemy.url emptied: the run's own ini sets the URL.

    A password there (as Alembic's template invites) would otherwise be stored with the
    approved files and copied beside them. Continuation lines of the value go with it.
    """
    lines = ini.splitlines(keepends=True)
    kept: list[bytes] = []
    value_indent: int | None = None  # inside a value: the indent of its key
    for line in lines:
        text = line.rstrip(b"\r\n")
        stripped = text.strip()
        if value_indent is not None:
            indent = len(text) - len(text.lstrip())
            if stripped and not stripped.startswith((b"#", b";")) and indent > value_indent:
                continue  # a continuation line of the emptied value
            if stripped and not stripped.startswith((b"#", b";")):
                value_indent = None
        match = _URL_LINE.fullmatch(text)
        if match is None:
            kept.append(line)
            continue
        # Left byte for byte when already empty, so most files are stored as they are.
        kept.append(line if not match["value"].strip() else match["keep"] + line[len(text) :])
        if match["comment"] is None:
            value_indent = len(match["indent"])  # an empty value may go on below
    return b"".join(kept)


def _read_path(path: Path) -> bytes:
    handle = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return _read_all(handle)
    finally:
        os.close(handle)


def _read_scanned(path: str, size: int, mtime_ns: int) -> bytes:
    """Read a revision file, refusing bytes that are not those of the stat the scan saw."""
    handle = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        data = _read_all(handle)
        after = os.fstat(handle)
    finally:
        os.close(handle)
    if len(data) != size or (after.st_size, after.st_mtime_ns) != (size, mtime_ns):
        raise _ChangedWhileRead(path)
    return data


def _read_all(handle: int) -> bytes:
    parts = []
    while chunk := os.read(handle, 1 << 20):
        parts.append(chunk)
    return b"".join(parts)


def _check_names(manifest: dict[str, str]) -> None:
    """Refuse a manifest whose names could reach outside the copy or collide with its folders."""
    for name, sha in manifest.items():
        parts = PurePosixPath(name).parts
        safe = (
            name == PurePosixPath(name).as_posix()
            and not PurePosixPath(name).is_absolute()
            and all(part not in ("", ".", "..") and "\0" not in part for part in parts)
            and (
                name == INI
                or (len(parts) == 2 and parts[0] == SCRIPT)
                or _VERSIONS_NAME.fullmatch(name) is not None
            )
        )
        if not safe or not _DIGEST.fullmatch(sha):
            raise BundleError(f"the approved files name {name!r}, which is not a file of a copy")


def _materialise(root: Path, folder: Path, manifest: dict[str, str]) -> None:
    """Write the manifest's bytes from the database into folder, read-only."""
    contents = _fetch(set(manifest.values()))
    partial = root / f".{folder.name}.{os.getpid()}.{secrets.token_hex(4)}"
    os.mkdir(partial, 0o700)
    try:
        os.mkdir(partial / SCRIPT, 0o700)  # Alembic wants the script folder even if empty
        for name in sorted(manifest):
            path = partial / name
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            handle = os.open(path, flags, 0o600)
            try:
                view = memoryview(contents[manifest[name]])
                while view:
                    view = view[os.write(handle, view) :]
            finally:
                os.close(handle)
            os.chmod(path, 0o444)
        for dirpath, _dirs, _files in os.walk(partial, topdown=False):
            # Read-only, not open: the root around it is this user's alone (0700).
            os.chmod(dirpath, 0o555)  # noqa: S103
        try:
            os.rename(partial, folder)
        except OSError as exc:
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
            _remove(partial)  # another worker on this machine put the same copy in place
    except BaseException:
        with contextlib.suppress(OSError):
            _remove(partial)
        raise


def _fetch(hashes: set[str]) -> dict[str, bytes]:
    """Return the stored bytes of these hashes, each checked against its hash."""
    found: dict[str, bytes] = {}
    for chunk in _chunks(sorted(hashes)):
        rows = ApprovedFile.objects.filter(sha256__in=chunk).values_list("sha256", "content")
        for sha, content in rows:
            data = bytes(content)
            if hashlib.sha256(data).hexdigest() != sha:
                raise BundleError(f"the stored bytes of approved file {sha[:12]} are not theirs")
            found[sha] = data
    missing = sorted(hashes - found.keys())
    if missing:
        raise BundleError(
            f"{len(missing)} approved files are no longer stored (such as {missing[0][:12]}):"
            " request it again"
        )
    return found


def _described(folder: Path, manifest: dict[str, str]) -> ApprovedCopy:
    indexes = sorted(
        {int(match["index"]) for name in manifest if (match := _VERSIONS_NAME.fullmatch(name))}
    )
    # A location without files is left out, as Alembic skips one that does not exist.
    locations = tuple(folder / VERSIONS / str(index) for index in indexes or [0])
    return ApprovedCopy(
        folder=folder,
        script_location=folder / SCRIPT,
        version_locations=locations,
        alembic_ini=folder / INI if INI in manifest else None,
    )


def _check_entry(path: Path, info: os.stat_result, uid: int, *, is_dir: bool) -> None:
    kind_ok = stat.S_ISDIR(info.st_mode) if is_dir else stat.S_ISREG(info.st_mode)
    if not kind_ok:
        raise CopyAltered(_altered(path, "not a plain folder" if is_dir else "not a plain file"))
    if info.st_uid != uid or info.st_mode & 0o222:
        raise CopyAltered(_altered(path, "made writable or not this user's"))


def _altered(path: Path, detail: str) -> str:
    return f"the private copy of the approved files was altered ({path}: {detail})"


def _acquire(path: Path, *, exclusive: bool, wait: bool) -> int | None:
    """Lock path (shared or exclusive) and return its descriptor; None if busy and not waiting."""
    mode = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
    if not wait:
        mode |= fcntl.LOCK_NB
    while True:
        try:
            handle = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise BundleError(f"cannot lock {path}: {exc}") from exc
        try:
            fcntl.flock(handle, mode)
        except BlockingIOError:
            os.close(handle)
            return None
        except BaseException:
            os.close(handle)
            raise
        # A sweep may have removed the file between open and lock: lock the one there now.
        try:
            same = os.stat(path, follow_symlinks=False).st_ino == os.fstat(handle).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return handle
        os.close(handle)


def _remove(path: Path) -> None:
    """Delete a copy, making its read-only folders writable first."""
    if not os.path.lexists(path):
        return
    if path.is_symlink() or not path.is_dir():
        path.unlink()
        return
    for dirpath, _dirs, _files in os.walk(path):
        os.chmod(dirpath, 0o700)
    shutil.rmtree(path)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _chunks[T](items: Sequence[T]) -> Iterator[list[T]]:
    for start in range(0, len(items), CHUNK):
        yield list(items[start : start + CHUNK])
