"""The programs' world: new namespaces and a filesystem view with only the interpreter, its libraries and a scratch.

``enter_namespaces`` (in the worker process, before it forks the template): new PID, mount, network, IPC and UTS
namespaces, inside a new user namespace when not root (the invoking uid mapped to itself, setgroups denied). The
template is then PID 1 of the new PID namespace: programs see no other process of the host (and the kernel
kills every process of the namespace when the template dies); the network namespace has only a loopback that is
down; SysV IPC and the host name are private.

``build_view`` + ``pivot_into`` (in the template, after it imported the preloaded modules): a fresh tmpfs becomes
the root, holding read-only bind mounts of exactly

- the Python standard library (``sysconfig``'s stdlib and platstdlib, with any site-packages inside it hidden),
- the directories of the packages the template imported (each top-level package or module of a sys.path entry,
  plus ``<name>.libs`` beside it), under their own paths so that lazy imports keep working,
- the shared-library directories (``/lib``, ``/lib64``, ``/usr/lib``, ``/usr/lib64``, with the Python packages
  inside them hidden) and ``/etc/ld.so.cache``, for extension modules imported later,
- ``/dev/null``, ``/dev/zero``, ``/dev/urandom``, ``/dev/random``,

and ``/tmp``, a small tmpfs (``scratch_bytes``, 4,096 inodes, mode 711) that holds the programs' run dirs (mounted
before the binds beneath it, so that a venv under /tmp stays importable). The
root is then remounted read-only and the old root is detached (``pivot_root``): no project file, data set, home
directory, /proc, /sys, /run or /etc file is reachable, whatever the program's uid. The template's import caches
are cleared so that it does not remember directory listings of the host.
"""

from __future__ import annotations

import ctypes
import glob
import os
import platform
import sys
import sysconfig
from types import ModuleType

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 0x1, 0x2, 0x4, 0x8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 0x20, 0x1000, 0x4000, 1 << 18
MS_NOATIME, MS_NODIRATIME, MS_RELATIME = 0x400, 0x800, 1 << 21
MNT_DETACH = 2
ST_RELATIME = 0x1000
PIVOT_ROOT_NR = {"x86_64": 155, "aarch64": 41, "ppc64le": 203, "s390x": 217, "riscv64": 41}
DEVICES = ("/dev/null", "/dev/zero", "/dev/urandom", "/dev/random")
LIB_DIRS = ("/lib", "/lib64", "/usr/lib", "/usr/lib64")
LD_CACHE = "/etc/ld.so.cache"

_libc = ctypes.CDLL(None, use_errno=True)


