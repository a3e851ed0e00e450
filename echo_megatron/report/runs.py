"""What a report knows about one run, read only from the run-directory layout (see ``rundir.py``).

``config.yaml`` gives scale, mixture, algorithm and KL; ``metrics.jsonl`` gives the RL curves (rows with
``phase == "rl"``: ``reward``, ``accuracy``, ``share/<fmt>``, ``acc/<fmt>``, ``kl``, ``entropy``, ...) and
the pretraining loss; ``eval/<task>.json`` gives pass@1, pass@k, maj@k and the per-format table, and
``eval/steps/<task>.<step>.json`` the same for every evaluated checkpoint (pass@k before / during / after RL).
An RL run's mixture is its base run's (``rl.base``): the report names the base and reads its ``config.yaml``.
Everything else here is a small pure function of those rows, shared by the plots, the HTML table and
:func:`headline` (which the demo prints).
"""

from __future__ import annotations

import glob
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

from echo_megatron.eval.estimators import dominant_format
from echo_megatron.rewards.formats import FORMATS
from echo_megatron.rundir import RunDir, read_metrics

SHARE_THRESHOLD = 0.9  # "the step at which the dominant format passed 90%"


@dataclass
class Run:
    root: str
    label: str
    config: dict[str, Any] = field(default_factory=dict)
    rl: list[dict[str, Any]] = field(default_factory=list)  # metrics rows with phase == "rl", by step
    pretrain: list[dict[str, Any]] = field(default_factory=list)  # phase == "pretrain"
    evals: dict[str, dict[str, Any]] = field(default_factory=dict)  # task -> eval/<task>.json
    eval_steps: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # task -> evals by step


def is_run_dir(path: str) -> bool:
    rd = RunDir(path)
    return os.path.isfile(rd.config) or os.path.isfile(rd.metrics) or os.path.isdir(rd.eval)


def expand_run_dirs(paths: Sequence[str]) -> list[str]:
    """Run dirs as given; a directory that is not a run dir but holds run dirs (a sweep) expands to them."""
    out: list[str] = []
    for p in paths:
        if not os.path.isdir(p):
            raise ValueError(f"run directory not found: {p}")
        if is_run_dir(p):
            out.append(p)
            continue
        children = sorted(c for c in glob.glob(os.path.join(p, "*")) if os.path.isdir(c) and is_run_dir(c))
        if not children:
            raise ValueError(
                f"{p}: not a run directory (no config.yaml, metrics.jsonl or eval/) and holds none"
            )
        out.extend(children)
    return out


def _get(cfg: dict, dotted: str, default: Any = None) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def _read_json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: malformed JSON: {e}") from e
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return data


def _read_evals(root: str) -> dict[str, dict]:
    evals = {}
    for path in sorted(glob.glob(os.path.join(RunDir(root).eval, "*.json"))):
        data = _read_json(path)
        evals[str(data.get("task") or os.path.basename(path)[: -len(".json")])] = data
    return evals


def _read_eval_steps(root: str) -> dict[str, list[dict]]:
    """task -> the evals of ``eval/steps/`` sorted by step (one per step: a re-evaluated step keeps the last)."""
    by_task: dict[str, dict[int, dict]] = {}
    for path in sorted(glob.glob(os.path.join(RunDir(root).eval_steps, "*.json"))):
        data = _read_json(path)
        task = str(data.get("task") or os.path.basename(path).split(".")[0])
        by_task.setdefault(task, {})[int(data.get("step") or 0)] = data
    return {t: [evs[s] for s in sorted(evs)] for t, evs in sorted(by_task.items())}


def load_run(root: str, label: str | None = None) -> Run:
    """Read one run directory. Missing parts are empty; malformed files raise naming the file."""
    if not os.path.isdir(root):
        raise ValueError(f"run directory not found: {root}")
    config: dict = {}
    cpath = RunDir(root).config
    if os.path.isfile(cpath):
        try:
            with open(cpath, encoding="utf-8") as f:
                config = yaml.safe_load(f) or {}
        except yaml.YAMLError as e:
            raise ValueError(f"{cpath}: cannot parse YAML: {e}") from e
        if not isinstance(config, dict):
            raise ValueError(f"{cpath}: expected a YAML mapping")
    rows = read_metrics(root)
    by_step = lambda r: r.get("step", 0)  # noqa: E731
    return Run(
        root=root,
        label=label or str(config.get("name") or os.path.basename(os.path.normpath(root))),
        config=config,
        rl=sorted((r for r in rows if r.get("phase") == "rl"), key=by_step),
        pretrain=sorted((r for r in rows if r.get("phase") == "pretrain"), key=by_step),
        evals=_read_evals(root),
        eval_steps=_read_eval_steps(root),
    )


