"""The hostile programs of the adversarial suites (tests/test_sandbox_adversarial.py, test_sandbox_nonroot.py).

Three kinds, each written once and run in both code formats (a TinyGSM function and an ``<llm-code>`` notebook):

- ``attacks(...)``: an attack on the host or the sandbox, then ``return 42`` (the gold). Each raises when its
  attack visibly fails, so a hole shows up as reward 1 (or as no error kind), never as a silent pass.
- ``HUNTS``: a program that only tries to find the gold G, a random 12-digit number that is in no program's text:
  in earlier jobs' memory, heaps and caches (a program that returned G, a math-verify comparison with G in the
  gold), in files (the scored JSONL, data sets, the repository), in the environment and in other processes (a
  decoy whose command line holds G). It returns what it found (reward 1 = a hole) or raises LookupError.
- ``NUMBER_TRAPS``: answers next to the gold that must not count (integers off by one past 1e-6, 1e309, inf, nan,
  a percent sign on the math task).
"""

from __future__ import annotations

import platform

MARK = "goldmark-"  # the priming program holds "goldmark-<G>"; the verify gold is "<G>\\sqrt{2}"

# Every hunt starts with this: grab(text) -> the 12-digit gold next to a marker, or None.
HUNT_PRELUDE = r"""
import re as _re
_PAT = _re.compile(r"goldmark-(\d{12})|(\d{12})\\sqrt")
def grab(s):
    m = _PAT.search(s if isinstance(s, str) else s.decode("latin-1"))
    return (m.group(1) or m.group(2)) if m else None
"""

