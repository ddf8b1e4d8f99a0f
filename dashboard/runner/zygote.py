"""A fork server per worker that imports Alembic once and forks a process for each run.

The worker side (ForkServers, ForkedRun) runs in the dashboard. The server side (serve and
the functions after it) is this file's own source run as `python [-P] -c <source> <fd>` in the
project's interpreter, so it imports nothing but the standard library before Alembic.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import gc
import importlib
import json
import logging
import os
import queue
import select
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
import types
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

logger = logging.getLogger(__name__)

SETTING = "DASHBOARD_ALEMBIC_ZYGOTE"  # "0" starts a fresh interpreter for every run
MAX_SERVERS = 4  # per worker; an idle one gives way to a new interpreter or environment
READY_TIMEOUT = 120.0  # seconds for a new server to import Alembic (a cold disk is slow)
SPAWN_TIMEOUT = 60.0  # seconds for a server to report the process it forked
SYNC_TIMEOUT = 10.0  # seconds for a forked process to take its own session
# Imported before the switch to a fresh bytecode folder, like `from alembic.config import main`
# in the runner's interpreter: installed packages are the deployment's.
PRELOAD = ("alembic", "alembic.config", "alembic.command", "sqlalchemy", "logging.config")
OPTIONAL_PRELOAD = (
    "psycopg2",
    "psycopg2.extensions",
    "psycopg2.extras",
    "psycopg",
    "pymysql",
    "sqlalchemy.dialects.sqlite",
    "sqlalchemy.dialects.postgresql",
    "sqlalchemy.dialects.mysql",
    "sqlite3",
)
# Variables an interpreter or the preloaded packages read once, at start or import: a server
# serves only runs whose environment has the same values. None of them is a secret, and each
# is in the environment of every run the server forks, so the server holds nothing a child
# would not get.
STARTUP_PREFIXES = ("PYTHON", "LC_", "LD_", "MALLOC_", "OPENSSL_", "SSL_CERT_")
STARTUP_NAMES = frozenset(
    {
        "LANG",
        "LANGUAGE",
        "HOME",  # the user site-packages folder
        "PATH",
        "TMPDIR",
        "TEMP",
        "TMP",
        "TZ",
        "GLIBC_TUNABLES",
        "DISABLE_SQLALCHEMY_CEXT_RUNTIME",
        "PSYCOPG_IMPL",
    }
)
# Padding in the server's own environment: a forked run writes its environment over this room
# so that /proc/<pid>/environ (and `ps e`) show the run's variables, as an exec'd child's would.
ROOM_VARIABLE = "DASHBOARD_ALEMBIC_ROOM"
MIN_ROOM, MAX_ROOM = 16 * 1024, 120 * 1024  # one variable holds at most 128 KiB
PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4

_SUPPORTED = (
    sys.platform.startswith("linux")
    and all(hasattr(os, name) for name in ("fork", "pidfd_open", "memfd_create", "waitid"))
    and hasattr(socket, "send_fds")
)


class Unavailable(Exception):
    """No fork server can take this run; nothing of it has started."""


class ServerFailed(Exception):
    """A fork server broke after the run was handed to it; the run may have started."""


def enabled() -> bool:
    """Say whether runs may go through a fork server (Linux, unless the setting says 0)."""
    value = os.environ.get(SETTING, "1").strip().lower()
    return _SUPPORTED and value not in {"0", "false", "no", "off"}


def startup_environment(env: Mapping[str, str]) -> dict[str, str]:
    """Return the variables of env a new interpreter or the preloaded packages read at once."""
    return {
        name: value
        for name, value in env.items()
        if name in STARTUP_NAMES or name.startswith(STARTUP_PREFIXES)
    }


@dataclass(frozen=True)
class Run:
    """One Alembic command for a fork server: what `python [-P] -c` would have been given."""

    python: str
    safe_path: bool  # -P: the working directory is not put on sys.path
    arguments: list[str]  # Alembic's own: -c <ini> <command> ...
    pycache_prefix: str  # fresh and empty: what the run imports after Alembic is compiled anew
    env: dict[str, str]
    cwd: str
    command_line: list[str]  # what /proc/<pid>/cmdline and `ps` show for the run


@dataclass(frozen=True)
class _Key:
    python: str
    safe_path: bool
    startup: tuple[tuple[str, str], ...]


class ForkedRun:
    """A run's process, forked by a fork server, watched the way a Popen is."""

    def __init__(
        self, pid: int, channel: socket.socket, pidfd: int | None, released: Callable[[], None]
    ) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self._channel = channel
        self._pidfd = pidfd
        self._released: Callable[[], None] | None = released
        self._orphaned = False  # the server ended first; the kernel killed the run (PDEATHSIG)

    def fileno(self) -> int:
        """Return a descriptor that becomes readable once the server reports the exit."""
        return self._channel.fileno()

    def poll(self) -> int | None:
        """Return the exit status if the run has ended (negative: the signal that ended it)."""
        if self.returncode is None:
            self._read(block=False)
        return self.returncode

    def wait(self) -> int:
        """Wait for the run to end, then let the server reap it; return its exit status."""
        while self.returncode is None:
            self._read(block=True)
        self._release()
        return self.returncode

    def _read(self, *, block: bool) -> None:
        if self._orphaned:
            self._wait_orphan(block=block)
            return
        self._channel.setblocking(block)
        try:
            data = self._channel.recv(4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            self.returncode = int(json.loads(data)["returncode"])
            return
        # The server died: PR_SET_PDEATHSIG kills the run; make sure of it through its pidfd,
        # which (opened while the server kept the pid unreaped) cannot name another process.
        self._orphaned = True
        if self._pidfd is not None:
            with contextlib.suppress(OSError):
                signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)
        self._wait_orphan(block=block)

    def _wait_orphan(self, *, block: bool) -> None:
        if self._pidfd is not None:
            ready, _, _ = select.select([self._pidfd], [], [], None if block else 0)
            if not ready:
                return
        self.returncode = -signal.SIGKILL

    def _release(self) -> None:
        self._channel.close()
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None
        if self._released is not None:
            self._released()
            self._released = None


