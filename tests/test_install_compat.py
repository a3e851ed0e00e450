"""echo-megatron installs beside the Hydra-based frameworks its users have (NeMo, NeMo-RL, verl).

Those pin ``hydra-core 1.3``, which needs ``omegaconf < 2.4`` and ``antlr4-python3-runtime 4.9.*``. pip must
resolve echo-megatron together with it (a dry run against the package index: fails on a conflict), and the
resolved pair must really work: the config loader on every recipe and math-verify's LaTeX parser, run with
exactly the versions pip chose, in a subprocess that sees them first.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from echo_testing import REPO

PIP = [sys.executable, "-m", "pip", "--disable-pip-version-check"]


@pytest.fixture(scope="module")
def hydra_resolution(tmp_path_factory) -> dict[str, str]:
    report = tmp_path_factory.mktemp("pip") / "report.json"
    out = subprocess.run(
        [*PIP, "install", "--dry-run", "--quiet", "--report", str(report), str(REPO), "hydra-core==1.3.*"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, (
        f"pip cannot install echo-megatron beside hydra-core 1.3:\n{out.stderr[-3000:]}"
    )
    rows = json.loads(report.read_text())["install"]
    return {r["metadata"]["name"].lower(): r["metadata"]["version"] for r in rows}


def test_pip_resolves_echo_megatron_with_hydra_core_1_3(hydra_resolution):
    got = hydra_resolution
    assert got["echo-megatron"]
    assert got["hydra-core"].startswith("1.3.")
    # what pip would install or keep for the pair: omegaconf 2.3 and the antlr runtime hydra pins
    omegaconf = got.get("omegaconf") or _installed("omegaconf")
    antlr = got.get("antlr4-python3-runtime") or _installed("antlr4-python3-runtime")
    assert omegaconf.startswith("2.3."), omegaconf
    assert antlr.startswith("4.9."), antlr


def _installed(name: str) -> str:
    import importlib.metadata as md

    return md.version(name)


def test_config_and_math_verify_work_with_the_resolved_versions(hydra_resolution, tmp_path):
    names = ("omegaconf", "antlr4-python3-runtime")  # as pip resolved them, or as installed if it keeps those
    pins = [f"{n}=={hydra_resolution.get(n) or _installed(n)}" for n in names]
    target = tmp_path / "site"
    subprocess.run(
        [*PIP, "install", "--quiet", "--no-deps", "--target", str(target), *pins],
        check=True,
        capture_output=True,
        timeout=600,
    )
    probe = f"""
import glob, omegaconf, antlr4
from math_verify import parse, verify
from echo_megatron.config import load_config
from echo_megatron.config.study import is_study
assert omegaconf.__version__.startswith("2.3."), omegaconf.__version__
recipes = [p for p in glob.glob({str(REPO / "recipes")!r} + "/**/*.yaml", recursive=True)
           if "/sweeps/" not in p and not p.endswith("_pipeline.yaml") and not is_study(p)]
for p in recipes:
    load_config(p, ["model.num_layers=2"])
assert verify(parse("$\\\\frac{{1}}{{2}}$"), parse("$0.5$"))
assert not verify(parse("$\\\\sqrt{{2}}$"), parse("$1.5$"))
print("ok", omegaconf.__version__, len(recipes))
"""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(target), str(REPO)]))
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0 and out.stdout.startswith("ok 2.3."), out.stderr[-3000:]
