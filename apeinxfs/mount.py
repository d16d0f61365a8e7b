"""Mount lifecycle: arguments, stale-mount recovery, daemonising, signals, clean unmount.

`apeinxfs MOUNTPOINT [-o OPTS] [-f] [--config FILE] [--state-dir DIR]`; mount.fuse3
runs `apeinxfs /ai -o rw,dev,suid`. Without -f the command returns only once the
mount is up (the child reports through a pipe). SIGTERM, SIGINT and SIGHUP unmount
cleanly; a lazy unmount ends the blocked reads of the daemon's own mount namespace, and
the daemon with the kernel's connection. What is mounted is fs.py's adapter over the tree of nodes/.
"""
import argparse
import errno
import fcntl
import logging
import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from functools import partial

import attrs
import pyfuse3
import trio

from . import config as config_mod
from . import fuselock, mountwatch, statefile
from .drivers import nvml
from .enginehost import check_drivers
from .fs import Operations
from .archive import Archive
from .cluster import peer_server
from .cluster.daemon import Cluster
from .compaction import Snapshotter
from .journal import Journal
from .kernel import audit
from .kernel.errors import ApeinxError, Degraded, Invalid
from .nodes.tree import Tree
from .runtime import Runtime

log = logging.getLogger("apeinxfs")

FUSE_PASSTHROUGH = {"allow_other", "allow_root", "default_permissions", "rw", "ro", "dev", "nodev",
                    "suid", "nosuid", "exec", "noexec", "atime", "noatime", "async", "sync", "dirsync"}
OWN_OPTIONS = {"config", "state_dir", "debug"}
SHUTDOWN_GRACE_S = 1.0  # on a signal, requests in flight get this long; blocked readers are then cancelled
HOLDER_EXIT_S = 12.0  # a start awaits a detached daemon's end this long (its readers' last closes)
FSTAB_ONLY = {"defaults", "auto", "noauto", "user", "users", "nofail", "_netdev"}


@attrs.frozen
class MountArgs:
    """What the command line asks for."""

    mountpoint: str
    foreground: bool
    config: str | None
    state_dir: str | None
    fuse_options: frozenset
    debug: bool


def parse_args(argv: list[str]) -> MountArgs:
    parser = argparse.ArgumentParser(prog="apeinxfs", description="Mount the apeinxfs AI kernel tree.")
    parser.add_argument("mountpoint")
    parser.add_argument("-o", dest="options", action="append", default=[], help="mount options, comma separated")
    parser.add_argument("-f", "--foreground", action="store_true", help="stay in the foreground")
    parser.add_argument("--config", help="TOML config file (every key optional)")
    parser.add_argument("--state-dir", help="where the journal lives")
    parser.add_argument("--debug", action="store_true", help="log every refusal")
    args = parser.parse_args(argv)
    own, fuse = _split_options(",".join(args.options))
    return MountArgs(mountpoint=os.path.abspath(args.mountpoint), foreground=args.foreground,
                     config=args.config or own.get("config"), state_dir=args.state_dir or own.get("state_dir"),
                     fuse_options=frozenset(fuse), debug=args.debug or "debug" in own)


def _split_options(text: str) -> tuple[dict, set]:
    own, fuse = {}, set()
    for option in filter(None, text.split(",")):
        key, _, value = option.partition("=")
        if key in OWN_OPTIONS:
            own[key] = value
        elif key in FUSE_PASSTHROUGH:
            fuse.add(option)
        elif key in FSTAB_ONLY or key.startswith("x-"):
            continue
        else:
            raise Invalid(f"unknown mount option {option!r}")
    return own, fuse


def recover_stale(mountpoint: str) -> None:
    """Unmount a dead FUSE mount (ENOTCONN) left by a crash; refuse a live one."""
    try:
        os.statvfs(mountpoint)  # not stat: the kernel answers that from its attr cache for a while
    except OSError as exc:
        if exc.errno != errno.ENOTCONN:
            raise Invalid(f"mountpoint {mountpoint}: {exc.strerror}") from None
        log.warning("recovering a stale mount at %s", mountpoint)
        subprocess.run(["fusermount3", "-u", "-z", mountpoint], check=False)
        return
    if os.path.ismount(mountpoint) and mountwatch.device_of(mountpoint) is not None:
        raise Invalid(f"apeinxfs is already mounted at {mountpoint}")