@dataclass(eq=False)
class _Server:
    key: _Key
    proc: subprocess.Popen[bytes]
    control: socket.socket
    active: int = 0
    last_used: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def spawn(self, run: Run, *, stdout: int, stderr: int) -> ForkedRun:
        request = {
            "arguments": run.arguments,
            "pycache_prefix": run.pycache_prefix,
            "env": run.env,
            "cwd": run.cwd,
            "command_line": run.command_line,
        }
        # The request (the run's environment, its URL among them) goes to the forked process in
        # a memory file the server passes on unread: the server never holds a run's secrets.
        memfd = os.memfd_create("dashboard-alembic-run", os.MFD_CLOEXEC)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            data = memoryview(json.dumps(request).encode())
            while data:
                data = data[os.write(memfd, data) :]
            try:
                socket.send_fds(self.control, [b"run"], [theirs.fileno(), memfd, stdout, stderr])
            except OSError as exc:
                ours.close()
                raise Unavailable(f"the fork server (pid {self.proc.pid}) is gone: {exc}") from exc
        finally:
            theirs.close()
            os.close(memfd)
        ours.settimeout(SPAWN_TIMEOUT)
        try:
            reply = ours.recv(4096)
        except TimeoutError as exc:
            ours.close()
            self.proc.kill()  # stuck: its runs end with it, and the next use starts a new one
            raise ServerFailed(
                f"the fork server (pid {self.proc.pid}) did not answer in {SPAWN_TIMEOUT:g} s"
            ) from exc
        except OSError:
            reply = b""
        if not reply:
            # The forked process runs nothing before the server has reported it (see _fork).
            ours.close()
            raise Unavailable(f"the fork server (pid {self.proc.pid}) ended")
        message = json.loads(reply)
        if "error" in message:
            ours.close()
            raise Unavailable(str(message["error"]))
        pid = int(message["pid"])
        try:
            pidfd: int | None = os.pidfd_open(pid)  # the server keeps pid unreaped until release
        except OSError:
            pidfd = None
        with self.lock:
            self.active += 1
        return ForkedRun(pid, ours, pidfd, self._released)

    def _released(self) -> None:
        with self.lock:
            self.active -= 1

    def retire(self) -> None:
        """Close the server's requests; it exits once its runs have ended."""
        self.control.close()