def load_runs(paths: Sequence[str]) -> list[Run]:
    """Load run dirs (sweep dirs expand); labels are made unique by appending the directory name."""
    runs = [load_run(p) for p in expand_run_dirs(paths)]
    seen: dict[str, int] = {}
    for r in runs:
        seen[r.label] = seen.get(r.label, 0) + 1
    for r in runs:
        if seen[r.label] > 1:
            r.label = f"{r.label} ({os.path.basename(os.path.normpath(r.root))})"
    return runs


# ---- series -------------------------------------------------------------------------------------------


def series(rows: Sequence[dict], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of one metric; a row without the key gives NaN (a gap in a line plot)."""
    steps = [int(r.get("step", i)) for i, r in enumerate(rows)]
    values = [float(r[key]) if isinstance(r.get(key), (int, float)) else math.nan for r in rows]
    return steps, values


def _formats_with(rows: Sequence[dict], prefix: str) -> list[str]:
    seen = {k[len(prefix) :] for r in rows for k in r if k.startswith(prefix)}
    return [f for f in FORMATS if f in seen] + sorted(seen - set(FORMATS))


def format_share_series(rows: Sequence[dict]) -> tuple[list[int], dict[str, list[float]]]:
    """(steps, {format: share per step}) for formats with a non-zero share at some step; missing = 0."""
    steps = [int(r.get("step", i)) for i, r in enumerate(rows)]
    out = {}
    for fmt in _formats_with(rows, "share/"):
        vals = [float(r.get(f"share/{fmt}") or 0.0) for r in rows]
        if any(v > 0 for v in vals):
            out[fmt] = vals
    return steps, out


def format_accuracy_series(rows: Sequence[dict]) -> tuple[list[int], dict[str, list[float]]]:
    """(steps, {format: accuracy per step}); NaN where the format had no samples that step."""
    steps = [int(r.get("step", i)) for i, r in enumerate(rows)]
    return steps, {fmt: series(rows, f"acc/{fmt}")[1] for fmt in _formats_with(rows, "acc/")}


def shares_at(row: dict) -> dict[str, float]:
    return {k[len("share/") :]: float(v) for k, v in row.items() if k.startswith("share/") and v is not None}


def first_step_at_share(rows: Sequence[dict], fmt: str, threshold: float = SHARE_THRESHOLD) -> int | None:
    """The first RL step at which ``share/<fmt>`` reached ``threshold``; None if it never did."""
    for r in rows:
        v = r.get(f"share/{fmt}")
        if isinstance(v, (int, float)) and v >= threshold:
            return int(r.get("step", 0))
    return None


# ---- per-run facts -------------------------------------------------------------------------------------


def primary_task(tasks: Sequence[str]) -> str | None:
    """The task a table headlines: gsm8k, else testbed, else math500, else the first by name."""
    for t in ("gsm8k", "testbed", "math500"):
        if t in tasks:
            return t
    return sorted(tasks)[0] if tasks else None


def final_shares(run: Run) -> dict[str, float]:
    """Format shares at the last RL step, else from the primary eval's per-format table."""
    if run.rl:
        return shares_at(run.rl[-1])
    task = primary_task(list(run.evals))
    per_format = run.evals[task].get("per_format", {}) if task else {}
    return {f: float(s.get("share") or 0.0) for f, s in per_format.items()}


def scale(run: Run) -> str:
    preset = _get(run.config, "model.preset")
    if preset:
        return str(preset)
    layers, hidden = _get(run.config, "model.num_layers"), _get(run.config, "model.hidden_size")
    return f"{layers}L x d{hidden}" if layers and hidden else "—"


def base_dir(run: Run) -> str | None:
    """The run directory an RL run starts from (``rl.base``, else ``checkpoint.load``, without a trailing
    ``checkpoints`` / ``latest`` / ``iter_NNNNNNN``); None for a run that is not RL or names no base."""
    base = _get(run.config, "rl.base") or _get(run.config, "checkpoint.load")
    if not base or not is_rl(run):
        return None
    parts = os.path.normpath(str(base)).split(os.sep)
    while len(parts) > 1 and (parts[-1] in ("checkpoints", "latest") or parts[-1].startswith("iter_")):
        parts.pop()
    return os.sep.join(parts) or None


def _base_config(run: Run) -> dict:
    """The base run's ``config.yaml`` when its directory is here, else {}."""
    path = base_dir(run)
    cpath = RunDir(path).config if path else ""
    if not cpath or not os.path.isfile(cpath):
        return {}
    with open(cpath, encoding="utf-8") as f:
        cfg = yaml.safe_load(f) or {}
    return cfg if isinstance(cfg, dict) else {}


def base_name(run: Run) -> str:
    """The base an RL run starts from: its run name (``name`` in its config.yaml) when the base directory is
    here, else the directory's name; ``—`` for a run that is not RL."""
    path = base_dir(run)
    if not path:
        return "—"
    return str(_base_config(run).get("name") or os.path.basename(path))


def _sources_mixture(config: dict) -> str | None:
    sources = _get(config, "data.sources") or {}
    if not isinstance(sources, dict) or not sources:
        return None
    items = []
    for name, src in sources.items():
        mult = (src or {}).get("multiplier", 1.0) if isinstance(src, dict) else 1.0
        items.append(name if mult == 1 else f"{mult:g}x{name}")
    return " + ".join(items)


def mixture(run: Run) -> str:
    """The pretraining mixture (data sources with multipliers). An RL run's is its base run's, read from the
    base's ``config.yaml`` when that directory is here, else the base's directory name (which names the
    mixture in the paper's runs, e.g. ``150m_tg+omi1``)."""
    path = base_dir(run)
    if path is None:
        return _sources_mixture(run.config) or "—"
    return _sources_mixture(_base_config(run)) or os.path.basename(path)


def is_rl(run: Run) -> bool:
    return bool(run.rl) or bool(_get(run.config, "rl.base"))


def kl_coef(run: Run) -> float | None:
    for key in ("rl.initial_policy_kl_penalty", "rl.kl_coef"):
        v = _get(run.config, key)
        if isinstance(v, (int, float)):
            return float(v)
    return None


def eval_metric(run: Run, task: str | None, metric: str, k: int | None = None) -> float | None:
    """``pass@1``, or ``pass@k`` / ``maj@k`` at k, from ``eval/<task>.json``; None when absent."""
    ev = run.evals.get(task or "")
    if not ev:
        return None
    if metric == "pass@1":
        v = ev.get("pass@1")
        if v is None:
            v = (ev.get("pass@k") or {}).get("1")
    else:
        v = (ev.get(metric) or {}).get(str(k))
    return float(v) if isinstance(v, (int, float)) else None


def pct(x: float | None) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}%"