def lock_state_dir(state_dir: str) -> int:
    """One daemon per state directory. A holder whose mount was detached ends once the last user of its tree
    does (on_detach): that is awaited, up to HOLDER_EXIT_S; a holder still mounted (or starting) refuses the
    start at once."""
    os.makedirs(state_dir, exist_ok=True)
    fd = statefile.descriptor(os.path.join(state_dir, "lock"), os.O_RDWR | os.O_CREAT)  # a planted link: not truncated
    if not _locked(fd):
        refusal = _holder_refusal(fd, state_dir)
        if refusal is not None:
            os.close(fd)
            raise Invalid(refusal)
    os.ftruncate(fd, 0)  # no device yet: mark_lock writes this daemon's once mounted
    return fd


def _holder_refusal(fd: int, state_dir: str) -> str | None:
    """Why the lock's holder refuses this start; None if it let the lock go (its mount detached, its last user
    gone within HOLDER_EXIT_S): then this process holds it."""
    device, pid = _holder(fd)
    named = f"another apeinxfs daemon{f' (pid {pid})' if pid else ''} uses {state_dir}"
    if device is None or mountwatch.still_attached(device)[0]:
        return named
    if _detached_holder_ends(fd, state_dir):
        return None
    return (f"{named}: its mount was detached, but it is still in use by files open on its tree or by other "
            f"mount namespaces (a container's bind mount); it ends when the last of them does")


def _holder(fd: int) -> tuple[str | None, str | None]:
    """The device of the lock holder's mount and its pid, as mark_lock wrote them (None where not written)."""
    words = os.pread(fd, 64, 0).decode(errors="replace").split()
    device = words[0] if words and words[0] != "-" else None
    return device, (words[1] if len(words) > 1 else None)


def _detached_holder_ends(fd: int, state_dir: str) -> bool:
    """Whether the lock's holder, its mount detached, lets it go within HOLDER_EXIT_S; then this process holds it."""
    log.info("waiting up to %.0f s for the daemon whose mount was detached to release %s", HOLDER_EXIT_S, state_dir)
    deadline = time.monotonic() + HOLDER_EXIT_S
    while time.monotonic() < deadline:
        time.sleep(0.2)
        if _locked(fd):
            return True
    return False