class _Starter:
    """The one thread that starts fork servers, alive as long as the worker.

    The bootstrap's PR_SET_PDEATHSIG fires when the thread that forked the server ends, not
    the process: a run's own thread would take the server (and every later run) with it.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: queue.SimpleQueue[tuple[Callable[[], Any], _Result]] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def call(self, job: Callable[[], Any]) -> Any:
        """Run job on the starter thread and return what it returned (or raise what it raised)."""
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._serve, name="alembic-fork-servers", daemon=True
                )
                self._thread.start()
        result = _Result()
        self._jobs.put((job, result))
        return result.get()

    def _serve(self) -> None:
        while True:
            job, result = self._jobs.get()
            try:
                result.set(job())
            except BaseException as exc:  # handed to the caller, who raises it
                result.fail(exc)


class _Result:
    def __init__(self) -> None:
        self._done = threading.Event()
        self._value: Any = None
        self._error: BaseException | None = None

    def set(self, value: Any) -> None:
        self._value = value
        self._done.set()

    def fail(self, error: BaseException) -> None:
        self._error = error
        self._done.set()

    def get(self) -> Any:
        self._done.wait()
        if self._error is not None:
            raise self._error
        return self._value


class ForkServers:
    """This worker's fork servers: one per interpreter, -P, and start-up environment."""

    def __init__(self, launch_argv: Callable[[str, list[str]], list[str]]) -> None:
        # launch_argv(python, command) wraps `python <command>` in the runner's bootstrap.
        self._launch_argv = launch_argv
        self._lock = threading.Lock()
        self._servers: dict[_Key, _Server | _Result] = {}
        self._refused: set[_Key] = set()
        self._retired: list[_Server] = []
        self._said: set[str] = set()
        self._starter = _Starter()
        os.register_at_fork(after_in_child=self._forget)

    def spawn(self, run: Run, *, stdout: int, stderr: int) -> ForkedRun | None:
        """Fork run's process from a server; None when the run should start an interpreter."""
        if not enabled():
            return None
        key = _Key(run.python, run.safe_path, tuple(sorted(startup_environment(run.env).items())))
        for _attempt in range(2):  # a server that died since its last run is started anew
            server = self._server(key, run)
            if server is None:
                return None
            try:
                return server.spawn(run, stdout=stdout, stderr=stderr)
            except Unavailable as exc:
                self._drop(server, f"{exc}")
        return None

    def server_pids(self) -> list[int]:
        """Return the pids of the live fork servers."""
        with self._lock:
            servers = [s for s in self._servers.values() if isinstance(s, _Server)]
        return [server.proc.pid for server in servers if server.alive()]

    def _server(self, key: _Key, run: Run) -> _Server | None:
        with self._lock:
            self._retired = [server for server in self._retired if server.proc.poll() is None]
            if key in self._refused:
                return None
            entry = self._servers.get(key)
            if isinstance(entry, _Server) and not entry.alive():
                self._say_ended(entry)
                del self._servers[entry.key]
                entry = None
            if isinstance(entry, _Server):
                entry.last_used = time.monotonic()
                return entry
            starting = entry is None
            if starting:
                if not self._make_room():
                    self._say_once(
                        f"{MAX_SERVERS} Alembic fork servers are busy; this run starts its own"
                        " interpreter",
                        logging.INFO,
                    )
                    return None
                entry = _Result()
                self._servers[key] = entry
        if not isinstance(entry, _Result):
            return None
        if starting:
            try:
                server = self._starter.call(lambda: self._launch(key, run))
            except Exception as exc:  # noqa: BLE001 - any failure means: run without a server
                server = None
                reason = f"{type(exc).__name__}: {exc}"
            else:
                reason = ""
            with self._lock:
                if server is None:
                    self._servers.pop(key, None)
                    self._refused.add(key)
                else:
                    server.last_used = time.monotonic()
                    self._servers[key] = server
            if server is None:
                self._say_once(
                    f"Alembic's fork server for {run.python} could not start ({reason}); its runs"
                    " start their own interpreter instead",
                    logging.WARNING,
                )
            entry.set(server)
            return server
        server = entry.get()
        return server if isinstance(server, _Server) else None

    def _make_room(self) -> bool:
        servers = [s for s in self._servers.values() if isinstance(s, _Server)]
        if len(self._servers) < MAX_SERVERS:
            return True
        idle = [server for server in servers if server.active == 0]
        if not idle:
            return False
        oldest = min(idle, key=lambda server: server.last_used)
        del self._servers[oldest.key]
        oldest.retire()
        self._retired.append(oldest)
        return True

    def _launch(self, key: _Key, run: Run) -> _Server:
        """Start a server and wait until it has imported Alembic (on the starter thread)."""
        size = sum(len(name) + len(value) + 2 for name, value in run.env.items())
        room = min(MAX_ROOM, max(MIN_ROOM, 2 * size))
        env = {**dict(key.startup), ROOM_VARIABLE: "." * room}
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        command = [*(["-P"] if key.safe_path else []), "-c", _source()]
        argv = [*self._launch_argv(key.python, command), str(theirs.fileno())]
        try:
            proc = subprocess.Popen(
                argv,
                cwd="/",
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                pass_fds=(theirs.fileno(),),
                start_new_session=True,
            )
        except OSError:
            ours.close()
            raise
        finally:
            theirs.close()
        stderr = proc.stderr
        if stderr is None:
            raise RuntimeError("no stderr pipe")
        try:
            ours.settimeout(READY_TIMEOUT)
            try:
                reply = ours.recv(65536)
            except TimeoutError:
                proc.kill()
                reply = b""
            message = json.loads(reply) if reply else {}
            if not message.get("ready"):
                if proc.poll() is None and not reply:
                    proc.kill()
                proc.wait()
                said = message.get("error") or stderr.read(4000).decode(errors="replace")
                raise RuntimeError(f"exit status {proc.returncode}: {said.strip()[-1000:]}")
        except BaseException:
            ours.close()
            raise
        finally:
            stderr.close()
        logger.info(
            "Alembic fork server started for %s (pid %s%s)",
            key.python,
            proc.pid,
            ", -P" if key.safe_path else "",
        )
        return _Server(key=key, proc=proc, control=ours)

    def _drop(self, server: _Server, why: str) -> None:
        with self._lock:
            if self._servers.get(server.key) is server:
                del self._servers[server.key]
            server.control.close()
            if server.proc.poll() is None:
                self._retired.append(server)
        logger.warning("Alembic fork server (pid %s) dropped: %s", server.proc.pid, why)

    def _say_ended(self, server: _Server) -> None:
        logger.warning(
            "Alembic fork server (pid %s) for %s ended with exit status %s; starting a new one",
            server.proc.pid,
            server.key.python,
            server.proc.returncode,
        )
        server.control.close()

    def _say_once(self, message: str, level: int) -> None:
        if message not in self._said:
            self._said.add(message)
            logger.log(level, message)

    def _forget(self) -> None:
        # A forked copy of the worker has no starter thread and does not own these servers.
        self._lock = threading.Lock()
        self._servers = {}
        self._retired = []
        self._starter = _Starter()