def _pct0(x: float) -> str:
    return f"{100 * x:.0f}%"


def headline(run_dir: str | Run) -> str:
    """One line on what RL did, e.g. ``nl share 61% → 1%, accuracy 39% → 88%``.

    The format named is the one whose share moved most between the first and the last RL step; then
    training accuracy at those steps, then the primary task's eval pass@1 when there is one. A run
    without RL rows reports its eval (or its pretraining loss).
    """
    run = run_dir if isinstance(run_dir, Run) else load_run(run_dir)
    parts: list[str] = []
    if run.rl:
        first, last = run.rl[0], run.rl[-1]
        s0, s1 = shares_at(first), shares_at(last)
        fmts = [f for f in FORMATS if f in s0 or f in s1] + sorted((set(s0) | set(s1)) - set(FORMATS))
        if fmts:
            fmt = max(fmts, key=lambda f: (abs(s1.get(f, 0.0) - s0.get(f, 0.0)), -fmts.index(f)))
            parts.append(f"{fmt} share {_pct0(s0.get(fmt, 0.0))} → {_pct0(s1.get(fmt, 0.0))}")
        if isinstance(first.get("accuracy"), (int, float)) and isinstance(last.get("accuracy"), (int, float)):
            parts.append(f"accuracy {_pct0(first['accuracy'])} → {_pct0(last['accuracy'])}")
    task = primary_task(list(run.evals))
    if task:
        p1 = eval_metric(run, task, "pass@1")
        if p1 is not None:
            parts.append(f"{task} pass@1 {pct(p1)}")
        if not run.rl:
            dom = dominant_format(final_shares(run))
            if dom:
                parts.append(f"dominant format {dom} ({_pct0(final_shares(run)[dom])})")
    if not parts and run.pretrain:
        _, loss = series(run.pretrain, "loss")
        loss = [v for v in loss if not math.isnan(v)]
        if loss:
            parts.append(
                f"pretrain loss {loss[0]:.3g} → {loss[-1]:.3g} over {len(run.pretrain)} logged steps"
            )
    return ", ".join(parts) if parts else "no RL metrics, eval results or pretraining loss yet"


