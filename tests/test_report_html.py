"""``echo-megatron report`` on hand-written run dirs: table values, embedded figures, plotted data, headline."""

from __future__ import annotations

import base64
import json
import re

import numpy as np
import pytest
import yaml

from echo_megatron.cli import main
from echo_megatron.report import plots
from echo_megatron.report.html import write_report
from echo_megatron.report.runs import (
    first_step_at_share,
    format_share_series,
    headline,
    load_run,
    load_runs,
    mixture,
)

STEPS = list(range(1, 11))


def rl_rows(start: dict[str, float], end: dict[str, float], acc0: float, acc1: float) -> list[dict]:
    """Linear interpolation of shares and accuracy over 10 steps, with per-format accuracy and KL/entropy."""
    rows = []
    for i, step in enumerate(STEPS):
        t = i / (len(STEPS) - 1)
        row = {
            "step": step,
            "phase": "rl",
            "reward": acc0 + t * (acc1 - acc0),
            "accuracy": acc0 + t * (acc1 - acc0),
        }
        for fmt in start:
            row[f"share/{fmt}"] = start[fmt] + t * (end[fmt] - start[fmt])
            row[f"acc/{fmt}"] = {"code": 0.9, "code_interp": 0.95, "nl": 0.05}[fmt]
        row["kl"] = 0.01 * step
        row["entropy"] = 1.0 / step
        rows.append(row)
    return rows


def make_run(root, name, algorithm, kl, rows, evals=(), base="runs/150m_tg+omi1/checkpoints", extra_rows=()):
    root.mkdir(parents=True)
    cfg = {
        "name": name,
        "model": {"preset": "paper_150m", "num_layers": 12, "hidden_size": 768},
        "rl": {"algorithm": algorithm, "initial_policy_kl_penalty": kl, "base": base},
    }
    (root / "config.yaml").write_text(yaml.safe_dump(cfg))
    with open(root / "metrics.jsonl", "w") as f:
        for r in [*extra_rows, *rows]:
            f.write(json.dumps(r) + "\n")
    if evals:
        (root / "eval").mkdir()
        for ev in evals:
            (root / "eval" / f"{ev['task']}.json").write_text(json.dumps(ev))
            (root / "eval" / f"{ev['task']}.generations.jsonl").write_text("{}\n")  # must be ignored
    return root


EVAL_A = {
    "task": "gsm8k",
    "n": 64,
    "temperature": 0.7,
    "num_problems": 100,
    "pass@1": 0.412,
    "pass@k": {"1": 0.40, "8": 0.7, "64": 0.9},
    "maj@k": {"8": 0.5, "64": 0.55},
    "per_format": {
        "code": {"count": 70, "share": 0.7, "accuracy": 0.5},
        "nl": {"count": 30, "share": 0.3, "accuracy": 0.2},
        "code_interp": {"count": 0, "share": 0.0, "accuracy": None},
    },
    "step": 10,
}


@pytest.fixture
def two_runs(tmp_path):
    start = {"code": 0.13, "code_interp": 0.26, "nl": 0.61}
    a = make_run(
        tmp_path / "sweep" / "grpo_kl0",
        "150m-grpo-kl0",
        "grpo",
        0.0,
        rl_rows(start, {"code": 0.7, "code_interp": 0.29, "nl": 0.01}, 0.39, 0.88),
        evals=[EVAL_A],
    )
    b = make_run(
        tmp_path / "sweep" / "ppo_kl1e-3",
        "150m-ppo-kl1e-3",
        "ppo",
        0.001,
        rl_rows(start, {"code": 0.0, "code_interp": 1.0, "nl": 0.0}, 0.39, 0.6),
        base="runs/150m_tg/checkpoints/iter_0001000",
    )
    return a, b


def test_series_and_facts(two_runs):
    a, _ = two_runs
    run = load_run(str(a))
    steps, shares = format_share_series(run.rl)
    assert steps == STEPS
    assert list(shares) == ["code", "code_interp", "nl"]
    np.testing.assert_allclose(shares["nl"], np.linspace(0.61, 0.01, 10))
    assert first_step_at_share(run.rl, "code") is None  # peaks at 70%
    assert first_step_at_share(run.rl, "code", 0.5) == 7  # 0.13 + t * 0.57 >= 0.5 first at t = 6/9
    # run b: code_interp 0.26 + t * 0.74 passes 0.9 first at t = 8/9 -> step 9
    assert first_step_at_share(load_run(str(two_runs[1])).rl, "code_interp") == 9
    assert mixture(run) == "150m_tg+omi1"
    assert headline(str(a)) == "nl share 61% → 1%, accuracy 39% → 88%, gsm8k pass@1 41.2%"