_source_text: str | None = None


def _source() -> str:
    global _source_text
    if _source_text is None:
        _source_text = Path(__file__).read_text(encoding="utf-8")
    return _source_text


# --- The server: runs in the project's interpreter, never in the dashboard. ---


def serve(control_fd: int) -> None:
    """Import Alembic, then fork a process per request until the worker closes the socket."""
    control = socket.socket(fileno=control_fd)
    control.set_inheritable(False)
    # Without -P, `python -c` put the working directory first; it is the run's, not ours.
    cwd_on_path = bool(sys.path) and sys.path[0] == ""
    if cwd_on_path:
        del sys.path[0]
    try:
        # Exec made this process dumpable again: keep other processes of the user out of its
        # memory and descriptors (each request's memory file passes through here).
        _prctl(PR_SET_DUMPABLE, 0)
        os.close(os.pidfd_open(os.getpid()))
        preloaded = _preload()
    except BaseException:
        control.send(json.dumps({"ready": False, "error": traceback.format_exc()}).encode())
        return
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 2)  # the worker stops reading our stderr once we are ready
    os.close(null)
    gc.freeze()  # fewer copy-on-write faults in the forked runs
    control.send(json.dumps({"ready": True, "preloaded": preloaded}).encode())
    _Loop(control, cwd_on_path).run()