def _locked(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def mark_lock(fd: int, device: str | None) -> None:
    """Write the device of this daemon's mount (`-` if not known) and its pid into its lock file, for a later start
    to see it detached and to name it."""
    os.pwrite(fd, f"{device or '-'} {os.getpid()}\n".encode(), 0)


def main(argv: list[str]) -> int:
    os.umask(0o077)  # the journal and log hold every tenant's prompts and outputs: the owner's alone
    try:
        args = parse_args(argv)
        config = config_mod.load(args.config, args.state_dir)
        check_drivers({model.name: model for model in config.kernel.models})
        recover_stale(args.mountpoint)
    except ApeinxError as exc:
        print(f"apeinxfs: {exc}", file=sys.stderr)
        return 1
    if args.foreground:
        _log_to(None, args.debug)
        return serve(args, config, ready_fd=None)
    return _daemonise(args, config)


def _daemonise(args: MountArgs, config) -> int:
    read_end, write_end = os.pipe()
    if os.fork():
        os.close(write_end)
        report = os.read(read_end, 4096).decode(errors="replace")
        if report.startswith("ok"):
            return 0
        print(f"apeinxfs: {report.strip() or 'the daemon died before mounting'}", file=sys.stderr)
        return 1
    os.close(read_end)
    os.setsid()
    try:
        _log_to(os.path.join(config.state_dir, "apeinxfs.log"), args.debug)
    except statefile.Untrusted as exc:
        _report(write_end, f"cannot start: {exc}")
        os._exit(1)
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os._exit(serve(args, config, ready_fd=write_end))


def _log_to(path: str | None, debug: bool) -> None:
    if path:
        os.makedirs(os.path.dirname(path), exist_ok=True)
    file = os.fdopen(statefile.descriptor(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT), "a") if path else None
    handler = logging.StreamHandler(file)  # a planted link or FIFO at the log: refused, not written through
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    logging.basicConfig(level=logging.DEBUG if debug else logging.INFO, handlers=[handler], force=True)


def raise_descriptor_limit() -> int:
    """Raise this process's soft RLIMIT_NOFILE to its hard limit (blocked readers, peers and snapshots
    each hold descriptors; the default soft 1,024 is soon reached); the limit now. Where that is refused
    (a hard limit above a lowered fs.nr_open, a sandbox) the daemon runs under the soft one, with a warning."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == hard:
        return hard
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (OSError, ValueError) as exc:
        log.warning("descriptors: cannot raise the soft limit %d to the hard %d (%s); running under %d",
                    soft, hard, exc, soft)
        return soft
    return hard


def serve(args: MountArgs, config, ready_fd: int | None) -> int:
    """Boot the kernel from the journal, mount, serve until unmounted or signalled."""
    try:
        log.info("descriptors: at most %d", raise_descriptor_limit())
        lock = lock_state_dir(config.state_dir)
        archive = Archive(os.path.join(config.state_dir, "trace"), config.retention.trace_file_bytes,
                          config.retention.trace_bytes)
        runtime = Runtime(config, Journal(os.path.join(config.state_dir, "journal.db")), archive=archive,
                          audit_archive=audit_archive(config))
        runtime.snapshotter = Snapshotter(runtime, os.path.join(config.state_dir, "snapshots"),
                                          config.retention.snapshot_rows, config.retention.snapshot_s)
        rows = runtime.recover()
        runtime.readings = nvml.open_readings(config.kernel.gpus)
        runtime.cluster = Cluster(config.cluster, runtime) if config.cluster else None
        ops = Operations(Tree(runtime))
        peer = peer_server.listening_for(config.cluster)
        pyfuse3.init(ops, args.mountpoint, _fuse_options(args))
        device = mountwatch.device_of(args.mountpoint)  # now, before a lazy unmount can hide it
        mark_lock(lock, device)
    except Exception as exc:  # report any start failure to the waiting parent
        _report(ready_fd, f"cannot mount {args.mountpoint}: {exc}")
        log.exception("start failed")
        return 1
    log.info("mounted %s; %s; replayed %d journal rows; state in %s",
             args.mountpoint, config.gpu_source, rows, config.state_dir)
    return trio.run(_run_mounted, runtime, config, ready_fd, ops.tree, peer, (args.mountpoint, device))


def audit_archive(config) -> Archive:
    """STATE_DIR/audit/: the audit trail's lines, in files rotated like the trace archive's."""
    return Archive(os.path.join(config.state_dir, "audit"), config.retention.trace_file_bytes,
                   config.retention.audit_bytes, stem="audit", header=audit.HEADER)


def _fuse_options(args: MountArgs) -> set:
    """No default_permissions: fs.py checks roles and tenants itself (kernel/access.py). Mounted by
    root, allow_other lets every user reach the tree, each seeing its own tenant; a user's own
    mount stays private unless it asks for allow_other (which needs user_allow_other in fuse.conf)."""
    shared = {"allow_other"} if os.geteuid() == 0 else set()
    return {"fsname=apeinxfs", "subtype=apeinxfs"} | shared | set(args.fuse_options - {"rw"})


def refusal_of(exc: BaseException) -> ApeinxError | None:
    """The refusal (an ApeinxError, with its errno and reason) that ended the daemon, alone or as the one
    exception of a nursery's group; None for a bug."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc if isinstance(exc, ApeinxError) else None


def _report(fd: int | None, message: str) -> None:
    if fd is not None:
        os.write(fd, message.encode() + b"\n")
        os.close(fd)


def close_journal(runtime: Runtime) -> None:
    """Commit what waits, archive its trace lines (runtime.flush_all), and close the journal at unmount. The
    storage's refusal (Degraded) is logged, not raised: it is no bug, and every row is in already; only the trace
    rows of the last few steps are lost."""
    try:
        try:
            runtime.flush_all()
        finally:
            runtime.journal.close()
    except Degraded as exc:
        log.error("closing the journal: %s", exc.reason)


def closes(runtime: Runtime) -> list[tuple[str, Callable[[], None]]]:
    """What unmount closes, in order: the last snapshot, the journal, the archives, the readings log."""
    always = [("the last snapshot", runtime.snapshotter.close), ("the journal", partial(close_journal, runtime)),
              ("the trace archive", runtime.archive.close), ("the audit archive", runtime.audit_archive.close)]
    return always + ([("the readings log", runtime.readings.close)] if runtime.readings is not None else [])


def close_all(runtime: Runtime) -> bool:
    """Run every close of the unmount; a bug in one is logged CRITICAL with its traceback and the others still
    run. Whether none had a bug."""
    clean = True
    for what, close in closes(runtime):
        try:
            close()
        except Exception:
            log.critical("a bug in closing %s at unmount", what, exc_info=True)
            clean = False
    return clean


@attrs.define
class Ending:
    """How serving ends. A signal or a refusal unmounts at close; a detached mount is never unmounted by its
    path, which may hold another mount by then (a new daemon's)."""

    serving: trio.CancelScope
    device: str | None = None  # of this daemon's mount (mountwatch.py); None if not found
    unmount: bool = False  # on a signal or a refusal; a bug leaves the mount dead (ENOTCONN) for the next start
    detached: bool = False

    def stop(self) -> None:
        """Read no more requests; those in flight get SHUTDOWN_GRACE_S, then blocked readers are cancelled."""
        pyfuse3.terminate()
        self.serving.deadline = min(self.serving.deadline, trio.current_time() + SHUTDOWN_GRACE_S)

    def unmounts(self) -> bool:
        """Whether close unmounts the path: on a signal or a refusal, unless the mount was detached, looked at once
        more now (a lazy unmount since the last check; a mountinfo that cannot be read counts as attached)."""
        if not self.unmount or self.detached:
            return False
        return self.device is None or mountwatch.still_attached(self.device)[0]


class Detached(ApeinxError):
    """The daemon's mount was detached (a lazy unmount): its blocked reads end so, and later ones."""

    errno = errno.ENOTCONN


def ended_by_detach() -> Detached:
    return Detached("the mount was detached (lazy unmount) in the daemon's mount namespace")


async def on_signal(ending: Ending, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """SIGTERM, SIGINT, SIGHUP: unmount and exit."""
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        task_status.started()
        async for signum in signals:
            log.info("signal %d: unmounting", signum)
            ending.unmount = True
            ending.stop()


async def on_detach(ending: Ending, runtime: Runtime, mountpoint: str) -> None:
    """Once no mount of the daemon's device is left in its namespace (mountwatch.py), end the blocked reads of
    callers in that namespace with ENOTCONN, and refuse their later ones: their view of the tree is gone. Callers
    in other namespaces (a container's bind mount) are served on; the daemon ends when the kernel ends the
    connection, with the last descriptor and the last mount of the tree (pyfuse3.main returns)."""
    if ending.device is None:
        log.warning("the mount at %s is not in /proc/self/mountinfo: a lazy unmount will not end its blocked reads",
                    mountpoint)
        return
    runtime.mount_watch = mountwatch.Watch(ending.device)
    await runtime.mount_watch.until_detached()
    ending.detached = True
    ended = runtime.readers.end_where(ended_by_detach, mountwatch.in_own_namespace)
    log.warning("the mount at %s (device %s) was detached: ended %d blocked reads in this mount namespace with "
                "ENOTCONN; the daemon ends when the last descriptor and mount of its tree elsewhere go",
                mountpoint, ending.device, ended)


async def _run_mounted(runtime: Runtime, config, ready_fd, tree, peer, mount: tuple[str, str | None]) -> int:
    ending = Ending(trio.CancelScope(), device=mount[1])
    started = False  # reported ok: what ends the daemon after that is no start refusal
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(runtime.run)
            if peer is not None:  # other nodes read and drive this node's tasks (cluster/peer_server.py)
                server = peer_server.PeerServer(tree, peer.tokens, config.max_waiters, config.cluster.peer_stall_s)
                await nursery.start(server.serve, peer)
            await nursery.start(on_signal, ending)
            nursery.start_soon(on_detach, ending, runtime, mount[0])
            _report(ready_fd, "ok")
            ready_fd, started = None, True  # reported: nobody waits for a later end
            with ending.serving:
                fuselock.install()
                await pyfuse3.main(min_tasks=4, max_tasks=config.max_waiters + 64)
            nursery.cancel_scope.cancel()
    except Exception as exc:  # a task not supervised (supervise.py): a driver group's (enginehost.py), the signals'
        refusal = None if started else refusal_of(exc)  # after the start, an ApeinxError out of a task is a bug too
        if refusal is None:
            log.critical("a bug ended the daemon; the mount is left dead until the next start", exc_info=True)
            raise
        log.error("refused: %s; unmounting", refusal)  # an ApeinxError out of a task before the start
        _report(ready_fd, f"refused to start: {refusal}")
        ending.unmount = True
        return 1
    finally:
        pyfuse3.close(unmount=ending.unmounts())
        closed = close_all(runtime)
        log.info("unmounted")
    return 0 if closed else 1
