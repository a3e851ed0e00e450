"""A seccomp-bpf allow list for sandboxed programs, built with libseccomp (through ctypes, no extra package).

The allowed calls are ``SandboxPolicy.allowed_syscalls`` (``policy.py``); every other call kills the whole process
with SIGSYS (``SCMP_ACT_KILL_PROCESS``), so a hostile program cannot catch the failure and carry on: the worker
sees the signal and reports the error kind ``forbidden``. An allow list does not age: a system call added to the
kernel after this list was written (``setxattrat``, ``file_setattr`` on 6.18, ...) is denied, as is any call the
installed libseccomp cannot name, any call of another ABI (i386 or x32 on x86_64: the bad-arch action kills too).

Argument conditions, on top of the list:

- ``open`` / ``openat``: only without ``O_WRONLY``, ``O_RDWR``, ``O_CREAT``, ``O_TRUNC`` (so no ``O_TMPFILE``
  either); ``creat``, ``openat2`` and every other call that writes, links or removes files are not allowed;
- ``prlimit64``: only with a NULL new limit (reading one);
- ``fcntl``: only ``F_DUPFD``, ``F_DUPFD_CLOEXEC``, ``F_GETFD``, ``F_SETFD``, ``F_GETFL``, ``F_SETFL``; not
  ``F_SETOWN``/``F_SETSIG`` (signals to other processes through SIGIO) or leases/locks/notifications;
- ``ioctl``: fails with ENOTTY (a program's descriptors are /dev/null and pipes, never a terminal); Python falls
  back to ``fcntl`` where it tries ``FIOCLEX``.

The filter is compiled once per worker (``AllowFilter(policy)``) and installed in each forked child just before it
runs model code (``load``: ``no_new_privs``, then the BPF program). When libseccomp is missing the filter is
unavailable and the pool reports it (``SandboxPool.isolation``) and refuses to start unless
``rewards.sandbox_unsafe_ok`` is set.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import fcntl
import os

from echo_megatron.rewards.policy import SandboxPolicy

ACT_KILL_PROCESS = 0x80000000
ACT_KILL_THREAD = 0x00000000
ACT_ALLOW = 0x7FFF0000
ACT_ERRNO = 0x00050000
FLTATR_ACT_BADARCH = 2
CMP_EQ = 4
CMP_MASKED_EQ = 7
PR_SET_SECCOMP = 22
PR_SET_NO_NEW_PRIVS = 38
SECCOMP_MODE_FILTER = 2
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC
FCNTL_ALLOWED = (
    fcntl.F_DUPFD,
    fcntl.F_DUPFD_CLOEXEC,
    fcntl.F_GETFD,
    fcntl.F_SETFD,
    fcntl.F_GETFL,
    fcntl.F_SETFL,
)


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
    lib.seccomp_attr_set.restype = ctypes.c_int
    lib.seccomp_attr_set.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32]
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


class AllowFilter:
    """A prepared (not yet loaded) filter. Build it once in the worker; ``load()`` in each forked child."""

    def __init__(self, policy: SandboxPolicy) -> None:
        self._lib = _load_libseccomp()
        self._libc = ctypes.CDLL(None, use_errno=True)
        self.default = ACT_KILL_PROCESS
        self._ctx = self._lib.seccomp_init(self.default)
        if not self._ctx:  # libseccomp < 2.4 / kernel < 4.14: no KILL_PROCESS; the child is single-threaded
            self.default = ACT_KILL_THREAD
            self._ctx = self._lib.seccomp_init(self.default)
        if not self._ctx:
            raise SeccompUnavailable("seccomp_init failed")
        try:
            self._lib.seccomp_attr_set(self._ctx, FLTATR_ACT_BADARCH, self.default)
            self.allowed: list[str] = []
            for name in policy.allowed_syscalls:
                self._rule(ACT_ALLOW, name)
            for name, arg in (("open", 1), ("openat", 2)):  # read-only opens
                self._rule(ACT_ALLOW, name, _ArgCmp(arg, CMP_MASKED_EQ, WRITE_FLAGS, 0))
            self._rule(ACT_ALLOW, "prlimit64", _ArgCmp(2, CMP_EQ, 0, 0))  # reading a limit (new = NULL)
            for cmd in FCNTL_ALLOWED:
                self._rule(ACT_ALLOW, "fcntl", _ArgCmp(1, CMP_EQ, cmd, 0))
            self._rule(ACT_ERRNO | errno.ENOTTY, "ioctl")
            for needed in ("read", "write", "exit_group", "openat", "mmap"):
                if needed not in self.allowed:
                    raise SeccompUnavailable(f"could not allow {needed}")
            self._program = self._export()
        finally:
            self._lib.seccomp_release(self._ctx)

    def _rule(self, action: int, name: str, *cmps: _ArgCmp) -> None:
        nr = self._lib.seccomp_syscall_resolve_name(name.encode())
        if nr < 0:  # no such system call on this architecture, or unknown to this libseccomp: stays denied
            return
        arr = (_ArgCmp * len(cmps))(*cmps) if cmps else None
        rc = self._lib.seccomp_rule_add_array(self._ctx, action, nr, len(cmps), arr)
        if rc != 0:
            raise SeccompUnavailable(f"seccomp rule for {name}: {os.strerror(-rc)}")
        if action == ACT_ALLOW and name not in self.allowed:
            self.allowed.append(name)

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