def _preload() -> list[str]:
    for name in PRELOAD:
        importlib.import_module(name)
    for name in OPTIONAL_PRELOAD:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001,S112 - not installed or broken: the run imports it itself
            continue
    return [name for name in (*PRELOAD, *OPTIONAL_PRELOAD) if name in sys.modules]


@dataclass(eq=False)
class _Forked:
    pid: int
    channel: socket.socket
    pidfd: int
    returncode: int | None = None
    released: bool = False


class _Loop:
    """The server's single thread: requests, exits, and releases, one at a time."""

    def __init__(self, control: socket.socket, cwd_on_path: bool) -> None:
        self.control: socket.socket | None = control
        self.cwd_on_path = cwd_on_path
        self.selector = selectors.DefaultSelector()
        self.selector.register(control, selectors.EVENT_READ, None)
        self.children: dict[int, _Forked] = {}

    def run(self) -> None:
        while self.control is not None or self.children:
            for key, _ in self.selector.select():
                if key.data is None:
                    self._accept()
                else:
                    key.data()

    def _accept(self) -> None:
        if self.control is None:
            return
        try:
            message, fds, _flags, _addr = socket.recv_fds(self.control, 64, 4)
        except OSError:
            message, fds = b"", []
        if not message:  # the worker closed the socket: finish the runs, then exit
            self.selector.unregister(self.control)
            self.control.close()
            self.control = None
        if message != b"run" or len(fds) != 4:
            for fd in fds:
                os.close(fd)
            return
        channel_fd, request_fd, out_fd, err_fd = fds
        try:
            self._fork(socket.socket(fileno=channel_fd), request_fd, out_fd, err_fd)
        finally:
            for fd in (request_fd, out_fd, err_fd):
                os.close(fd)

    def _fork(self, channel: socket.socket, request_fd: int, out_fd: int, err_fd: int) -> None:
        if threading.active_count() != 1:
            _send(channel, {"error": "the fork server has started a thread; forking is unsafe"})
            channel.close()
            return
        here, there = socket.socketpair()
        try:
            pid = os.fork()
        except OSError as exc:
            here.close()
            there.close()
            _send(channel, {"error": f"cannot fork: {exc}"})
            channel.close()
            return
        if pid == 0:
            _become_alembic(there, request_fd, out_fd, err_fd, self.cwd_on_path)
        there.close()
        here.settimeout(SYNC_TIMEOUT)
        try:
            ready = here.recv(1) == b"r"
        except OSError:
            ready = False
        pidfd = os.pidfd_open(pid)  # not reaped yet, so it is ours
        child = _Forked(pid, channel, pidfd)
        self.children[pid] = child
        # The process has its own session now (killpg reaches it) and waits for "go": it
        # runs nothing unless the worker has its pid, so a worker that never got the pid
        # may start the run elsewhere.
        if ready and _send(channel, {"pid": pid}):
            with contextlib.suppress(OSError):
                here.send(b"g")
        else:
            os.kill(pid, signal.SIGKILL)
            child.released = True
            channel.close()
        here.close()
        self.selector.register(pidfd, selectors.EVENT_READ, lambda: self._exited(child))
        if not child.released:
            self.selector.register(channel, selectors.EVENT_READ, lambda: self._release(child))

    def _exited(self, child: _Forked) -> None:
        info = os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        if info is None:
            return
        self.selector.unregister(child.pidfd)
        os.close(child.pidfd)
        # Popen's convention: a negative status names the signal that ended the process.
        exited = info.si_code == os.CLD_EXITED
        child.returncode = info.si_status if exited else -info.si_status
        if child.released:
            self._reap(child)
        elif not _send(child.channel, {"returncode": child.returncode}):
            self._release(child)

    def _release(self, child: _Forked) -> None:
        # The worker closed the run's channel: after the exit (it has the status), or because
        # its supervisor went away, in which case nobody watches the run any more.
        self.selector.unregister(child.channel)
        child.channel.close()
        child.released = True
        if child.returncode is not None:
            self._reap(child)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGKILL)  # the unreaped pid pins the group id

    def _reap(self, child: _Forked) -> None:
        os.waitpid(child.pid, 0)
        del self.children[child.pid]


