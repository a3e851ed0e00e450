"""The repo stands alone: nothing reads a data folder beside the clone, and the package works wherever it is installed,
including an editable install whose source tree sits under /tmp, which the sandbox hides from programs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig

from echo_testing import REPO


def test_nothing_reads_a_shared_folder_beside_the_repo():
    out = subprocess.run(
        ["git", "grep", "-n", "-E", r"\.\./shared|parent / \"shared\"|ECHO_SHARED_DATA", "--",
         "echo_megatron", "tests", "bench", "docs", "README.md", ":!tests/test_standalone.py"],
        capture_output=True, text=True, cwd=REPO,
    )  # fmt: skip
    assert out.returncode == 1 and not out.stdout, out.stdout


def _venv_seeing_this_environment(venv) -> str:
    """A new venv whose dependencies come from this environment's site directories (a ``.pth``), without
    echo-megatron itself: what a user's venv holds once ``pip install -e`` has pulled the dependencies."""
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    py = str(venv / "bin" / "python")
    purelib = subprocess.run(
        [py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout.strip()  # fmt: skip
    here = dict.fromkeys(sysconfig.get_paths()[k] for k in ("purelib", "platlib"))
    with open(os.path.join(purelib, "this_environment.pth"), "w", encoding="utf-8") as f:
        f.write("\n".join(here) + "\n")
    return py


def test_editable_install_under_tmp_scores_from_another_folder(tmp_path):
    """Issue: an editable install whose source lives under /tmp could not start a sandbox worker (its private
    /tmp hid the source, and the editable finder's path is on no sys.path entry)."""
    clone = tmp_path / "clone"  # pytest's tmp_path is under /tmp
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "pyproject.toml", "README.md", "echo_megatron", "recipes"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.split()  # fmt: skip
    for rel in files:
        dst, src = clone / rel, REPO / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():  # echo_megatron/recipes -> ../recipes
            dst.symlink_to(os.readlink(src))
        else:
            dst.write_bytes(src.read_bytes())
    py = _venv_seeing_this_environment(tmp_path / "venv")
    pip = subprocess.run(
        [py, "-m", "pip", "install", "-q", "--no-deps", "--disable-pip-version-check", "-e", str(clone)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert pip.returncode == 0, pip.stderr[-3000:]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = subprocess.run([py, "-c", "import echo_megatron; print(echo_megatron.__file__)"], cwd=elsewhere,
                           capture_output=True, text=True, timeout=120).stdout  # fmt: skip
    assert where.startswith(str(clone)), where
    tinygsm = "def simple_math_problem():\n    apples = 12\n    eaten = 5\n    result = apples - eaten\n    return result\n"
    rows = [{"completion": tinygsm, "answer": "#### 7"}, {"completion": tinygsm, "answer": "#### 8"}]
    (elsewhere / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = subprocess.run(
        [str(tmp_path / "venv" / "bin" / "echo-megatron"), "score", "in.jsonl", "--task", "gsm8k", "--out", "out.jsonl"],
        cwd=elsewhere, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    got = [json.loads(line) for line in (elsewhere / "out.jsonl").read_text().splitlines()]
    assert [(r["format"], r["extracted"], r["reward"]) for r in got] == [
        ("code", "7", 1.0),
        ("code", "7", 0.0),
    ]


def test_shipped_recipes_load_from_any_folder(tmp_path, monkeypatch):
    from echo_megatron.config import ConfigError, load_config

    monkeypatch.chdir(tmp_path)
    assert load_config("recipes/demo/testbed.yaml").name == "demo_testbed"
    assert load_config("paper/150m_tg.yaml").name == "150m_tg"
    import pytest

    with pytest.raises(ConfigError, match="recipe file not found: recipes/nope.yaml"):
        load_config("recipes/nope.yaml")
