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


# ---- a demo-like pair: a base run and an RL run from it, evaluated at several checkpoints ----------------------


def k_eval(step: int, p1: float, pn: float, n: int = 16, greedy: float = 0.5) -> dict:
    """An eval file with greedy and sampled blocks; pass@k rises from p1 (k=1) to pn (k=n) linearly in log k."""
    ks = list(range(1, n + 1))
    pk = {str(k): p1 + (pn - p1) * np.log2(k) / np.log2(n) for k in ks}
    mk = {str(k): p1 + 0.5 * (pn - p1) * np.log2(k) / np.log2(n) for k in ks}
    per_format = {
        "code": {"count": 3, "share": 0.3, "accuracy": 0.9},
        "nl": {"count": 7, "share": 0.7, "accuracy": 0.2},
    }
    greedy_block = {
        "n": 1,
        "temperature": 0.0,
        "accuracy": greedy,
        "pass@k": {"1": greedy},
        "per_format": per_format,
    }
    sampled = {
        "n": n,
        "temperature": 0.7,
        "accuracy": p1,
        "pass@k": pk,
        "maj@k": mk,
        "per_format": per_format,
    }
    return {
        "task": "testbed",
        "n": n,
        "temperature": 0.7,
        "num_problems": 10,
        "pass@1": greedy,
        "pass@k": pk,
        "maj@k": mk,
        "per_format": per_format,
        "step": step,
        "greedy": greedy_block,
        "sampled": sampled,
    }


def make_demo_runs(root, reward_offset: float = 0.0):
    """``root/base`` (pretraining rows, data sources, one eval) and ``root/grpo`` (RL rows, rl.base = the base,
    evals at steps 5, 10 and 20 in eval/steps/, the last also as eval/testbed.json)."""
    base = make_run(
        root / "base",
        "demo_testbed",
        "grpo",
        0.0,
        [],
        base=None,
        evals=[k_eval(100, 0.3, 0.9)],
        extra_rows=[{"step": s, "phase": "pretrain", "loss": 3.0 / s} for s in range(1, 11)],
    )
    cfg = yaml.safe_load((base / "config.yaml").read_text())
    cfg["rl"] = {}
    cfg["data"] = {"sources": {"tb_code": {"path": "x"}, "tb_nl": {"path": "y", "multiplier": 2.0}}}
    (base / "config.yaml").write_text(yaml.safe_dump(cfg))
    rows = rl_rows({"code": 0.3, "nl": 0.7}, {"code": 0.95, "nl": 0.05}, 0.4, 0.8)
    for r in rows:
        r["reward"] = r["accuracy"] + reward_offset
        del r["kl"]
    evals = [k_eval(5, 0.4, 0.85), k_eval(10, 0.6, 0.8), k_eval(20, 0.75, 0.76)]
    rl = make_run(root / "grpo", "demo_grpo", "grpo", 0.0, rows, evals=evals[-1:], base=str(base))
    (rl / "eval" / "steps").mkdir()
    for ev in evals:
        (rl / "eval" / "steps" / f"testbed.{ev['step']:07d}.json").write_text(json.dumps(ev))
    return base, rl


def test_rl_run_names_its_base_and_the_base_mixture(tmp_path):
    base, rl = make_demo_runs(tmp_path)
    run = load_run(str(rl))
    assert mixture(run) == "tb_code + 2xtb_nl"  # the base's sources, not the base directory's name
    assert mixture(load_run(str(base))) == "tb_code + 2xtb_nl"
    rep = write_report([str(base), str(rl)], str(tmp_path / "out"))
    text = open(rep.path, encoding="utf-8").read()
    table = text[text.index("<table>") : text.index("</table>")]
    row = table[table.index("demo_grpo") :].split("</tr>")[0]
    assert "<td>demo_testbed</td>" in row and "tb_code + 2xtb_nl" in row  # the base by its run name
    assert "base demo_testbed · mixture tb_code + 2xtb_nl" in text


def test_pass_at_k_curves_for_base_and_every_checkpoint(tmp_path):
    base, rl = make_demo_runs(tmp_path)
    runs = load_runs([str(base), str(rl)])
    assert [ev["step"] for ev in runs[1].eval_steps["testbed"]] == [5, 10, 20]
    lines = {ln.get_label(): ln for ln in plots.pass_at_k_compare(runs).axes[0].lines}
    assert list(lines) == ["demo_testbed", "demo_grpo step 5", "demo_grpo step 10", "demo_grpo step 20"]
    np.testing.assert_allclose(lines["demo_grpo step 10"].get_xdata(), range(1, 17))
    np.testing.assert_allclose(lines["demo_grpo step 10"].get_ydata()[[0, -1]], [0.6, 0.8])
    # pass@1 rising while pass@16 falls, base first at step 0
    over = {ln.get_label(): ln for ln in plots.pass_over_steps(runs[1]).axes[0].lines}
    np.testing.assert_allclose(over["pass@1"].get_xdata(), [0, 5, 10, 20])
    np.testing.assert_allclose(over["pass@1"].get_ydata(), [0.3, 0.4, 0.6, 0.75])
    np.testing.assert_allclose(over["pass@16"].get_ydata(), [0.9, 0.85, 0.8, 0.76])
    bars = plots.sample_format_share(
        runs[1]
    )  # base + 3 checkpoints, per format: share (bars), accuracy (dots)
    assert [t.get_text() for t in bars.axes[0].get_xticklabels()] == ["base", "5", "10", "20"]
    code = [p.get_height() for p in bars.axes[0].patches[:4]]
    np.testing.assert_allclose(code, [0.3] * 4)
    assert [ln.get_label() for ln in bars.axes[1].lines] == ["code accuracy", "nl accuracy"]
    per_run = {ln.get_label() for ln in plots.pass_at_k(runs[1]).axes[0].lines}
    assert per_run == {f"step {s} {m}" for s in (5, 10, 20) for m in ("pass@k", "maj@k")}