def _send(channel: socket.socket, message: dict[str, Any]) -> bool:
    try:
        channel.send(json.dumps(message).encode())
    except OSError:
        return False
    return True


def _become_alembic(
    sync: socket.socket, request_fd: int, out_fd: int, err_fd: int, cwd_on_path: bool
) -> NoReturn:
    """Turn the forked process into `python [-P] -c <Alembic>` for one request; never return."""
    code = 1
    try:
        server = os.getppid()
        os.setsid()  # its own group: the worker's killpg reaches the run and its children
        # The server dies with the worker (its own PDEATHSIG); the run dies with the server.
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != server:
            os._exit(1)
        sync.send(b"r")
        if sync.recv(1) != b"g":
            os._exit(1)
        size = os.fstat(request_fd).st_size
        request = json.loads(os.pread(request_fd, size, 0))
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(out_fd, 1)
        os.dup2(err_fd, 2)
        sync.detach()
        # Nothing of the server (its sockets, other runs' channels) is left to the run.
        os.closerange(3, 1 << 20)
        os.chdir(request["cwd"])
        # Cleared and refilled through putenv: libpq and other C code see the run's variables.
        os.environ.clear()
        os.environ.update(request["env"])
        _show_as(request["command_line"], request["env"])
        if cwd_on_path:
            sys.path.insert(0, "")
        sys.argv = ["-c", *request["arguments"]]
        sys.orig_argv = list(request["command_line"])
        main = types.ModuleType("__main__")
        main.__loader__ = sys.modules["__main__"].__loader__
        sys.modules["__main__"] = main
        # From here on, what is imported (env.py, revisions, the project's modules) is
        # compiled from the bytes on disk, never read from bytecode made before this run.
        sys.pycache_prefix = request["pycache_prefix"]
        importlib.invalidate_caches()
        code = _run_alembic(request["arguments"])
    except BaseException:
        with contextlib.suppress(BaseException):  # else nowhere left to report it
            traceback.print_exc()
    finally:
        _flush()
        os._exit(code)


def _run_alembic(arguments: Sequence[str]) -> int:
    """Run Alembic's command line and return the exit status Python itself would give."""
    from alembic.config import main

    interrupted = False
    try:
        main(argv=list(arguments), prog="alembic")
        code = 0
    except SystemExit as exc:
        code = _system_exit_status(exc.code)
    except BaseException as exc:
        interrupted = isinstance(exc, KeyboardInterrupt)
        tb = exc.__traceback__.tb_next if exc.__traceback__ is not None else None
        sys.excepthook(type(exc), exc, tb)
        code = 1
    # What the interpreter does on its way out: wait for non-daemon threads, run atexit
    # callbacks (logging.shutdown among them), flush.
    shutdown = getattr(threading, "_shutdown", None)
    if shutdown is not None:
        shutdown()
    atexit._run_exitfuncs()
    if not _flush() and code == 0:
        code = 120
    if interrupted:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    return code


def _system_exit_status(code: object) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


def _flush() -> bool:
    flushed = True
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except Exception:  # noqa: BLE001 - a closed pipe: what Python reports as status 120
            flushed = False
    return flushed


def _show_as(command_line: Sequence[str], env: Mapping[str, str]) -> None:
    """Write the run's command line and environment where /proc shows the process's own."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        arg_start, arg_end, env_start, env_end = (int(fields[i]) for i in range(45, 49))
    except (OSError, ValueError, IndexError):
        return
    _overwrite(arg_start, arg_end, [os.fsencode(arg) for arg in command_line])
    _overwrite(env_start, env_end, [os.fsencode(f"{k}={v}") for k, v in env.items()])


def _overwrite(start: int, end: int, items: list[bytes]) -> None:
    # The server's own strings there were copied at start and are no longer referenced; what
    # does not fit is left out (the run's os.environ is complete either way).
    size = end - start
    if start <= 0 or size <= 0:
        return
    data = b""
    for item in items:
        if len(data) + len(item) + 1 > size:
            break
        data += item + b"\0"
    ctypes.memmove(start, data.ljust(size, b"\0"), size)


def _prctl(option: int, value: int) -> None:
    if ctypes.CDLL(None, use_errno=True).prctl(option, value, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), f"prctl({option}) failed")


if __name__ == "__main__":
    serve(int(sys.argv[1]))