def test_plots_hold_the_series(two_runs):
    a, _ = two_runs
    run = load_run(str(a))
    fig = plots.format_accuracy(run)
    lines = {ln.get_label(): ln for ln in fig.axes[0].lines}
    assert set(lines) == {"code", "code_interp", "nl"}
    np.testing.assert_allclose(lines["nl"].get_xdata(), STEPS)
    np.testing.assert_allclose(lines["nl"].get_ydata(), [0.05] * 10)
    stack = plots.format_share(run).axes[0].collections
    assert [c.get_label() for c in stack] == ["code", "code_interp", "nl"]
    # the top edge of the stack is the cumulative share, 1.0 at every step
    top = stack[-1].get_paths()[0].vertices
    assert np.allclose(top[:, 1].max(), 1.0)
    kl_ax = plots.kl_entropy(run).axes[0]
    np.testing.assert_allclose(kl_ax.lines[0].get_ydata(), [0.01 * s for s in STEPS])
    pk = {ln.get_label(): ln for ln in plots.pass_at_k(run).axes[0].lines}
    np.testing.assert_allclose(pk["gsm8k pass@k"].get_xdata(), [1, 8, 64])
    np.testing.assert_allclose(pk["gsm8k pass@k"].get_ydata(), [0.40, 0.7, 0.9])
    np.testing.assert_allclose(pk["gsm8k maj@k"].get_ydata(), [0.5, 0.55])
    assert plots.pretrain_loss(run) is None  # no pretraining rows, no figure


def test_report_html_table_and_images(two_runs, tmp_path):
    a, b = two_runs
    rep = write_report([str(a), str(b)], str(tmp_path / "out"))
    text = open(rep.path, encoding="utf-8").read()
    table = text[text.index("<table>") : text.index("</table>")]
    row_a = table[table.index("150m-grpo-kl0") :].split("</tr>")[0]
    for cell in [
        "paper_150m",
        "150m_tg+omi1",
        "grpo",
        ">0<",
        "88.0%",
        "41.2%",
        "90.0%",
        "55.0%",
        "code (70%)",
    ]:
        assert cell in row_a, cell
    row_b = table[table.index("150m-ppo-kl1e-3") :].split("</tr>")[0]
    for cell in ["150m_tg<", "ppo", "0.001", "60.0%", "code_interp (100%)", ">9<"]:
        assert cell in row_b, cell
    assert "<th>pass@64</th>" in table and "<th>maj@64</th>" in table
    # every figure is embedded as a PNG data URI and also written to disk with the same bytes
    uris = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)
    assert len(uris) == len(rep.images) >= 2 + 2 * 4
    assert "http" not in text.replace("http-equiv", "")  # nothing to fetch
    for uri, path in zip(uris, rep.images):
        png = base64.b64decode(uri)
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        assert open(path, "rb").read() == png
    assert rep.headlines["150m-grpo-kl0"] in text


def test_cli_prints_headline_and_path(two_runs, tmp_path, capsys):
    a, b = two_runs
    out = tmp_path / "cli_out"
    assert main(["report", str(a.parent), "--out", str(out)]) == 0  # the sweep dir expands to both runs
    printed = capsys.readouterr().out
    assert re.search(
        r"^150m-grpo-kl0 +nl share 61% → 1%, accuracy 39% → 88%, gsm8k pass@1 41.2%$", printed, re.M
    )
    assert re.search(r"^150m-ppo-kl1e-3 +code_interp share 26% → 100%, accuracy 39% → 60%$", printed, re.M)
    assert f"report: {out / 'report.html'}" in printed
    assert (out / "compare_format_share.png").is_file()


def test_pretrain_only_and_bad_inputs(tmp_path, capsys):
    pre = make_run(
        tmp_path / "pre",
        "tiny-pretrain",
        "grpo",
        0.0,
        [],
        base=None,
        extra_rows=[{"step": s, "phase": "pretrain", "loss": 5.0 - 0.3 * s} for s in range(1, 6)],
    )
    assert headline(str(pre)) == "pretrain loss 4.7 → 3.5 over 5 logged steps"
    rep = write_report([str(pre)], str(tmp_path / "o"))
    text = open(rep.path).read()
    assert "pretrain_loss" in text and "tiny-pretrain" in text
    assert len(load_runs([str(pre), str(pre)])) == 2  # duplicate labels get disambiguated
    bad = tmp_path / "bad"
    (bad / "eval").mkdir(parents=True)
    (bad / "eval" / "gsm8k.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"gsm8k\.json: malformed JSON"):
        load_run(str(bad))
    assert main(["report", str(bad), "--out", str(tmp_path / "o2")]) == 2
    assert "malformed JSON" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "missing")]) == 2