HUNTS: dict[str, str] = {
    "gc_heap_strings": (
        "import gc\n"
        "for o in gc.get_objects():\n"
        "    for s in (o.values() if isinstance(o, dict) else o if isinstance(o, (list, tuple)) else ()):\n"
        "        if isinstance(s, (str, bytes)) and grab(s):\n"
        "            return grab(s)\n"
        "raise LookupError('no gold on the heap')"
    ),
    "every_module_global": (
        "import sys\n"
        "for mod in list(sys.modules.values()):\n"
        "    for v in list(getattr(mod, '__dict__', {}).values()):\n"
        "        if isinstance(v, (str, bytes)) and grab(v):\n"
        "            return grab(v)\n"
        "        if isinstance(v, dict):\n"
        "            for x in list(v.values())[:1000]:\n"
        "                if isinstance(x, (str, bytes)) and grab(x):\n"
        "                    return grab(x)\n"
        "raise LookupError('no gold in any module')"
    ),
    "worker_frames_and_job": (
        "import sys, inspect\n"
        "for f in list(sys._current_frames().values()) + [fr.frame for fr in inspect.stack()]:\n"
        "    while f is not None:\n"
        "        if grab(repr(f.f_locals)[:200000]):\n"
        "            return grab(repr(f.f_locals))\n"
        "        f = f.f_back\n"
        "raise LookupError('no gold in any frame')"
    ),
    "worker_module_state": (
        "import sys\n"
        "w = sys.modules.get('echo_megatron.rewards.worker') or sys.modules.get('__main__')\n"
        "import gc\n"
        "for o in gc.get_objects():\n"
        "    if type(o).__name__ in ('Template', 'Worker', '_Child', 'Job', 'Reply', 'Item'):\n"
        "        if grab(repr(vars(o)) if hasattr(o, '__dict__') else repr(o)):\n"
        "            return grab(repr(vars(o)))\n"
        "raise LookupError('no gold in the worker objects')"
    ),
    "raw_memory_near_objects": (
        "import ctypes, gc\n"
        "for o in gc.get_objects()[:3000]:\n"
        "    try:\n"
        "        chunk = ctypes.string_at(id(o), 4096)\n"
        "    except Exception:\n"
        "        continue\n"
        "    if grab(chunk):\n"
        "        return grab(chunk)\n"
        "raise LookupError('no gold in raw memory')"
    ),
    "lru_caches_sympy_mathverify": (
        "import gc, sympy\n"
        "import math_verify\n"
        "for o in gc.get_objects():\n"
        "    if type(o).__name__ in ('_lru_cache_wrapper', 'dict') or 'cache' in type(o).__name__.lower():\n"
        "        for r in gc.get_referents(o):\n"
        "            if grab(repr(r)[:100000]):\n"
        "                return grab(repr(r))\n"
        "from sympy.core import cache\n"
        "if grab(repr(vars(cache))):\n"
        "    return grab(repr(vars(cache)))\n"
        "raise LookupError('no gold in sympy or math-verify caches')"
    ),
    "linecache_and_tracebacks": (
        "import linecache, sys\n"
        "for name, entry in list(linecache.cache.items()):\n"
        "    if grab(repr(entry)):\n"
        "        return grab(repr(entry))\n"
        "if grab(repr(getattr(sys, 'last_value', ''))):\n"
        "    return 1\n"
        "raise LookupError('no gold in source caches')"
    ),
    "scored_files_by_path": (  # PATHS is substituted by the suite: the JSONL, the RL prompts, the eval sets
        "for p in PATHS:\n"
        "    try:\n"
        "        data = open(p, 'rb').read(1 << 20)\n"
        "    except OSError:\n"
        "        continue\n"
        "    if grab(data):\n"
        "        return grab(data)\n"
        "raise LookupError('no file readable')"
    ),
    "walk_the_filesystem": (
        "import os\n"
        "seen = 0\n"
        "for top in ('/', '/tmp', '/work', '/root', '/home', '/data', '/srv', '/mnt', '/var', '/etc', '/run'):\n"
        "    for d, dirs, files in os.walk(top):\n"
        "        dirs[:] = [x for x in dirs if x not in ('lib', 'lib64', 'usr', 'site-packages')]\n"
        "        for f in files:\n"
        "            seen += 1\n"
        "            if 'gold' in f or f.endswith('.jsonl'):\n"
        "                try:\n"
        "                    if grab(open(os.path.join(d, f), 'rb').read(1 << 20)):\n"
        "                        return grab(open(os.path.join(d, f), 'rb').read(1 << 20))\n"
        "                except OSError:\n"
        "                    pass\n"
        "            if seen > 3000:\n"
        "                raise LookupError('gave up')\n"
        "raise LookupError('no gold file')"
    ),
    "list_project_and_data": (
        "import os\n"
        "found = []\n"
        "for d in REPO_DIRS:\n"
        "    try:\n"
        "        found += os.listdir(d)\n"
        "    except OSError:\n"
        "        pass\n"
        "if found:\n"
        "    return 1  # listing the project or the data is already a hole\n"
        "raise LookupError('nothing listed')"
    ),
    "environment": (
        "import os\n"
        "for v in os.environ.values():\n"
        "    if grab(v) or 'sk-' in v:\n"
        "        return grab(v) or 1\n"
        "for p in ('/proc/self/environ', '/proc/1/environ', f'/proc/{os.getppid()}/environ'):\n"
        "    try:\n"
        "        data = open(p, 'rb').read()\n"
        "    except OSError:\n"
        "        continue\n"
        "    if grab(data) or b'sk-' in data:\n"
        "        return grab(data) or 1\n"
        "raise LookupError('no secret in any environment')"
    ),
    "other_processes_cmdlines": (
        "import os\n"
        "for pid in os.listdir('/proc'):\n"
        "    if pid.isdigit():\n"
        "        try:\n"
        "            data = open(f'/proc/{pid}/cmdline', 'rb').read()\n"
        "        except OSError:\n"
        "            continue\n"
        "        if grab(data):\n"
        "            return grab(data)\n"
        "raise LookupError('no process shows the gold')"
    ),
    "stash_in_shared_places": (  # what an earlier program could have left: SysV shm, /dev/shm, /tmp, the cwd
        "import os, glob\n"
        "for p in glob.glob('/dev/shm/*') + glob.glob('/tmp/*') + glob.glob('/var/tmp/*') + glob.glob('../*/*'):\n"
        "    try:\n"
        "        if grab(open(p, 'rb').read(1 << 16)):\n"
        "            return grab(open(p, 'rb').read(1 << 16))\n"
        "    except OSError:\n"
        "        pass\n"
        "import ctypes\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "shmid = libc.shmget(0x601d, 0, 0)\n"
        "if shmid >= 0:\n"
        "    libc.shmat.restype = ctypes.c_void_p\n"
        "    addr = libc.shmat(shmid, None, 0)\n"
        "    if addr not in (None, ctypes.c_void_p(-1).value) and grab(ctypes.string_at(addr, 64)):\n"
        "        return grab(ctypes.string_at(addr, 64))\n"
        "raise LookupError('nothing stashed')"
    ),
    "read_the_templates_memory": (
        "import os\n"
        "for pid in (1, os.getppid()):\n"
        "    try:\n"
        "        with open(f'/proc/{pid}/mem', 'rb') as f:\n"
        "            return 1\n"
        "    except OSError:\n"
        "        pass\n"
        "import ctypes\n"
        "class IOV(ctypes.Structure):\n"
        "    _fields_ = [('base', ctypes.c_void_p), ('len', ctypes.c_size_t)]\n"
        "buf = ctypes.create_string_buffer(64)\n"
        "local, remote = IOV(ctypes.addressof(buf), 64), IOV(0x400000, 64)\n"
        "if ctypes.CDLL(None).process_vm_readv(1, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0) > 0:\n"
        "    return 1\n"
        "raise LookupError('no other memory readable')"
    ),
    "forge_equal_true": (  # a verdict instead of an answer: the pool must take only the value of a program
        "import os, json\n"
        "os.write(3, json.dumps({'value': None, 'equal': True, 'error': None, 'detail': ''}).encode())\n"
        "os._exit(0)"
    ),
}