def report_k(runs: Sequence[Run], task: str | None, prefer: int = 64) -> int | None:
    """The k a comparison table shows: 64 when any run has it, else the largest k any run has (> 1)."""
    ks: set[int] = set()
    for r in runs:
        ev = r.evals.get(task or "") or {}
        for metric in ("pass@k", "maj@k"):
            ks |= {int(k) for k in (ev.get(metric) or {}) if str(k).isdigit() and int(k) > 1}
    if not ks:
        return None
    return prefer if prefer in ks else max(ks)


def table_row(run: Run, task: str | None, k: int | None) -> dict[str, str]:
    """One row of the comparison table, formatted for display."""
    shares = final_shares(run)
    dom = dominant_format(shares)
    step90 = first_step_at_share(run.rl, dom) if dom else None
    kl = kl_coef(run)
    row = {
        "run": run.label,
        "scale": scale(run),
        "base": base_name(run),
        "mixture": mixture(run),
        "algorithm": str(_get(run.config, "rl.algorithm", "—")) if is_rl(run) else "—",
        "KL": (f"{kl:g}" if kl is not None else "—") if is_rl(run) else "—",
        "final RL acc": pct(run.rl[-1].get("accuracy")) if run.rl else "—",
        "pass@1": pct(eval_metric(run, task, "pass@1")),
    }
    if k:
        row[f"pass@{k}"] = pct(eval_metric(run, task, "pass@k", k))
        row[f"maj@{k}"] = pct(eval_metric(run, task, "maj@k", k))
    row["dominant format"] = f"{dom} ({_pct0(shares[dom])})" if dom else "—"
    row[f"step ≥{_pct0(SHARE_THRESHOLD)}"] = str(step90) if step90 is not None else "—"
    return row


def reward_differs(rows: Sequence[dict], tol: float = 1e-9) -> bool:
    """Whether ``reward`` and ``accuracy`` ever differ (by more than ``tol``) at a step that logs both; a binary
    reward equals the accuracy and is then not drawn twice. True when only reward is logged."""
    _, reward = series(rows, "reward")
    _, acc = series(rows, "accuracy")
    pairs = [(r, a) for r, a in zip(reward, acc) if not math.isnan(r)]
    return any(math.isnan(a) or abs(r - a) > tol for r, a in pairs)


def evals_by_step(run: Run, task: str | None) -> list[dict]:
    """The run's evals of ``task`` in step order: ``eval/steps/`` when present, else the one ``eval/<task>.json``."""
    if not task:
        return []
    steps = run.eval_steps.get(task) or []
    if steps:
        return list(steps)
    return [run.evals[task]] if task in run.evals else []


def base_run(run: Run) -> Run | None:
    """The base run directory of an RL run, loaded, when it is here (else None)."""
    path = base_dir(run)
    if path is None or not os.path.isdir(path) or not is_run_dir(path):
        return None
    return load_run(path)


def k_curve(ev: dict, metric: str) -> tuple[list[int], list[float]]:
    """(ks, values) of ``pass@k`` or ``maj@k`` of one eval dict, by increasing k."""
    pts = sorted(
        (int(k), float(v)) for k, v in (ev.get(metric) or {}).items() if str(k).isdigit() and v is not None
    )
    return [k for k, _ in pts], [v for _, v in pts]
