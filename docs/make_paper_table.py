"""docs/paper.md and the resolved columns of docs/paper_settings.yaml, generated from the recipes.

    python docs/make_paper_table.py           # rewrite both files
    python docs/make_paper_table.py --check   # exit 1 if either is out of date (tests/test_paper_recipes.py)

docs/paper_settings.yaml holds every setting of the paper's released code (rosieyzh/openrlhf-pretrain): its value,
file and line, and, where echo-megatron can express it, ``paper_echo``: the paper's value in echo-megatron's
terms as ``probe: value``. A probe is

    dotted.key                      the key of the setting's ``echo_recipe``, resolved (load_config)
    RECIPE::dotted.key              the key of another recipe
    @params | @tokenizer.FIELD | @padded_vocab.tpN | @source.NAME.FIELD
                                    derived from a recipe: parameters of the model it trains (the tokenizer's
                                    vocabulary), tokenizer facts (vocab_size, eod_id, digits_split, adds_bos), the
                                    padded vocabulary at TP N, a source's selection (hf_id, variant, splits, globs, hf_config)
    sweep:GRID::@axis.A | @runs | @values.KEY | dotted.key
                                    a grid: the labels of axis A (sorted), the number of runs, the values KEY takes
                                    over the runs (sorted), a key of the first run's resolved config
    task:NAME::FIELD                a field of an eval / prompt task (echo_megatron/eval/tasks.py)

This script resolves every probe and writes ``echo_current``, ``differs``, ``needs_key`` and the counts back into
the YAML, and the table into docs/paper.md. A setting may say why echo-megatron differs on purpose
(``deliberate``), what it cannot express yet (``pending``), or which part of the code has still to act on a key
the recipes already set (``wiring``).
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from dataclasses import dataclass, field
from typing import Any

import yaml

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SETTINGS = os.path.join(REPO, "docs", "paper_settings.yaml")
TABLE = os.path.join(REPO, "docs", "paper.md")
MISSING = "(no such key)"
SCOPES = {
    "tokenizer": "Tokenizer, BOS and EOS",
    "model": "Model",
    "pretrain": "Pretraining",
    "data": "Data",
    "rl": "RL",
    "ei": "Expert Iteration",
    "eval": "Evaluation",
    "reward": "Reward",
    "grid": "Grids",
}


@dataclass
class Probe:
    name: str
    paper: Any
    echo: Any
    ok: bool
    missing: bool


@dataclass
class Row:
    setting: dict
    probes: list[Probe] = field(default_factory=list)

    @property
    def id(self) -> str:
        return self.setting["id"]

    @property
    def status(self) -> str:
        s = self.setting
        if s.get("deliberate"):
            return "deliberate"
        if s.get("pending"):
            return "pending"
        if not self.probes:
            return "differs" if s.get("differs") else "same"
        if any(p.missing for p in self.probes):
            return "pending"
        if all(p.ok for p in self.probes):
            return "same, wiring pending" if s.get("wiring") else "same"
        return "differs"


# ---- probes -----------------------------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    return value


@functools.cache
def _config(recipe: str):
    from echo_megatron.config import load_config

    return load_config(os.path.join(REPO, recipe) if not os.path.isabs(recipe) else recipe)


@functools.cache
def _tokenizer(recipe: str):
    from echo_megatron.data.tokenizer import load_tokenizer

    return load_tokenizer(_config(recipe).data.tokenizer)


@functools.cache
def _params(recipe: str) -> int:
    from echo_megatron.model.params import count_parameters

    return int(count_parameters(_config(recipe), vocab_size=_tokenizer(recipe).vocab_size)["total"])


@functools.cache
def _grid(path: str):
    from echo_megatron.config.sweep import expand, load_grid

    return expand(load_grid(os.path.join(REPO, path)))


@functools.cache
def _grid_config(path: str):
    from echo_megatron.config import load_config

    run = _grid(path)[0]
    return load_config(run.base, run.override_args())


def _select(cfg: Any, key: str) -> Any:
    from omegaconf import OmegaConf

    value = OmegaConf.select(cfg, key, default=MISSING)
    return value if value is MISSING else _plain(value)


def _derived(recipe: str, what: str) -> Any:
    cfg = _config(recipe)
    if what == "@params":
        return _params(recipe)
    if what.startswith("@tokenizer."):
        tok, fact = _tokenizer(recipe), what.split(".", 1)[1]
        if fact == "digits_split":
            return [tok.token(i) for i in tok.encode("12345") if tok.token(i) != "\u2581"] == list("12345")
        if fact == "adds_bos":
            return len(tok.encode("")) > 0  # an empty text encodes to nothing unless special tokens are added
        if fact == "eod_token":
            return tok.token(tok.eod)
        return getattr(tok, {"eod_id": "eod"}.get(fact, fact))
    if what.startswith("@padded_vocab.tp"):
        from echo_megatron.model.vocab import padded_vocab_size

        tp = int(what.removeprefix("@padded_vocab.tp"))
        return padded_vocab_size(_tokenizer(recipe).vocab_size, cfg.model.make_vocab_size_divisible_by, tp)
    if what.startswith("@source."):
        from omegaconf import OmegaConf

        from echo_megatron.config.data import SourceConfig
        from echo_megatron.data.sources import select

        name, attr = what.removeprefix("@source.").rsplit(".", 1)
        # a registry source not mixed in: its defaults
        own = cfg.data.sources.get(name) or OmegaConf.structured(SourceConfig)
        chosen = select(name, own)  # registry entry + the recipe's keys
        if attr == "hf_id":
            return own.hf_id or chosen.spec.hf_id
        value = getattr(chosen, attr)  # variant | splits | globs | hf_config
        return list(value) if isinstance(value, tuple) else value
    raise ValueError(f"unknown probe {what}")


def resolve(setting: dict, name: str) -> Any:
    """The echo-megatron value of probe ``name`` for ``setting`` (MISSING when the key does not exist)."""
    if name.startswith("sweep:"):
        grid, what = name.removeprefix("sweep:").split("::", 1)
        runs = _grid(grid)
        if what == "@runs":
            return len(runs)
        if what.startswith("@axis."):
            return sorted({r.axes[what.removeprefix("@axis.")] for r in runs})
        if what.startswith("@values."):
            key = what.removeprefix("@values.")
            return sorted({r.all_overrides()[key] for r in runs})
        return _select(_grid_config(grid), what)
    if name.startswith("task:"):
        from echo_megatron.eval.tasks import TASKS

        task, attr = name.removeprefix("task:").split("::", 1)
        return getattr(TASKS[task], attr) if task in TASKS else MISSING
    recipe, what = name.split("::", 1) if "::" in name else (setting.get("echo_recipe"), name)
    if what.startswith("@"):
        return _derived(recipe, what)
    return _select(_config(recipe), what)


def evaluate(settings: list[dict]) -> list[Row]:
    rows = []
    for s in settings:
        row = Row(s)
        for name, paper in (s.get("paper_echo") or {}).items():
            echo = resolve(s, name)
            missing = echo is MISSING
            row.probes.append(Probe(name, paper, echo, not missing and echo == paper, missing))
        rows.append(row)
    return rows


# ---- the YAML ---------------------------------------------------------------------------------------------

HEADER = """\
# Paper settings of arXiv 2504.07912 read from its released code, with the echo-megatron key that carries each one.
# Written by the paper audit (issue 19; docs/paper_settings_notes.md explains the subtle ones). paper_echo, deliberate,
# pending and wiring are written by hand; echo_current, differs, needs_key and counts by docs/make_paper_table.py
# from this tree's recipes (python docs/make_paper_table.py), which also writes docs/paper.md.
# paper_repo: {repo} @ {commit} (paper_file paths are relative to it)
# paper_echo: the paper's value as echo-megatron probes (see docs/make_paper_table.py); tests/test_paper_recipes.py
#   fails when a recipe's value drifts from it (except where deliberate or pending says why)
# severity: high = changes what is learned or measured; medium = changes numbers; low = detail; none = same or layout only
# {n} settings, {differ} differ from recipes/paper/ ({deliberate} of them deliberately), {needs} need a key echo-megatron
# lacks
"""


def _echo_current(row: Row) -> Any:
    values = {p.name: p.echo for p in row.probes}
    return next(iter(values.values())) if len(values) == 1 else values


def update_settings(data: dict, rows: list[Row]) -> dict:
    for row in rows:
        s = row.setting
        if row.probes:
            s["echo_current"] = _echo_current(row)
            s["differs"] = not all(p.ok for p in row.probes)
            missing = any(p.missing for p in row.probes)
            if missing:
                s["needs_key"] = True
            else:
                s.pop("needs_key", None)
    data.pop("echo_commit", None)
    data["counts"] = {
        "settings": len(rows),
        "differ": sum(bool(r.setting["differs"]) for r in rows),
        "deliberate": sum(bool(r.setting.get("deliberate")) for r in rows),
        "needs_key": sum(bool(r.setting.get("needs_key")) for r in rows),
    }
    return data


class _Dumper(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:
        return True


def render_settings(data: dict) -> str:
    c = data["counts"]
    head = HEADER.format(
        repo=data["paper_repo"], commit=data["paper_commit"], n=c["settings"], differ=c["differ"],
        deliberate=c["deliberate"], needs=c["needs_key"],
    )  # fmt: skip
    body = yaml.dump(data, Dumper=_Dumper, sort_keys=False, width=110, allow_unicode=True)
    return head + body


# ---- the Markdown -----------------------------------------------------------------------------------------


def _cell(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        text = ", ".join(str(v) for v in value)
    elif isinstance(value, bool) or value is None:
        text = str(value).lower() if value is not None else "null"
    else:
        text = str(value)
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")  # </s> is not a tag
    return text.replace("|", "\\|").replace("\n", " ")


def _files(s: dict) -> str:
    files = s.get("paper_file") or []
    return "<br>".join(_cell(f) for f in ([files] if isinstance(files, str) else files))


def _echo_cell(row: Row) -> str:
    if not row.probes:
        return _cell(row.setting.get("echo_key")) + ": " + _cell(row.setting.get("echo_current"))
    parts = []
    for p in row.probes:
        mark = "" if p.ok else (" (no such key)" if p.missing else f" (paper: {_cell(p.paper)})")
        value = "" if p.missing else f" = {_cell(p.echo)}"
        parts.append(f"`{_cell(p.name)}`{value}{mark}")
    return "<br>".join(parts)


def _scope(s: dict) -> str:
    return s["scope"].split("-", 1)[0]


def render_table(data: dict, rows: list[Row]) -> str:
    c = data["counts"]
    same = sum(r.status.startswith("same") for r in rows)
    out = [
        "# The paper's settings in echo-megatron",
        "",
        "Every setting of the Echo Chamber paper's released code (arXiv 2504.07912; "
        f"[{data['paper_repo']}](https://github.com/{data['paper_repo']}) at `{data['paper_commit'][:12]}`, file "
        "and line in the last column) next to the echo-megatron key that carries it and the value "
        "`recipes/paper/` resolve to. Generated by `python docs/make_paper_table.py` from docs/paper_settings.yaml "
        "(the audit; docs/paper_settings_notes.md explains the subtle settings) and the recipes; "
        "`tests/test_paper_recipes.py` fails when a recipe drifts from the paper's value or this file is stale.",
        "",
        f"{c['settings']} settings: {same} the same, {c['differ']} different ({c['deliberate']} of them on purpose, "
        "below), "
        f"{c['needs_key']} that need a key echo-megatron does not have yet.",
        "",
        "Status: **same**; **same, wiring pending**: the recipe sets the paper's value but the code that acts on the "
        "key comes with another part of issue 19; **pending**: echo-megatron cannot express the paper's value yet; "
        "**deliberate**: different on purpose; **differs**.",
        "",
        "## Running the paper",
        "",
        "```bash",
        "echo-megatron preprocess recipes/paper/150m_tg+omi1.yaml   # each source tokenized once (data/indexed/llama2)",
        "echo-megatron mixture recipes/paper/150m_tg+omi1.yaml      # the mixture table and the epoch's steps",
        "echo-megatron pretrain recipes/paper/150m_tg+omi1.yaml     # one epoch of the mixture, no overrides",
        "echo-megatron sweep recipes/paper/sweeps/150m_rl.yaml      # the 90 RL runs (submit runs them as an array)",
        "```",
        "",
        "Pretraining recipes: `recipes/paper/{150m,1b}_<mixture>.yaml`, `150m_omi1.yaml` (for the EI grid), "
        "`{300m,500m}_8xtg.yaml`; RL: `recipes/paper/rl/{150m,1b}_{ppo,grpo,reinforce_pp,ei}.yaml`; grids: "
        "`recipes/paper/sweeps/{150m_rl,150m_ei,1b_rl,1b_rl_math,1b_ei}.yaml`.",
        "",
        "## Deliberately different, and how to get the paper's behaviour",
        "",
    ]
    for r in rows:
        if r.setting.get("deliberate"):
            out.append(f"- **{r.id}** ({r.setting['what']}): {r.setting['deliberate']}")
    critic = next(r for r in rows if r.id == "rl_critic_lr")
    out += ["", "A choice the paper leaves open:", "", f"- **{critic.id}**: {critic.setting['note']}", ""]
    out += ["## Not expressible yet", ""]
    for r in rows:
        if r.status == "pending":
            why = r.setting.get("pending") or "no key: " + ", ".join(p.name for p in r.probes if p.missing)
            out.append(f"- **{r.id}** ({r.setting['what']}): {why}")
    wiring = [
        f"- **{r.id}** ({_cell(r.setting['echo_key'])}): {r.setting['wiring']}"
        for r in rows
        if r.setting.get("wiring") and not r.setting.get("pending")
    ]
    if wiring:
        out += ["", "## Set in the recipes, acted on by code still to come", "", *wiring]
    for scope, title in SCOPES.items():
        out += [
            "",
            f"## {title}",
            "",
            "| setting | paper | echo-megatron | status | paper file |",
            "|---|---|---|---|---|",
        ]
        for r in rows:
            if _scope(r.setting) != scope:
                continue
            s = r.setting
            recipe = f" ({s['echo_recipe']})" if s.get("echo_recipe") and r.probes else ""
            out.append(
                f"| **{r.id}**: {_cell(s['what'])} | {_cell(s['paper_value'])} | {_echo_cell(r)}{_cell(recipe)} | "
                f"{r.status} | {_files(s)} |"
            )
    return "\n".join(out) + "\n"


# ---- main -------------------------------------------------------------------------------------------------


def generate() -> tuple[str, str, list[Row]]:
    """(the settings YAML, the Markdown table, the rows) for this tree."""
    with open(SETTINGS, encoding="utf-8") as f:
        data = yaml.safe_load(f)
    rows = evaluate(data["settings"])
    data = update_settings(data, rows)
    return render_settings(data), render_table(data, rows), rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the files are out of date")
    args = parser.parse_args(argv)
    settings, table, _ = generate()
    stale = []
    for path, text in ((SETTINGS, settings), (TABLE, table)):
        old = open(path, encoding="utf-8").read() if os.path.isfile(path) else ""
        if old != text:
            stale.append(os.path.relpath(path, REPO))
            if not args.check:
                with open(path + ".tmp", "w", encoding="utf-8") as f:
                    f.write(text)
                os.replace(path + ".tmp", path)
    if args.check and stale:
        print(f"out of date: {', '.join(stale)} (run python docs/make_paper_table.py)", file=sys.stderr)
        return 1
    print(
        ("wrote " if stale else "up to date: ")
        + ", ".join(stale or ["docs/paper.md", "docs/paper_settings.yaml"])
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