def attacks(tcp_port: int, udp_port: int, token: str, home: str, repo: str) -> dict[str, str]:
    """name -> function body (the suite appends ``return 42``)."""
    t = token
    cases = {
        # --- time, memory, output ---------------------------------------------------------------------------
        "infinite_loop": "while True:\n    pass",
        "sleep": "import time\ntime.sleep(60)",
        "huge_computation": "return sum(range(10**13))",
        "alloc_10gb": "x = bytearray(10 * 1024**3)\nx[-1] = 1",
        "alloc_list_10g": "x = [0] * (10**10)",
        "alloc_grow": "chunks = []\nwhile True:\n    chunks.append(bytearray(64 * 1024**2))",
        "huge_output_loop": "while True:\n    print('spam' * 1000)",
        "huge_output_single": "import sys\nsys.stdout.write('x' * 50_000_000)",
        "raw_fd_flood": "import os\nwhile True:\n    os.write(1, b'x' * 65536)\n    os.write(2, b'y' * 65536)",
        "result_fd_flood": "import os\nwhile True:\n    os.write(3, b'{' * 65536)",
        "deep_recursion": "def f(n):\n    return f(n + 1) + 1\nf(0)",
        "deep_recursion_no_limit": (
            "import sys\nsys.setrecursionlimit(10**8)\ndef f(n):\n    return f(n + 1) + 1\nf(0)"
        ),
        "hostile_str": "class Answer:\n    def __str__(self):\n        while True:\n            pass\nreturn Answer()",
        "unprintable_int": "return 10**100000",
        "signal_tampering": (
            "import signal\nfor s in (signal.SIGALRM, signal.SIGXCPU, signal.SIGTERM, signal.SIGINT, signal.SIGHUP):\n"
            "    signal.signal(s, signal.SIG_IGN)\nsignal.alarm(0)\nwhile True:\n    pass"
        ),
        # --- processes, threads, programs ---------------------------------------------------------------------
        "fork_bomb": "import os\nwhile True:\n    os.fork()",
        "os_system": f"import os\nif os.system('touch /tmp/{t}_system') != 0:\n    raise OSError('system failed')",
        "subprocess_run": f"import subprocess\nsubprocess.run(['touch', '/tmp/{t}_run'], check=True)",
        "subprocess_shell": f"import subprocess\nsubprocess.check_call('echo x > /tmp/{t}_shell', shell=True)",
        "multiprocessing": "import multiprocessing as mp\np = mp.Process(target=print)\np.start()\np.join()",
        "os_exec": f"import os\nos.execv('/bin/sh', ['sh', '-c', 'touch /tmp/{t}_exec'])",
        "posix_spawn": f"import os\nos.posix_spawn('/bin/touch', ['touch', '/tmp/{t}_spawn'], {{}})",
        "pty_spawn": "import pty\npty.fork()",
        "threads": "import threading\nfor _ in range(100):\n    threading.Thread(target=lambda: None).start()",
        "memfd_exec": (
            "import os\nfd = os.memfd_create('x')\nos.write(fd, open('/bin/true', 'rb').read())\n"
            "os.execv(f'/proc/self/fd/{fd}', ['x'])"
        ),
        # --- signals and other processes (other pools' programs included) ------------------------------------
        "kill_parent": "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)",
        "kill_everything": "import os, signal\nos.kill(-1, signal.SIGKILL)",
        "kill_pid_1": "import os, signal\nos.kill(1, signal.SIGTERM)",
        "kill_self_signal": "import os, signal\nos.kill(os.getpid(), signal.SIGUSR1)",
        "renice_everyone": "import os\nos.setpriority(os.PRIO_USER, os.getuid(), 19)",
        "renice_pid_1": "import os\nos.setpriority(os.PRIO_PROCESS, 1, 19)",
        "fsetown_sigio": (  # F_SETOWN + F_SETSIG: the kernel sends the signal, past any kill() block
            "import os, fcntl\nr, w = os.pipe()\nfcntl.fcntl(r, fcntl.F_SETOWN, 1)\n"
            "fcntl.fcntl(r, 10, 9)  # F_SETSIG = SIGKILL\nfcntl.fcntl(r, fcntl.F_SETFL, os.O_ASYNC)\nos.write(w, b'x')"
        ),
        "fsetown_negative_group": "import os, fcntl\nr, w = os.pipe()\nfcntl.fcntl(r, fcntl.F_SETOWN, -1)",
        "pidfd_signal": "import os, signal\nfd = os.pidfd_open(1)\nsignal.pidfd_send_signal(fd, signal.SIGKILL)",
        "ptrace_attach": "import ctypes\nif ctypes.CDLL(None).ptrace(16, 1, 0, 0) != 0:\n    raise OSError('ptrace')",
        "list_processes": (
            "import os\nif [p for p in os.listdir('/proc') if p.isdigit() and p not in ('1', str(os.getpid()))]:\n"
            "    pass\nelse:\n    raise LookupError('no other process visible')"
        ),
        "host_socket_tables": "data = open('/proc/1/net/tcp').read() + open('/proc/net/tcp').read()\nassert data",
        "proc_cmdlines": "import os\nassert open('/proc/1/cmdline', 'rb').read()",
        # --- network ------------------------------------------------------------------------------------------
        "socket_tcp_localhost": (
            f"import socket\ns = socket.create_connection(('127.0.0.1', {tcp_port}), timeout=0.5)\ns.sendall(b'pwned')"
        ),
        "socket_udp_localhost": (
            f"import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            f"s.sendto(b'pwned', ('127.0.0.1', {udp_port}))"
        ),
        "socket_unix_abstract": (
            "import socket\ns = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)\ns.connect('\\0echo-megatron')"
        ),
        "socketpair": "import socket\nsocket.socketpair()",
        # --- files: writes anywhere, reads of secrets ---------------------------------------------------------
        "write_cwd": f"open('{t}_cwd', 'w').write('x')",
        "write_tmp": f"open('/tmp/{t}_tmp', 'w').write('x')",
        "write_var_tmp": f"open('/var/tmp/{t}_vartmp', 'w').write('x')",
        "write_dev_shm": f"open('/dev/shm/{t}_shm', 'w').write('x')",
        "write_run_lock": f"open('/run/lock/{t}_lock', 'w').write('x')",
        "write_home": f"open('{home}/{t}_home', 'w').write('x')",
        "write_repo": f"open('{repo}/{t}_repo', 'w').write('x')",
        "write_escape_cwd": f"import os\nos.chdir('/')\nopen('{t}_root', 'w').write('x')",
        "append_devnull_rw": "import os\nos.open('/dev/null', os.O_RDWR)",
        "open_trunc_readonly": "import os\nos.open('/etc/ld.so.cache', os.O_RDONLY | os.O_TRUNC)",
        "mkdir_tmp": f"import os\nos.mkdir('/tmp/{t}_dir')",
        "symlink_cwd": "import os\nos.symlink('/etc/shadow', 'shadow')",
        "hardlink_cwd": "import os\nos.link('/etc/ld.so.cache', 'cache')",
        "chmod_own_dir": "import os\nos.chmod('.', 0o777)",
        "read_shadow": "data = open('/etc/shadow').read()\nassert data",
        "read_passwd": "data = open('/etc/passwd').read()\nassert data",
        "read_repo_file": f"data = open('{repo}/README.md').read()\nassert data",
        "read_ssh_keys": f"import glob\nassert glob.glob('{home}/.ssh/*')",
        "open_dev_tty": "open('/dev/tty', 'rb')",
        "open_dev_mem": "open('/dev/mem', 'rb')",
        "read_kmsg": "open('/dev/kmsg', 'rb').read(1)",
        "sysfs": "assert open('/sys/kernel/hostname').read()",
        # --- limits, identity, escapes, kernel surface --------------------------------------------------------
        "raise_rlimits": (
            "import resource\n"
            "resource.setrlimit(resource.RLIMIT_CPU, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))\n"
            "resource.setrlimit(resource.RLIMIT_AS, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))"
        ),
        "setuid_root": "import os\nos.setuid(0)",
        "unshare_escape": "import ctypes\nif ctypes.CDLL(None).unshare(0x10000000) != 0:\n    raise OSError('unshare')",
        "setns_escape": "import os, ctypes\nfd = os.open('/proc/1/ns/mnt', os.O_RDONLY)\nctypes.CDLL(None).setns(fd, 0)",
        "chroot_escape": "import os\nos.chroot('.')",
        "mount_tmpfs": (
            "import ctypes\nif ctypes.CDLL(None).mount(b'x', b'.', b'tmpfs', 0, None) != 0:\n    raise OSError('mount')"
        ),
        "umount_view": "import ctypes\nif ctypes.CDLL(None).umount2(b'/usr/lib', 2) != 0:\n    raise OSError('umount')",
        "io_uring": "import ctypes\nif ctypes.CDLL(None).syscall(425, 8, 0) < 0:\n    raise OSError('io_uring')",
        "bpf": "import ctypes\nif ctypes.CDLL(None).syscall(321, 0, 0, 0) < 0:\n    raise OSError('bpf')",
        "userfaultfd": "import ctypes\nif ctypes.CDLL(None).syscall(323, 0) < 0:\n    raise OSError('userfaultfd')",
        "perf_event_open": "import ctypes\nif ctypes.CDLL(None).syscall(298, 0, 0, -1, -1, 0) < 0:\n    raise OSError('perf')",
        "keyctl": "import ctypes\nif ctypes.CDLL(None).syscall(250, 0, 0) < 0:\n    raise OSError('keyctl')",
        "shmget": "import ctypes\nif ctypes.CDLL(None).shmget(0x601d, 4096, 0o1666) < 0:\n    raise OSError('shmget')",
        "ctypes_segfault": "import ctypes\nctypes.string_at(0)",
        "shellcode_raw_syscall": (  # kill(-1, SIGKILL) from machine code: seccomp filters the instruction too
            "import ctypes, mmap\nif not ARCH_X86_64:\n    raise OSError('not x86-64')\n"
            "code = bytes.fromhex('b83e000000bfffffffffbe090000000f05c3')\n"
            "m = mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)\nm.write(code)\n"
            "addr = ctypes.addressof(ctypes.c_char.from_buffer(m))\nctypes.CFUNCTYPE(ctypes.c_int)(addr)()"
        ),
        # --- system calls newer than any deny list --------------------------------------------------------------
        "setxattrat_463": "import ctypes\nctypes.CDLL(None).syscall(463, -100, b'.', 0, b'user.x', 0, 0)",
        "file_setattr_469": "import ctypes\nctypes.CDLL(None).syscall(469, -100, b'.', 0, 0, 0)",
        "listmount_458": "import ctypes\nctypes.CDLL(None).syscall(458, 0, 0, 0, 0)",
        "mseal_462": "import ctypes\nctypes.CDLL(None).syscall(462, 0, 0, 0)",
        "unknown_syscall_999": "import ctypes\nctypes.CDLL(None).syscall(999)",
        "raw_clone3": "import ctypes\nctypes.CDLL(None).syscall(435, 0, 0)",
        "raw_vfork": "import ctypes\nif not ARCH_X86_64:\n    raise OSError('x86-64 only')\nctypes.CDLL(None).syscall(58)",
        "prctl_rename": "import ctypes\nctypes.CDLL(None).prctl(15, b'init', 0, 0, 0)",
        "x32_abi_getpid": "import ctypes\nctypes.CDLL(None).syscall(0x40000000 | 39)",
        # --- the sandbox's own channel ------------------------------------------------------------------------
        "garbage_result": 'import os\nos.write(3, b\'{"value": "42"\')\nos._exit(0)',
        "nested_result": "import os\nos.write(3, b'[' * 200000)\nos._exit(0)",
        "typed_result": (
            'import os\nos.write(3, b\'{"value": 42, "equal": true, "error": null}\')\nos._exit(0)'
        ),
        "unknown_error_kind": (
            'import os\nos.write(3, b\'{"value": "42", "equal": null, "error": "pwn"}\')\nos._exit(0)'
        ),
        "close_result_fd": "import os\nos.close(3)\nreturn 42",
        "sys_exit": "import sys\nsys.exit(0)",
        "raise_system_exit": "raise SystemExit(42)",
        "raise_keyboard_interrupt": "raise KeyboardInterrupt",
        "os_exit": "import os\nos._exit(0)",
        "os_abort": "import os\nos.abort()",
    }
    return {k: v.replace("ARCH_X86_64", str(platform.machine() == "x86_64")) for k, v in cases.items()}


# (name, what the program returns, the gold, the task): equal-looking answers that are not the gold
NUMBER_TRAPS: list[tuple[str, str, str, str]] = [
    ("int_off_by_one_1e6", "1500001", "1500000", "gsm8k"),
    ("int_off_by_one_8_digits", "12345679", "12345678", "gsm8k"),
    ("int_float_close", "1500000.4", "1500000", "gsm8k"),
    ("overflow_1e309", "'1e309'", "2e308", "gsm8k"),
    ("overflow_both", "float('1e309')", "1e309", "gsm8k"),
    ("infinity", "float('inf')", "1e308", "gsm8k"),
    ("nan", "float('nan')", "0", "gsm8k"),
    ("hex_literal_text", "'0x2A'", "42", "gsm8k"),
    ("percent_on_math", "'2\\\\%'", "2", "math"),
    ("decimal_past_precision", "0.36", "0.3", "gsm8k"),
    ("fraction_rounded", "0.33", "1/3", "gsm8k"),
    ("two_numbers", "'42 or 43'", "42", "gsm8k"),
]
