"""The sandbox as an unprivileged user: a user namespace replaces the uid drop, and the rest holds.

Run as root (CI), the test starts a child as ``nobody`` (65534) with the supplementary groups cleared, in a private
mount namespace where only the interpreter is made reachable through a root-only home (pyenv under /root); the
child then runs a pool and hostile programs of both formats (tests/adversarial_programs.py), while its own
environment holds an ``HF_TOKEN`` and its 0600 file holds the gold. Run as a non-root user, it does the same in
its own process. Without user namespaces the pool must refuse to start, in one line.

Cost: ~10 s (one pool, ~70 programs).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import textwrap

import pytest
from echo_testing import REPO

from echo_megatron.rewards import jail

NOBODY = 65534
CHECK = textwrap.dedent(
    """
    import json, os, sys
    from adversarial_programs import HUNT_PRELUDE, HUNTS, MARK, attacks
    from test_sandbox_adversarial import as_code, as_notebook
    from echo_megatron.rewards import SandboxError, SandboxPool, score

    gold, secret_file, token = sys.argv[1], sys.argv[2], sys.argv[3]
    report = {"uid": os.getuid()}
    try:
        with SandboxPool(workers=1, timeout_s=1.0, namespaces=False) as p:
            p.wait_ready()
    except SandboxError as e:
        report["refusal"] = str(e)
    with SandboxPool(workers=2, timeout_s=1.0, memory_mb=512) as pool:
        report["isolation"] = pool.isolation
        holder = f"def simple_math_problem():\\n    mark = '{MARK}{gold}'\\n    return {gold}"
        assert score([holder], [gold], "testbed", pool=pool)[0].correct
        bodies = attacks(1, 1, token, os.path.expanduser("~"), os.getcwd())
        hunts = {k: HUNTS[k] for k in ("environment", "scored_files_by_path", "other_processes_cmdlines",
                                       "gc_heap_strings", "read_the_templates_memory")}
        cases = []
        for name in ("fork_bomb", "os_system", "write_tmp", "write_home", "read_shadow", "socket_tcp_localhost",
                     "kill_parent", "kill_everything", "renice_everyone", "fsetown_sigio", "ptrace_attach",
                     "setuid_root", "unshare_escape", "mount_tmpfs", "setxattrat_463", "infinite_loop",
                     "alloc_10gb", "list_processes", "read_ssh_keys", "raise_rlimits", "chmod_own_dir"):
            cases += [(f"{f}:{name}", w(bodies[name] + "\\nreturn 42"), "42") for f, w in
                      (("code", as_code), ("code_interp", as_notebook))]
        for name, body in hunts.items():
            body = body.replace("PATHS", repr([secret_file]))
            cases += [(f"{f}:hunt:{name}", w(body, HUNT_PRELUDE), gold) for f, w in
                      (("code", as_code), ("code_interp", as_notebook))]
        res = score([c[1] for c in cases], [c[2] for c in cases], "testbed", pool=pool)
        report["results"] = {c[0]: [r.reward, r.error, r.detail[:80]] for c, r in zip(cases, res)}
        ok = score([as_code("return 6 * 7"), as_notebook("return 6 * 7")], ["42", "42"], "testbed", pool=pool)
        report["benign"] = [r.reward for r in ok]
        report["workers"] = pool.worker_pids
    report["left"] = [p for p in report["workers"] if os.path.exists(f"/proc/{p}")]
    print("REPORT " + json.dumps(report))
    """
)


def _blocked_ancestor(path: str, uid: int) -> str | None:
    """The first directory on the way to ``path`` that ``uid`` (not its owner) cannot traverse."""
    parts = path.strip("/").split("/")
    for i in range(1, len(parts) + 1):
        d = "/" + "/".join(parts[:i])
        st = os.stat(d)
        if st.st_uid != uid and not st.st_mode & 0o001:
            return d
    return None


def _become_nobody() -> None:
    """preexec: a private mount namespace where the interpreter's root-only ancestors (pyenv in /root) hold only
    the interpreter, then uid/gid nobody without groups."""
    jail._sys(jail._libc.unshare(jail.CLONE_NEWNS), "unshare")
    jail.mount(None, "/", None, jail.MS_REC | jail.MS_PRIVATE)
    needed = {os.path.realpath(p) for p in (sys.executable, sys.prefix, sys.base_prefix, *sys.path) if p}
    blocked: dict[str, set[str]] = {}
    for p in needed:
        a = _blocked_ancestor(p, NOBODY) if os.path.exists(p) else None
        if a and a != p:
            blocked.setdefault(a, set()).add(a + "/" + os.path.relpath(p, a).split("/")[0])
    for a, tops in blocked.items():
        stages = []
        for top in sorted(tops):
            stage = tempfile.mkdtemp()
            jail.mount(top, stage, None, jail.MS_BIND | jail.MS_REC)
            stages.append((top, stage))
        jail.mount("tmpfs", a, "tmpfs", jail.MS_NOSUID | jail.MS_NODEV, "mode=755")
        for top, stage in stages:
            os.makedirs(top, exist_ok=True)
            jail.mount(stage, top, None, 0x2000)  # MS_MOVE
    os.setgroups([])
    os.setresgid(NOBODY, NOBODY, NOBODY)
    os.setresuid(NOBODY, NOBODY, NOBODY)


def test_the_sandbox_as_an_unprivileged_user(tmp_path):
    import json
    import secrets

    gold = str(secrets.randbelow(9 * 10**11) + 10**11)
    token = f"pwned_{secrets.token_hex(6)}"
    secret = tmp_path / "secret.txt"
    secret.write_text(f"goldmark-{gold}\n")
    secret.chmod(0o600)
    os.chmod(tmp_path, 0o755)
    root = os.geteuid() == 0
    if root:
        os.chown(secret, NOBODY, NOBODY)
        for d in (tmp_path.parent, tmp_path.parent.parent):  # pytest's base temp is root-only
            os.chmod(d, os.stat(d).st_mode | 0o011)
    tests = os.path.join(str(REPO), "tests")
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "LANG": "C.UTF-8",
        "PYTHONPATH": os.pathsep.join([str(REPO), tests]),
        "HF_TOKEN": f"goldmark-{gold}",
        "WANDB_API_KEY": f"goldmark-{gold}",
    }
    out = subprocess.run(
        [sys.executable, "-c", CHECK, gold, str(secret), token],
        preexec_fn=_become_nobody if root else None,
        env=env,
        cwd=str(tmp_path),
        capture_output=True,
        text=True,
        timeout=600,
    )
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("REPORT ")]
    assert out.returncode == 0 and lines, out.stdout[-2000:] + out.stderr[-4000:]
    report = json.loads(lines[-1][len("REPORT ") :])
    assert report["uid"] != 0
    iso = report["isolation"]
    print(f"\nas uid {report['uid']}: {iso}")
    if not iso.get("userns"):
        pytest.fail(f"no user namespace for an unprivileged user here: {iso}")
    assert iso["safe"] and iso["pidns"] and iso["view"] and iso["seccomp"] and iso["caps_dropped"]
    assert (
        not iso["privdrop"] and iso["uid"] is None
    )  # no root: no uid to drop to, capabilities dropped instead
    assert "not safe here" in report["refusal"] and "\n" not in report["refusal"]
    bad = {k: v for k, v in report["results"].items() if v[0] != 0.0 or v[1] is None}
    assert not bad, bad
    assert len(report["results"]) >= 50
    assert report["benign"] == [1.0, 1.0] and report["left"] == []
    assert not [n for n in os.listdir("/tmp") if token in n] and not [
        n for n in os.listdir(tmp_path) if token in n
    ]
