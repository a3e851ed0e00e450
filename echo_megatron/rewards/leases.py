"""Host-wide uid leases: every sandbox worker on the host runs its programs under a uid no other worker has.

Two pools that gave their first worker the same uid would let a program of one signal, renice or ptrace the
programs of the other (the kernel checks uids, not pools). So, as root, each worker leases one uid of
``[uid_base, uid_base + uid_count)`` for as long as it lives:

    lease = UidLease.acquire(policy)        # the first uid whose lock file nobody holds
    ...                                     # the worker's programs run as lease.uid
    lease.release()

A lease is an exclusive ``flock`` on ``<lease_dir>/<uid>``, held through an open descriptor of the pool's process.
The kernel drops it when that process dies, however it dies, so a lease is never left stale by a crash; and
before using a uid the new holder SIGKILLs any process still running under it (what a crashed holder's programs
would be: stale-lease recovery), so the range must be used by leases only. Uids that belong to an account in the
password database are skipped. The lock directory must be a real directory owned by root and writable by no one
else (checked, not trusted).
"""

from __future__ import annotations

import fcntl
import os
import pwd
import signal
import stat

from echo_megatron.rewards.policy import SandboxPolicy


class LeaseError(RuntimeError):
    pass


def _safe_dir(path: str) -> None:
    """Create ``path`` (mode 700) if needed; refuse a symlink or a directory others may write."""
    os.makedirs(path, mode=0o700, exist_ok=True)
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
        raise LeaseError(f"{path} is not a directory owned by uid {os.geteuid()} and writable only by it")


def processes_of(uid: int) -> list[int]:
    """Pids of the processes whose real, effective or saved uid is ``uid`` (from /proc)."""
    pids = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/status") as f:
                for line in f:
                    if line.startswith("Uid:"):
                        if str(uid) in line.split()[1:4]:
                            pids.append(int(name))
                        break
        except OSError:  # it exited meanwhile
            continue
    return pids


def _kill_strays(uid: int) -> int:
    strays = processes_of(uid)
    for pid in strays:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return len(strays)


def _is_account(uid: int) -> bool:
    try:
        pwd.getpwuid(uid)
        return True
    except KeyError:
        return False


class UidLease:
    """One leased uid (see the module docstring); ``release`` is idempotent."""

    def __init__(self, uid: int, fd: int, recovered: int = 0) -> None:
        self.uid, self._fd, self.recovered = uid, fd, recovered

    @classmethod
    def acquire(cls, policy: SandboxPolicy) -> UidLease:
        _safe_dir(policy.lease_dir)
        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        for uid in range(policy.uid_base, policy.uid_base + policy.uid_count):
            if _is_account(uid):
                continue
            fd = os.open(os.path.join(policy.lease_dir, str(uid)), flags, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            recovered = _kill_strays(uid)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            return cls(uid, fd, recovered)
        raise LeaseError(
            f"all {policy.uid_count} sandbox uids from {policy.uid_base} are leased (lock files in {policy.lease_dir})"
        )

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # closing the only descriptor drops the flock
            self._fd = -1
