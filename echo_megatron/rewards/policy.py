"""``SandboxPolicy``: everything a sandboxed program is allowed, in one frozen dataclass.

The config (``RewardConfig``'s ``sandbox_*``, ``timeout_s``, ``memory_mb``, ``max_output_bytes`` keys take their
defaults from here), the pool (``SandboxPool.from_config`` / ``SandboxPool(policy=...)``), the worker (which gets
the policy in its init frame) and the seccomp filter (which compiles ``denied_syscalls``) all read this one
object; no other module holds a limit or a list of its own.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

# Modules imported once per worker so that programs need not import them cold. Forking costs grow with the
# worker's memory (~2 ms with the stdlib, ~9 ms with numpy + sympy + math-verify on the 2-core CI machine), so
# plain programs run in "light" workers and only math-verify comparisons and programs that mention a heavy module
# go to "heavy" workers, started on first use.
DEFAULT_PRELOAD: tuple[str, ...] = (
    "math", "cmath", "fractions", "decimal", "statistics", "itertools", "functools", "collections",
    "datetime", "calendar", "random", "re", "string", "heapq", "bisect", "operator",
)  # fmt: skip
DEFAULT_PRELOAD_HEAVY: tuple[str, ...] = ("numpy", "sympy", "math_verify")

# System calls a program may not make (the seccomp filter kills the process on any of them). open/openat are
# denied only with a write flag, prlimit64 only when it sets a limit, ioctl only for TIOCSTI.
DENIED_SYSCALLS: tuple[str, ...] = (
    # processes, threads, programs, signals to others
    "clone", "clone3", "fork", "vfork", "execve", "execveat",
    "kill", "tkill", "tgkill", "rt_sigqueueinfo", "rt_tgsigqueueinfo",
    "pidfd_open", "pidfd_send_signal", "pidfd_getfd",
    # network
    "socket", "socketpair",
    # file system writes (open/openat are filtered by flags)
    "creat", "openat2", "mkdir", "mkdirat", "rmdir", "unlink", "unlinkat", "rename", "renameat",
    "renameat2", "link", "linkat", "symlink", "symlinkat", "mknod", "mknodat", "chmod", "fchmod",
    "fchmodat", "fchmodat2", "chown", "fchown", "lchown", "fchownat", "truncate", "utime", "utimes",
    "utimensat", "futimesat", "setxattr", "lsetxattr", "fsetxattr", "removexattr", "lremovexattr",
    "fremovexattr", "name_to_handle_at", "open_by_handle_at", "memfd_create", "mq_open",
    # limits and identity
    "setrlimit", "setuid", "setgid", "setreuid", "setregid", "setresuid", "setresgid", "setgroups",
    "setfsuid", "setfsgid", "capset", "personality",
    # escapes and kernel attack surface
    "ptrace", "process_vm_readv", "process_vm_writev", "mount", "umount2", "move_mount", "fsopen",
    "fsmount", "fspick", "open_tree", "mount_setattr", "unshare", "setns", "chroot", "pivot_root",
    "io_uring_setup", "io_uring_enter", "io_uring_register", "bpf", "userfaultfd", "perf_event_open",
    "keyctl", "add_key", "request_key", "init_module", "finit_module", "delete_module", "kexec_load",
    "kexec_file_load", "reboot", "swapon", "swapoff", "acct", "quotactl", "iopl", "ioperm",
    "shmget", "semget", "msgget", "fanotify_init", "inotify_init", "inotify_init1",
)  # fmt: skip


@dataclass(frozen=True)
class SandboxPolicy:
    """What a sandboxed program may do and how the pool runs it."""

    workers: int = 2  # pre-forked sandbox worker processes (per profile)
    timeout_s: float = 3.0  # wall-clock limit per program (CPU rlimit = ceil of it)
    memory_mb: int = 1024  # address space a program may add on top of the interpreter
    max_output_bytes: int = 65536  # stdout+stderr cap per program (also its file-size rlimit)
    namespaces: bool = True  # new network + mount namespaces where the process may create them
    privdrop: bool = True  # as root: run programs under a per-worker uid (uid_base + worker index)
    seccomp: bool = True  # the seccomp filter (denied_syscalls)
    uid_base: int = 61000
    preload: tuple[str, ...] = DEFAULT_PRELOAD
    preload_heavy: tuple[str, ...] = DEFAULT_PRELOAD_HEAVY
    start_timeout_s: float = 120.0  # a worker that is not ready by then is replaced
    watchdog_grace_s: float = 5.0  # a worker silent for timeout_s + this is killed with its job
    nofile: int = 64  # RLIMIT_NOFILE of a program
    scratch_bytes: int = 64 << 20  # the tmpfs holding every run dir of a worker (namespace mode)
    denied_syscalls: tuple[str, ...] = DENIED_SYSCALLS

    def __post_init__(self) -> None:
        if int(self.workers) < 1:
            raise ValueError(f"sandbox workers must be >= 1, got {self.workers}")
        if not float(self.timeout_s) > 0:
            raise ValueError(f"sandbox timeout_s must be > 0, got {self.timeout_s}")
        if int(self.memory_mb) < 16 or int(self.max_output_bytes) < 1:
            raise ValueError("sandbox memory_mb must be >= 16 and max_output_bytes >= 1")

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
