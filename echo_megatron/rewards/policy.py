"""``SandboxPolicy``: everything a sandboxed program is allowed, in one frozen dataclass.

The config (``RewardConfig``'s ``sandbox_*``, ``timeout_s``, ``memory_mb``, ``max_output_bytes`` keys take their
defaults from here), the pool (``SandboxPool.from_config`` / ``SandboxPool(policy=...)``), the worker (which gets
the policy in its init message) and the seccomp filter (which compiles ``allowed_syscalls``) all read this one
object; no other module holds a limit or a list of its own.

The system calls are an allow list: anything not named here (including calls newer than the installed libseccomp
or kernel headers know) kills the program. ``seccomp.py`` adds the argument conditions: ``open``/``openat`` only
without a write flag, ``prlimit64`` only to read a limit, ``fcntl`` only to duplicate descriptors or get/set their
flags (no ``F_SETOWN``/``F_SETSIG``), ``ioctl`` only to ask whether a descriptor is a terminal (others fail with
ENOTTY).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

# Modules imported once per worker so that programs need not import them cold. Forking costs grow with the
# worker's memory (~2 ms with the stdlib, ~9 ms with numpy + sympy + math-verify on the 2-core CI machine), so
# plain programs run in "light" workers and only programs that mention a heavy module go to "heavy" workers;
# math-verify comparisons go to "verify" workers, which never run model code. Both start on first use.
DEFAULT_PRELOAD: tuple[str, ...] = (
    "math", "cmath", "fractions", "decimal", "statistics", "itertools", "functools", "collections",
    "datetime", "calendar", "random", "re", "string", "heapq", "bisect", "operator",
)  # fmt: skip
DEFAULT_PRELOAD_HEAVY: tuple[str, ...] = ("numpy", "sympy", "math_verify")

# What a running Python program needs: reading files of its view, memory, its own signals and timers, time,
# randomness, polling its own descriptors, exiting. No processes, threads, signals to others, sockets, writes to
# the file system, identity or limit changes, mounts, namespaces, ptrace, keyrings, BPF, io_uring, SysV IPC.
ALLOWED_SYSCALLS: tuple[str, ...] = (
    # descriptors it already has or opens read-only (open/openat: see seccomp.py)
    "read", "readv", "pread64", "preadv", "preadv2", "write", "writev", "close", "lseek", "dup", "dup2", "dup3",
    "pipe", "pipe2", "poll", "ppoll", "select", "pselect6", "epoll_create", "epoll_create1", "epoll_ctl",
    "epoll_wait", "epoll_pwait", "epoll_pwait2",
    # looking at its view
    "fstat", "stat", "lstat", "newfstatat", "statx", "fstatfs", "statfs", "getdents", "getdents64", "readlink",
    "readlinkat", "access", "faccessat", "faccessat2", "getcwd", "chdir", "fchdir",
    # memory
    "mmap", "munmap", "mprotect", "mremap", "brk", "madvise", "mincore", "msync", "mbind", "get_mempolicy",
    # its own signals, timers and threads' bookkeeping (no new threads)
    "rt_sigaction", "rt_sigprocmask", "rt_sigreturn", "rt_sigpending", "rt_sigsuspend", "rt_sigtimedwait",
    "sigaltstack", "restart_syscall", "alarm", "setitimer", "getitimer", "pause", "futex", "set_robust_list",
    "get_robust_list", "rseq", "set_tid_address",
    # who/where/when it is
    "getpid", "gettid", "getppid", "getuid", "geteuid", "getgid", "getegid", "getgroups", "getresuid",
    "getresgid", "getpgrp", "getpgid", "getsid", "uname", "sysinfo", "getrusage", "times", "getrlimit",
    "sched_getaffinity", "sched_yield", "getcpu", "getrandom", "clock_gettime", "clock_getres",
    "clock_nanosleep", "nanosleep", "gettimeofday", "time",
    "exit", "exit_group",
)  # fmt: skip


@dataclass(frozen=True)
class SandboxPolicy:
    """What a sandboxed program may do and how the pool runs it."""

    workers: int = 2  # pre-forked sandbox worker processes (per profile)
    timeout_s: float = 3.0  # wall-clock limit per program (CPU rlimit = ceil of it + 1 s, a backstop)
    verify_timeout_s: float = 5.0  # the same for a math-verify comparison (no model code; LaTeX can be slow)
    memory_mb: int = 1024  # address space a program may add on top of the interpreter
    max_output_bytes: int = 65536  # stdout+stderr cap per program (also its file-size rlimit)
    namespaces: bool = True  # PID, mount (the filesystem view), network, IPC and UTS namespaces
    privdrop: bool = True  # as root: every worker runs its programs under its own leased uid
    seccomp: bool = True  # the seccomp allow list (allowed_syscalls)
    unsafe_ok: bool = False  # run even where a layer above is missing (else the pool refuses to start)
    # programs' uids are leased host-wide from [uid_base, uid_base + uid_count); not 61000+, which pools of
    # earlier versions used unleased (a lease kills any process left under its uid)
    uid_base: int = 62000
    uid_count: int = 3000
    lease_dir: str = "/run/echo-megatron/sandbox-uids"  # one lock file per leased uid (root only)
    preload: tuple[str, ...] = DEFAULT_PRELOAD
    preload_heavy: tuple[str, ...] = DEFAULT_PRELOAD_HEAVY
    start_timeout_s: float = 120.0  # a worker that is not ready by then is replaced
    watchdog_grace_s: float = 5.0  # a worker silent for timeout_s + this is killed with its job
    nofile: int = 64  # RLIMIT_NOFILE of a program
    scratch_bytes: int = 64 << 20  # the tmpfs holding every run dir of a worker (namespace mode)
    allowed_syscalls: tuple[str, ...] = ALLOWED_SYSCALLS

    def __post_init__(self) -> None:
        if not 1 <= int(self.workers) <= 256:
            raise ValueError(f"sandbox workers must be in [1, 256], got {self.workers}")
        if not 0 < float(self.timeout_s) <= 3600:
            raise ValueError(f"sandbox timeout_s must be in (0, 3600] seconds, got {self.timeout_s}")
        if int(self.memory_mb) < 16 or int(self.max_output_bytes) < 1:
            raise ValueError("sandbox memory_mb must be >= 16 and max_output_bytes >= 1")
        if not (1000 <= int(self.uid_base) and int(self.uid_base) + int(self.uid_count) <= 65534):
            raise ValueError(f"sandbox uids [{self.uid_base}, +{self.uid_count}) must lie in [1000, 65534)")

    @classmethod
    def from_config(cls, cfg) -> SandboxPolicy:
        """From a ``RewardConfig`` (dataclass or the OmegaConf ``rewards`` node); keys it lacks keep their
        defaults (None: the defaults)."""
        d = cls()

        def get(key: str, default):
            return getattr(cfg, key, default) if cfg is not None else default

        return cls(
            workers=int(get("sandbox_workers", d.workers)),
            timeout_s=float(get("timeout_s", d.timeout_s)),
            memory_mb=int(get("memory_mb", d.memory_mb)),
            max_output_bytes=int(get("max_output_bytes", d.max_output_bytes)),
            namespaces=bool(get("sandbox_namespaces", d.namespaces)),
            privdrop=bool(get("sandbox_privdrop", d.privdrop)),
            seccomp=bool(get("sandbox_seccomp", d.seccomp)),
            unsafe_ok=bool(get("sandbox_unsafe_ok", d.unsafe_ok)),
            uid_base=int(get("sandbox_uid", d.uid_base)),
            preload=tuple(get("sandbox_preload", d.preload)),
            preload_heavy=tuple(get("sandbox_preload_heavy", d.preload_heavy)),
        )

    def with_(self, **changes) -> SandboxPolicy:
        return replace(self, **changes)

    def to_frame(self) -> dict:
        return asdict(self)

    @classmethod
    def from_frame(cls, obj: dict) -> SandboxPolicy:
        known = {f.name for f in fields(cls)}
        kw = {k: tuple(v) if isinstance(v, list) else v for k, v in obj.items() if k in known}
        return cls(**kw)
