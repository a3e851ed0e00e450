"""Studies: shared pretraining bases and the RL runs that start from them, in one file ``sweep`` expands and runs.

A study file::

    name: study
    run_dir: runs/{grid}/{name}           # as in a grid file; {grid} is the study's name
    set: {testbed.out: runs/study/data}   # every run, bases and RL
    eval: [testbed, testbed_hard]         # evaluated after every run (RL: also at log-spaced checkpoints)
    bases:                                # a grid of pretraining runs (named axes)
      base: ../testbed.yaml
      axes:
        mixture: {code1x: {data.sources.tb_code.multiplier: 1}, code8x: {...}}
        scale: {s: {model.hidden_size: 96, ...}, m: {}}
    groups:                               # grids of RL runs; each point runs once per base it selects
      formats:
        base: ../grpo_testbed.yaml
        axes: {seed: {s0: {rl.seed: 0}}}
      algorithms:
        bases: {mixture: [code1x], scale: [m]}   # a subset of the bases (default: every base)
        axes: {algorithm: {grpo: {base: ../grpo_testbed.yaml}, ppo: {base: ../ppo_testbed.yaml}}, ...}
    quick:                                # what `--quick` keeps: base labels per axis and group names
      bases: {mixture: [code1x, code8x], scale: [s, m]}
      groups: [formats]

A base run is named ``<study>-base-<labels>``; an RL run ``<study>-<group>-<base labels>-<labels>`` and gets
``rl.base`` set to its base's run dir, which is also what it waits for. The testbed and its indexed data are
written once, by the ``data`` step, from the first base's recipe: every base must share ``testbed.*`` and
``data.indexed_dir`` (the mixture axis weights the sources, ``data.sources.<name>.multiplier``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from echo_megatron.config.loader import ConfigError, read_yaml_mapping
from echo_megatron.config.sweep import (
    Axis,
    AxisValue,
    SweepRun,
    _flatten,
    check_overrides,
    expand,
    grid_from_mapping,
)

STUDY_KEYS = {"name", "run_dir", "set", "eval", "bases", "groups", "quick", "description"}


@dataclass(frozen=True)
class Study:
    path: str
    name: str
    eval_tasks: tuple[str, ...]  # names; checked against the eval registry by cluster/study.py
    bases: list[SweepRun]
    rl: list[SweepRun]
    needs: dict[str, str]  # RL run name -> the name of the base run it starts from
    groups: dict[str, list[str]]  # group name -> its RL run names

    @property
    def runs(self) -> list[SweepRun]:
        return self.bases + self.rl

    def base_of(self, run: SweepRun) -> SweepRun | None:
        name = self.needs.get(run.name)
        return next(b for b in self.bases if b.name == name) if name else None


def is_study(path: str) -> bool:
    """Whether a sweep file is a study (it has ``bases``) rather than a single grid."""
    return "bases" in read_yaml_mapping(path, "grid")


def _labels(raw: Any, where: str) -> dict[str, list[str]]:
    if raw is None:
        return {}
    if not isinstance(raw, dict) or not all(isinstance(v, list) for v in raw.values()):
        raise ConfigError(f"{where}: must map a base axis to a list of its labels")
    return {str(k): [str(x) for x in v] for k, v in raw.items()}


def _select(bases: list[SweepRun], keep: dict[str, list[str]], where: str) -> list[SweepRun]:
    """The bases whose label on every axis of ``keep`` is listed there (unknown axes or labels are errors)."""
    for axis, labels in keep.items():
        known = {b.axes[axis] for b in bases if axis in b.axes}
        if not known:
            raise ConfigError(f"{where}: '{axis}' is not an axis of the bases")
        bad = sorted(set(labels) - known)
        if bad:
            raise ConfigError(f"{where}: {axis} has no label(s) {bad} (known: {sorted(known)})")
    return [b for b in bases if all(b.axes[a] in labels for a, labels in keep.items())]


def load_study(path: str, quick: bool = False, only: list[str] | None = None) -> Study:
    """Parse, check and expand a study file (``quick``: only what its ``quick`` section keeps; ``only``: these
    groups and the bases they start from)."""
    raw = read_yaml_mapping(path, "study")
    unknown = set(raw) - STUDY_KEYS
    if unknown:
        raise ConfigError(
            f"{path}: unknown study key(s) {sorted(unknown)} (known: {', '.join(sorted(STUDY_KEYS))})"
        )
    name = str(raw.get("name") or os.path.splitext(os.path.basename(path))[0])
    run_dir = str(raw.get("run_dir") or "runs/{grid}/{name}")
    if not isinstance(raw.get("set") or {}, dict):
        raise ConfigError(f"{path}: 'set' must be a mapping of dotted keys to values")
    shared = _flatten(raw.get("set") or {})
    check_overrides(shared, f"{path}: set")
    tasks = raw.get("eval") or ["testbed"]
    if not isinstance(tasks, list) or not all(isinstance(t, str) for t in tasks):
        raise ConfigError(f"{path}: 'eval' must be a list of task names")

    braw = raw.get("bases")
    if not isinstance(braw, dict):
        raise ConfigError(f"{path}: 'bases' must be a mapping with base, set and axes")
    if set(braw) - {"base", "set", "axes"}:
        raise ConfigError(f"{path}: bases: unknown key(s) {sorted(set(braw) - {'base', 'set', 'axes'})}")
    bgrid = grid_from_mapping(path, braw, f"{name}-base", run_dir, f"{path}: bases", shared)
    if any("." in a.name for a in bgrid.axes):
        raise ConfigError(f"{path}: bases: name each axis (label -> overrides), not a dotted key")
    bases = expand(bgrid)
    bgrid_fields = {"grid": name}
    bases = [_with_grid_name(b, bgrid.run_dir, bgrid_fields) for b in bases]

    graw = raw.get("groups")
    if not isinstance(graw, dict) or not graw:
        raise ConfigError(f"{path}: 'groups' must be a non-empty mapping of RL grids")
    qraw = raw.get("quick") or {}
    if not isinstance(qraw, dict) or set(qraw) - {"bases", "groups"}:
        raise ConfigError(f"{path}: 'quick' must be a mapping with bases and groups")
    if quick:
        bases = _select(bases, _labels(qraw.get("bases"), f"{path}: quick.bases"), f"{path}: quick.bases")
        keep_groups = [str(g) for g in (qraw.get("groups") or list(graw))]
        unknown_groups = sorted(set(keep_groups) - set(map(str, graw)))
        if unknown_groups:
            raise ConfigError(f"{path}: quick.groups: unknown group(s) {unknown_groups}")
        graw = {g: v for g, v in graw.items() if str(g) in keep_groups}

    rl: list[SweepRun] = []
    needs: dict[str, str] = {}
    groups: dict[str, list[str]] = {}
    for gname, spec in graw.items():
        where = f"{path}: groups.{gname}"
        if not isinstance(spec, dict) or set(spec) - {"base", "set", "axes", "bases"}:
            raise ConfigError(f"{where}: must be a mapping with base, set, axes and (optionally) bases")
        chosen = _select(bases, _labels(spec.get("bases"), f"{where}.bases"), f"{where}.bases")
        if not chosen:
            continue
        grid = grid_from_mapping(path, spec, f"{name}-{gname}", run_dir, where, shared)
        on_base = Axis(
            "base",
            tuple(
                AxisValue(label="-".join(b.axes.values()), overrides={"rl.base": b.run_dir}) for b in chosen
            ),
        )
        grid.axes.insert(0, on_base)
        runs = [_with_grid_name(r, grid.run_dir, {"grid": name}) for r in expand(grid)]
        for r, base in zip(runs, [b for b in chosen for _ in range(len(runs) // len(chosen))]):
            needs[r.name] = base.name
        groups[str(gname)] = [r.name for r in runs]
        rl += runs
    if only:
        unknown_groups = sorted(set(only) - set(groups))
        if unknown_groups:
            raise ConfigError(
                f"{path}: --group: unknown group(s) {unknown_groups} (known: {', '.join(groups)})"
            )
        groups = {g: names for g, names in groups.items() if g in only}
        keep = {n for names in groups.values() for n in names}
        rl = [r for r in rl if r.name in keep]
        needs = {n: b for n, b in needs.items() if n in keep}
        bases = [b for b in bases if b.name in set(needs.values())]
    names = [r.name for r in bases + rl]
    if len(set(names)) != len(names):
        raise ConfigError(
            f"{path}: run names collide: {sorted({n for n in names if names.count(n) > 1})[:5]}"
        )
    return Study(os.path.abspath(path), name, tuple(tasks), bases, rl, needs, groups)


def _with_grid_name(run: SweepRun, template: str, fields: dict[str, str]) -> SweepRun:
    """``run`` with its run dir formatted with the study's name as {grid} (expand used the sub-grid's)."""
    try:
        run_dir = template.format(
            **fields, name=run.name, **{k: v for k, v in run.axes.items() if "." not in k}
        )
    except (KeyError, IndexError, ValueError) as e:
        raise ConfigError(f"run_dir template '{template}': unknown field {e}") from e
    return SweepRun(run.name, run.base, run_dir, run.axes, run.overrides, run.fixed)
