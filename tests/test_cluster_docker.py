"""Containers without a registry: hadolint + shellcheck (docker/lint.sh), the Apptainer definition agrees with
the Dockerfile, and the Dockerfile's install step (docker/install.sh on the files it COPYs) works in a fresh
venv that, like the NGC base, already has torch."""

from __future__ import annotations

import fnmatch
import os
import re
import shutil
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCKERFILE = os.path.join(REPO, "docker", "Dockerfile")
DEFFILE = os.path.join(REPO, "docker", "echo-megatron.def")


def _dockerfile() -> str:
    with open(DOCKERFILE, encoding="utf-8") as f:
        return f.read()


def _copied_sources() -> list[str]:
    """Every source path of the Dockerfile's COPY instructions."""
    sources = []
    for line in _dockerfile().splitlines():
        if line.startswith("COPY "):
            sources += line.split()[1:-1]
    return sources


def test_lint_passes_hadolint_and_shellcheck_on_every_script():
    out = subprocess.run(
        ["bash", os.path.join(REPO, "docker", "lint.sh")], capture_output=True, text=True, timeout=900
    )
    assert out.returncode == 0, out.stdout[-5000:] + out.stderr[-3000:]
    assert "hadolint: docker/Dockerfile" in out.stdout
    listed = out.stdout.split("scripts: ", 1)[1].splitlines()[0].split()
    for script in ("./slurm/local_slurm.sh", "./docker/install.sh", "./docker/lint.sh"):
        assert script in listed


def test_dockerfile_builds_on_ngc_and_installs_with_the_tested_script():
    text = _dockerfile()
    base = re.search(r"^ARG BASE_IMAGE=(\S+)", text, re.M).group(1)
    assert base.startswith("nvcr.io/nvidia/pytorch:") and base.endswith("-py3")
    assert "FROM ${BASE_IMAGE}" in text
    assert "RUN bash docker/install.sh /opt/echo-megatron" in text
    for src in _copied_sources():
        assert src == "README.md" or os.path.exists(os.path.join(REPO, src)), src


def test_apptainer_definition_matches_the_dockerfile():
    with open(DEFFILE, encoding="utf-8") as f:
        text = f.read()
    base = re.search(r"^ARG BASE_IMAGE=(\S+)", _dockerfile(), re.M).group(1)
    assert re.search(r"^Bootstrap: docker$", text, re.M)
    assert re.search(rf"^From: {re.escape(base)}$", text, re.M)  # the same NGC release
    files = re.search(r"^%files\n(.*?)\n\n", text, re.M | re.S).group(1).split("\n")
    sources = [line.split()[0] for line in files]
    assert sorted(sources) == sorted(s.rstrip("/") for s in _copied_sources())
    assert "bash /opt/echo-megatron/docker/install.sh /opt/echo-megatron" in text
    for section in ("%post", "%environment", "%runscript", "%test", "%labels"):
        assert re.search(rf"^{section}$", text, re.M), section


def test_dockerignore_keeps_what_the_image_copies():
    with open(os.path.join(REPO, ".dockerignore"), encoding="utf-8") as f:
        patterns = [p.strip() for p in f if p.strip() and not p.startswith("#")]
    for src in _copied_sources():
        assert not any(fnmatch.fnmatch(src, p) for p in patterns), src
    for heavy in ("runs", "data", ".git", ".venv"):
        assert heavy in patterns


def make_venv_with_image_torch(venv) -> None:
    """A new venv that sees torch the way an NGC image's Python does: in a site directory outside the venv.

    ``--system-site-packages`` would not do it when the suite itself runs in a venv (its "system" is the base
    interpreter, which has no torch), so the venv gets a ``.pth`` naming the directory this process imports torch
    from, wherever that is (a venv, a user site, the system)."""
    import sysconfig

    import torch

    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    py = str(venv / "bin" / "python")
    purelib = subprocess.run(
        [py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.strip()
    torch_site = os.path.dirname(os.path.dirname(os.path.abspath(torch.__file__)))
    assert torch_site != sysconfig.get_paths()["stdlib"]
    with open(os.path.join(purelib, "image_torch.pth"), "w", encoding="utf-8") as f:
        f.write(torch_site + "\n")


def test_install_step_works_in_a_fresh_venv(tmp_path):
    """The Dockerfile's context (only what it COPYs) installed by docker/install.sh into a new venv that sees
    this machine's torch (as the NGC image has its own): echo-megatron then runs from the venv, not the repo."""
    ctx = tmp_path / "context"
    for src in _copied_sources():
        path = os.path.join(REPO, src)
        if src == "README.md" and not os.path.exists(path):
            (ctx / "README.md").parent.mkdir(parents=True, exist_ok=True)
            (ctx / "README.md").write_text("echo-megatron\n")  # the lead's README lands with the repo
            continue
        dest = ctx / src
        dest.parent.mkdir(parents=True, exist_ok=True)
        if os.path.isdir(path):
            shutil.copytree(path, dest, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(path, dest)
    venv = tmp_path / "venv"
    py = str(venv / "bin" / "python")
    make_venv_with_image_torch(venv)
    out = subprocess.run(
        ["bash", str(ctx / "docker" / "install.sh"), str(ctx)],
        capture_output=True,
        text=True,
        cwd=str(tmp_path),
        env=dict(os.environ, PYTHON=py, PIP_DISABLE_PIP_VERSION_CHECK="1"),
        timeout=900,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "megatron-core 0.16.1" in out.stdout
    where = subprocess.run(
        [py, "-c", "import echo_megatron; print(echo_megatron.__file__)"],
        capture_output=True,
        text=True,
        cwd=str(tmp_path),
        timeout=300,
    ).stdout.strip()
    assert where.startswith(str(venv)), where  # installed into the venv (a wheel), not the source tree
    cli = subprocess.run(
        [
            str(venv / "bin" / "echo-megatron"),
            "plan",
            os.path.join(REPO, "recipes", "paper", "1b_pretrain.yaml"),
        ],
        capture_output=True,
        text=True,
        cwd=str(tmp_path),
        timeout=300,
    )
    assert cli.returncode == 0 and "total per GPU" in cli.stdout, cli.stderr[-2000:]


@pytest.mark.parametrize("script", ["slurm/local_slurm.sh", "docker/install.sh", "docker/lint.sh"])
def test_scripts_are_strict_bash(script):
    with open(os.path.join(REPO, script), encoding="utf-8") as f:
        text = f.read()
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "set -euo pipefail" in text
