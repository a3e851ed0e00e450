"""A seccomp-bpf deny list for sandboxed programs, built with libseccomp (through ctypes, no extra package).

The list is ``SandboxPolicy.denied_syscalls`` (``policy.py``). The sandbox child loads this filter just before
it runs model code. Every listed system call kills the whole process with SIGSYS (``SCMP_ACT_KILL_PROCESS``), so a hostile program cannot catch the failure and carry on: the
worker sees the signal and reports the error kind ``forbidden``. Denied:

- new processes and threads (clone/clone3/fork/vfork), execve, signals to other processes (kill/tkill/tgkill);
- networking: socket, socketpair;
- every write to the file system: open/openat with O_WRONLY, O_RDWR, O_CREAT or O_TRUNC, creat, openat2,
  mkdir, rename, link, symlink, unlink, mknod, chmod, chown, truncate, xattrs, utime;
- raising limits or changing identity: setrlimit, prlimit64 with a new limit, setuid & co, capset;
- escapes and kernel surface: ptrace, process_vm_*, mount & co, unshare, setns, chroot, io_uring, bpf,
  userfaultfd, perf_event_open, keyrings, modules, SysV IPC creation, TIOCSTI.

Reading files, computing, allocating (bounded by RLIMIT_AS) and writing to already-open descriptors stay allowed.
System calls of another ABI (i386 on x86_64) are killed by libseccomp's bad-arch action. When libseccomp is
missing the filter is unavailable and the sandbox reports it (``SandboxPool.isolation``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

from echo_megatron.rewards.policy import SandboxPolicy

ACT_KILL_PROCESS = 0x80000000
ACT_KILL_THREAD = 0x00000000
ACT_ALLOW = 0x7FFF0000
CMP_NE = 1
CMP_EQ = 4
CMP_MASKED_EQ = 7
TIOCSTI = 0x5412
PR_SET_SECCOMP = 22
PR_SET_NO_NEW_PRIVS = 38
SECCOMP_MODE_FILTER = 2

WRITE_FLAGS: tuple[int, ...] = (os.O_WRONLY, os.O_RDWR, os.O_CREAT, os.O_TRUNC)


class _ArgCmp(ctypes.Structure):
    _fields_ = [
        ("arg", ctypes.c_uint),
        ("op", ctypes.c_int),
        ("datum_a", ctypes.c_uint64),
        ("datum_b", ctypes.c_uint64),
    ]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


class SeccompUnavailable(RuntimeError):
    pass


def _load_libseccomp() -> ctypes.CDLL:
    name = ctypes.util.find_library("seccomp") or "libseccomp.so.2"
    try:
        lib = ctypes.CDLL(name, use_errno=True)
    except OSError as e:
        raise SeccompUnavailable(f"libseccomp not found ({e})") from e
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_syscall_resolve_name.restype = ctypes.c_int
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add_array.restype = ctypes.c_int
    lib.seccomp_rule_add_array.argtypes = [
        ctypes.c_void_p,
        ctypes.c_uint32,
        ctypes.c_int,
        ctypes.c_uint,
        ctypes.POINTER(_ArgCmp),
    ]
    lib.seccomp_export_bpf.restype = ctypes.c_int
    lib.seccomp_export_bpf.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.seccomp_release.restype = None
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    return lib


class DenyFilter:
    """A prepared (not yet loaded) filter. Build it once in the worker; ``load()`` in each forked child."""

    def __init__(self, policy: SandboxPolicy) -> None:
        self._lib = _load_libseccomp()
        self._libc = ctypes.CDLL(None, use_errno=True)
        self._ctx = self._lib.seccomp_init(ACT_ALLOW)
        if not self._ctx:
            raise SeccompUnavailable("seccomp_init failed")
        self.action = ACT_KILL_PROCESS
        self.denied: list[str] = []
        for name in policy.denied_syscalls:
            self._rule(name)
        for flag in WRITE_FLAGS:  # open(path, flags) / openat(dirfd, path, flags)
            self._rule("open", _ArgCmp(1, CMP_MASKED_EQ, flag, flag))
            self._rule("openat", _ArgCmp(2, CMP_MASKED_EQ, flag, flag))
        self._rule("prlimit64", _ArgCmp(2, CMP_NE, 0, 0))  # setting a limit; reading one (NULL) is fine
        self._rule("ioctl", _ArgCmp(1, CMP_EQ, TIOCSTI, 0))  # typing into a terminal
        for needed in ("socket", "clone", "execve", "openat"):
            if needed not in self.denied:
                raise SeccompUnavailable(f"could not add a rule for {needed}")

    def _rule(self, name: str, *cmps: _ArgCmp) -> None:
        nr = self._lib.seccomp_syscall_resolve_name(name.encode())
        if nr < 0:  # no such system call on this architecture
            return
        arr = (_ArgCmp * len(cmps))(*cmps) if cmps else None
        rc = self._lib.seccomp_rule_add_array(self._ctx, self.action, nr, len(cmps), arr)
        if rc < 0 and self.action == ACT_KILL_PROCESS and not self.denied:
            self.action = ACT_KILL_THREAD  # libseccomp < 2.4 / kernel < 4.14; the child is single-threaded
            rc = self._lib.seccomp_rule_add_array(self._ctx, self.action, nr, len(cmps), arr)
        if rc == 0 and name not in self.denied:
            self.denied.append(name)

        self._program = self._export()

    def _export(self) -> ctypes.Array:
        """libseccomp's BPF program, compiled once here so that each child installs it in microseconds."""
        r, w = os.pipe()
        try:
            rc = self._lib.seccomp_export_bpf(self._ctx, w)
            os.close(w)
            w = -1
            if rc < 0:
                raise SeccompUnavailable(f"seccomp_export_bpf failed: {os.strerror(-rc)}")
            data = b""
            while chunk := os.read(r, 1 << 16):
                data += chunk
        finally:
            os.close(r)
            if w >= 0:
                os.close(w)
        if not data or len(data) % 8 or len(data) // 8 > 4096:
            raise SeccompUnavailable(f"unexpected BPF program of {len(data)} bytes")
        return ctypes.create_string_buffer(data, len(data))

    def load(self) -> None:
        """Install the filter in the calling (single-threaded) process: no_new_privs, then the BPF program.
        Irreversible; what ``seccomp_load`` does, without recompiling the program in every child."""
        libc = self._libc
        prog = _SockFprog(len(self._program) // 8, ctypes.addressof(self._program))
        if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
        if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(prog), 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_SECCOMP)")