def _sys(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def mount(src: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    def enc(s: str | None) -> bytes | None:
        return None if s is None else s.encode()

    _sys(_libc.mount(enc(src), enc(target), enc(fstype), flags, enc(data)), f"mount {src} on {target}")


# --- namespaces (the worker process) ----------------------------------------------------------------------
def enter_namespaces() -> dict:
    """Unshare PID (for the next child), mount, network, IPC, UTS (and user, when not root) namespaces.
    Returns the layers made; raises OSError when the kernel refuses."""
    flags = CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS | CLONE_NEWPID
    userns = os.geteuid() != 0
    uid, gid = os.getuid(), os.getgid()
    _sys(_libc.unshare(flags | (CLONE_NEWUSER if userns else 0)), "unshare")
    if userns:
        for path, text in (
            ("setgroups", "deny"),
            ("uid_map", f"{uid} {uid} 1"),
            ("gid_map", f"{gid} {gid} 1"),
        ):
            with open(f"/proc/self/{path}", "w") as f:
                f.write(text)
    return {"pidns": True, "mountns": True, "netns": True, "ipcns": True, "utsns": True, "userns": userns}


# --- the view (the template process) ----------------------------------------------------------------------
def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


PACKAGE_DIRS = ("site-packages", "dist-packages")


def _stdlib_dirs() -> list[str]:
    paths = {sysconfig.get_path("stdlib"), sysconfig.get_path("platstdlib")}
    return sorted(os.path.abspath(p) for p in paths if p and os.path.isdir(p))


def _in_stdlib(path: str, stdlib: list[str]) -> bool:
    """Under a standard-library directory, and not in a site-packages inside it (which the view hides)."""
    return any(
        _under(path, s) and os.path.relpath(path, s).split(os.sep)[0] not in PACKAGE_DIRS for s in stdlib
    )


def package_paths(modules: list[ModuleType], hidden: list[str]) -> list[str]:
    """The top-level packages / modules (per sys.path entry) that ``modules`` were loaded from, outside the
    standard library and never containing a path of ``hidden`` (echo_megatron's own package), plus
    ``<name>.libs`` beside them."""
    stdlib = _stdlib_dirs()
    entries = sorted({os.path.abspath(p) for p in sys.path if p and os.path.isdir(p)}, key=len, reverse=True)
    found: set[str] = set()
    for mod in modules:
        files = [getattr(mod, "__file__", None), *list(getattr(mod, "__path__", None) or [])]
        for f in files:
            if not isinstance(f, str) or not os.path.isabs(f) or not os.path.exists(f):
                continue
            f = os.path.abspath(f)
            if _in_stdlib(f, stdlib) or any(_under(f, h) for h in hidden):
                continue
            entry = next((e for e in entries if _under(f, e) and f != e), None)
            if entry is None:
                continue
            top = os.path.join(entry, os.path.relpath(f, entry).split(os.sep)[0])
            if any(_under(h, top) for h in hidden) or os.path.basename(top).startswith("__editable__"):
                continue  # echo_megatron itself, or the finder of its editable install (the repo's path)
            found.add(top)
            libs = (top if os.path.isdir(top) else top.split(".", 1)[0]) + ".libs"
            if os.path.isdir(libs):
                found.add(libs)
    return sorted(found)


def view_mounts(modules: list[ModuleType], hidden: list[str]) -> tuple[list[str], list[str]]:
    """(read-only binds, masks): what the view shows, and the directories inside those that it hides."""
    binds = [*_stdlib_dirs(), *package_paths(modules, hidden)]
    binds += [d for d in LIB_DIRS if os.path.isdir(d)] + ([LD_CACHE] if os.path.isfile(LD_CACHE) else [])
    masks = []
    for d in _stdlib_dirs():
        masks += [os.path.join(d, n) for n in PACKAGE_DIRS]
    for d in LIB_DIRS:
        masks += glob.glob(os.path.join(d, "python*", "*-packages"))
    masks = [m for m in masks if os.path.isdir(m)]
    return binds, masks


def _lock_flags(path: str) -> int:
    """The mount flags of the mount holding ``path`` that a bind in a user namespace must keep."""
    f = os.statvfs(path).f_flag
    keep = f & (MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_NOATIME | MS_NODIRATIME)
    return keep | (MS_RELATIME if f & ST_RELATIME else 0)


def _mountpoint(root: str, path: str, is_dir: bool) -> str:
    target = root + path
    if is_dir:
        os.makedirs(target, mode=0o755, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(target), mode=0o755, exist_ok=True)
        if not os.path.exists(target):
            open(target, "a").close()
    return target


def skeleton_dirs(binds: list[str], masks: list[str]) -> list[str]:
    """The directories the view makes only to hold its mounts: ancestors of a bind that are neither mounted nor
    inside a mount (``/usr`` for ``/usr/lib``, every directory above a venv's site-packages and site-packages
    itself), except the scratch ``/tmp``. Nothing needs to list them: a preloaded package imports its submodules
    through its own ``__path__`` (a bind), the standard library is a bind, and the import system treats a
    sys.path entry it may not list as one that holds nothing."""
    mounted = [*binds, *masks]
    dirs = set()
    for path in binds:
        parent = os.path.dirname(path)
        while parent not in ("/", ""):
            dirs.add(parent)
            parent = os.path.dirname(parent)
    return sorted(d for d in dirs if d != "/tmp" and not any(_under(d, m) for m in mounted))


def build_view(root: str, binds: list[str], masks: list[str], scratch_bytes: int) -> list[str]:
    """Mount the view on ``root`` (an empty directory); returns the paths it exposes. The directories made only
    to hold mounts are traverse-only (mode 111): a program reaches the libraries through them but cannot list
    them, so a venv inside a checkout under /tmp does not show the checkout's path or its other entries."""
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "mode=755,size=4m,nr_inodes=65536")
    # parents first; the scratch /tmp and the masks before the binds inside them: a library that lives under
    # /tmp (a venv in a clone there) is bound onto the scratch, not hidden by it
    ops = [(p, "bind") for p in binds] + [(m, "mask") for m in masks] + [("/tmp", "scratch")]
    ops.sort(key=lambda op: (op[0].count("/"), op[1] == "bind"))
    masked = []
    for path, kind in ops:
        if kind == "scratch":
            scratch = _mountpoint(root, path, True)
            opts = f"mode=711,size={scratch_bytes},nr_inodes=4096"
            mount("tmpfs", scratch, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, opts)
            continue
        if kind == "mask":
            if any(_under(path, b) for b in binds if b != path):
                target = _mountpoint(root, path, True)
                mount("tmpfs", target, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=755,size=64k")
                masked.append(target)
            continue
        real = os.path.realpath(path)
        target = _mountpoint(root, path, os.path.isdir(real))
        mount(real, target, None, MS_BIND | MS_REC)
        mount(None, target, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV | _lock_flags(real))
    for d in skeleton_dirs(binds, masks):
        os.chmod(root + d, 0o111)
    for target in masked:  # empty and read-only from now on
        mount(None, target, None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)
    for dev in DEVICES:
        if os.path.exists(dev):
            target = _mountpoint(root, dev, False)
            mount(dev, target, None, MS_BIND)
            ro = 0 if dev == "/dev/null" else MS_RDONLY
            mount(None, target, None, MS_REMOUNT | MS_BIND | MS_NOSUID | MS_NOEXEC | ro | _lock_flags(dev))
    mount(None, root, None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)
    return sorted(binds)


def pivot_into(root: str) -> None:
    """Make ``root`` the root of this mount namespace and detach the old one (``pivot_root(".", ".")``)."""
    nr = PIVOT_ROOT_NR.get(platform.machine())
    if nr is None:
        raise OSError(f"pivot_root: unknown system call number on {platform.machine()}")
    os.chdir(root)
    _sys(_libc.syscall(nr, b".", b"."), "pivot_root")
    _sys(_libc.umount2(b".", MNT_DETACH), "detach the old root")
    os.chdir("/")


def forget_host_paths() -> None:
    """Drop what the interpreter remembers of the host's directories (import caches, source lines, sys.path
    entries that are not in the view), so that a program cannot list them from memory."""
    import importlib
    import linecache

    sys.path[:] = [p for p in sys.path if p and os.path.isdir(p)]
    sys.path_importer_cache.clear()
    importlib.invalidate_caches()
    linecache.clearcache()