def test_eval_table_lists_each_metric_once(tmp_path):
    base, _ = make_demo_runs(tmp_path)
    ev = json.loads((base / "eval" / "testbed.json").read_text())
    ev["sampled"]["num_problems"] = 4  # eval.sample_problems=4: the samples on the first 4 of 10 problems
    (base / "eval" / "testbed.json").write_text(json.dumps(ev))
    text = open(write_report([str(base)], str(tmp_path / "o")).path, encoding="utf-8").read()
    section = text[text.index("<h3>eval: testbed</h3>") :]
    assert "greedy pass@1 50.0%" in section
    assert "16 samples per problem at T 0.7 on the first 4 problems" in section
    head = section[section.index("<thead>") : section.index("</thead>")]
    assert re.findall(r"<th>([^<]*)</th>", head) == ["k", "1", "2", "4", "8", "16"]
    body = section[section.index("<tbody>") : section.index("</tbody>")]
    assert re.findall(r"<tr><td>([^<]*)</td>", body) == ["pass@k", "maj@k"]  # one row per metric
    assert section.count(">pass@1<") == 0  # no "pass@1" row next to a pass@k row


def test_reward_drawn_only_when_it_differs_from_accuracy(tmp_path):
    _, same = make_demo_runs(tmp_path / "a")
    _, shifted = make_demo_runs(tmp_path / "b", reward_offset=-0.1)
    assert plots.reward_accuracy(load_run(str(same))) is None  # binary reward: one line would hide the other
    fig = plots.reward_accuracy(load_run(str(shifted)))
    assert [ln.get_label() for ln in fig.axes[0].lines] == ["reward", "accuracy"]
    # KL absent (KL 0): the figure is the entropy alone, with no figure-level caption
    ke = plots.kl_entropy(load_run(str(same)))
    assert [ax.get_title() for ax in ke.axes] == ["demo_grpo: entropy"] and ke._suptitle is None


def test_one_size_legends_outside_one_colour_per_format(tmp_path):
    import io

    from PIL import Image

    from echo_megatron.report.style import FIGSIZE, FORMAT_COLORS
    from echo_megatron.rewards.formats import FORMATS

    assert set(FORMAT_COLORS) == set(FORMATS) and len(set(FORMAT_COLORS.values())) == len(FORMATS)
    base, rl = make_demo_runs(tmp_path)
    run = load_run(str(rl))
    figs = [fn(run) for fn in plots.RUN_FIGURES.values()]
    figs = [f for f in figs if f is not None]
    assert len(figs) >= 4
    for fig in figs:
        png = plots.png_bytes(fig)
        assert Image.open(io.BytesIO(png)).size == (FIGSIZE[0] * 100, FIGSIZE[1] * 100)
        fig.canvas.draw()
        for leg in fig.legends:  # the legend sits right of every axes, overlapping none
            lb = leg.get_window_extent()
            assert all(lb.x0 >= ax.get_window_extent().x1 for ax in fig.axes)
        assert not any(ax.get_legend() for ax in fig.axes)
    headline_fig = plots.format_share(run)
    stack, twin = headline_fig.axes[0], headline_fig.axes[1]
    from matplotlib.colors import to_rgb

    got = [tuple(np.round(c.get_facecolor()[0][:3], 4)) for c in stack.collections[:2]]
    assert got == [tuple(np.round(to_rgb(FORMAT_COLORS[f]), 4)) for f in ("code", "nl")]
    np.testing.assert_allclose(twin.lines[0].get_ydata(), np.linspace(0.4, 0.8, 10))  # accuracy, right axis


def test_demo_evaluates_log_spaced_checkpoints():
    from echo_megatron.checkpoint.schedule import log_spaced_checkpoints

    assert log_spaced_checkpoints([10, 20, 30, 40]) == [
        10,
        20,
    ]  # last/4, last/2 (the last is evaluated anyway)
    assert log_spaced_checkpoints(list(range(5, 41, 5)), count=3) == [5, 10, 20]
    assert log_spaced_checkpoints([3, 40]) == [3] and log_spaced_checkpoints([40]) == []
    assert log_spaced_checkpoints([]) == []
