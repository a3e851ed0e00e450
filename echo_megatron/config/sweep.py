"""Sweep grids: one YAML expands into concrete recipes (one per point of the grid), each loadable by
``echo_megatron.config.load_config``. The same expansion feeds ``echo-megatron sweep`` (recipes on disk),
``submit`` (a job array over them) and ``report`` (their run dirs).

A grid file::

    name: 150m_rl                       # prefix of every run name
    base: ../rl/150m_grpo.yaml          # optional default base recipe, relative to the grid file
    run_dir: runs/{grid}/{name}         # optional template: {grid}, {name} and any named axis, e.g. {mixture}
    set:                                # dotted overrides applied to every run
      rl.num_rollout_samples: 64
    axes:                               # the cartesian product, in this order
      mixture:                          # named values: label -> several dotted keys (and `base`)
        tg: {rl.base: runs/150m_tg/checkpoints}
        tg+omi1: {rl.base: runs/150m_tg+omi1/checkpoints}
      rl.initial_policy_kl_penalty: [0.0, 0.001]   # a dotted key -> a list of values

Run names are deterministic: ``<name>-<label>-<label>...`` with a dotted axis labelled
``<last key part><value>`` (``initial_policy_kl_penalty0.001``). Every override is checked against the
config schema when the grid is loaded, so a typo fails before anything is written.
"""

from __future__ import annotations

import itertools
import json
import os
import re
from dataclasses import dataclass, field
from typing import Any

import yaml
from omegaconf import OmegaConf

from echo_megatron.config.loader import (
    ConfigError,
    dotlist_value,
    load_config,
    merge_checked,
    read_yaml_mapping,
)
from echo_megatron.config.schema import ExperimentConfig


@dataclass(frozen=True)
class AxisValue:
    label: str
    overrides: dict[str, Any]  # dotted key -> value
    base: str | None = None  # absolute path of a base recipe this value selects


@dataclass(frozen=True)
class Axis:
    name: str
    values: tuple[AxisValue, ...]


@dataclass
class Grid:
    path: str
    name: str
    base: str | None  # absolute path, or None
    run_dir: str  # template
    fixed: dict[str, Any]
    axes: list[Axis]

    @property
    def size(self) -> int:
        n = 1
        for a in self.axes:
            n *= len(a.values)
        return n


@dataclass
class SweepRun:
    name: str
    base: str | None  # absolute path of the base recipe
    run_dir: str
    axes: dict[str, str]  # axis name -> label
    overrides: dict[str, Any]  # the axis overrides (dotted); the grid's `set` applies too
    fixed: dict[str, Any] = field(default_factory=dict)

    def all_overrides(self) -> dict[str, Any]:
        """Everything the recipe sets over its base, in order: name, run_dir, description, set, axes."""
        desc = " ".join(f"{k}={v}" for k, v in self.axes.items())
        return {"name": self.name, "run_dir": self.run_dir, "description": f"sweep point: {desc}"} | {
            **self.fixed,
            **self.overrides,
        }

    def override_args(self) -> list[str]:
        """:meth:`all_overrides` as ``key=value`` strings for ``load_config(self.base, ...)``."""
        return [f"{k}={dotlist_value(v)}" for k, v in self.all_overrides().items()]


# ---- loading -----------------------------------------------------------------------------------------


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}, "c.d": 2} -> {"a.b": 1, "c.d": 2}."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def nest(dotted: dict[str, Any]) -> dict[str, Any]:
    """{"rl.base": x, "name": y} -> {"rl": {"base": x}, "name": y} (a plain dict, for YAML)."""
    cfg = OmegaConf.create({})
    for k, v in dotted.items():
        OmegaConf.update(cfg, k, v, merge=True, force_add=True)
    return OmegaConf.to_container(cfg, resolve=False)  # type: ignore[return-value]


def check_overrides(dotted: dict[str, Any], where: str) -> None:
    """Fail with a ConfigError naming ``where`` and the key if an override is not in the schema or mistyped."""
    merge_checked(OmegaConf.structured(ExperimentConfig), OmegaConf.create(nest(dotted)), where)


def _label_value(v: Any) -> str:
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        return format(v, "g")
    return str(v)


def safe_name(text: str) -> str:
    """A run / file name: letters, digits and ``. _ + = -``; anything else becomes ``_``."""
    return re.sub(r"[^A-Za-z0-9._+=-]+", "_", text)


def _resolve_base(grid_path: str, base: Any, where: str) -> str:
    if not isinstance(base, str) or not base:
        raise ConfigError(f"{where}: 'base' must be a recipe path")
    return os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(grid_path)), base))


def _parse_axis(path: str, name: Any, spec: Any) -> Axis:
    where = f"{path}: axis '{name}'"
    name = str(name)
    if isinstance(spec, list):
        if "." not in name:
            raise ConfigError(f"{where}: a list of values needs a dotted config key as the axis name")
        if not spec:
            raise ConfigError(f"{where}: no values")
        last = name.rsplit(".", 1)[1]
        values = []
        for v in spec:
            if isinstance(v, (dict, list)):
                raise ConfigError(f"{where}: values of a dotted axis must be scalars, got {v!r}")
            check_overrides({name: v}, f"{where} value {v!r}")
            values.append(AxisValue(label=safe_name(f"{last}{_label_value(v)}"), overrides={name: v}))
        return Axis(name, tuple(values))
    if isinstance(spec, dict) and spec:
        values = []
        for label, bundle in spec.items():
            if not isinstance(bundle, dict):
                raise ConfigError(
                    f"{where}: value '{label}' must be a mapping of dotted keys to values "
                    f"(or make the axis a dotted key with a list of values)"
                )
            flat = _flatten(bundle)
            base = flat.pop("base", None)
            check_overrides(flat, f"{where} value '{label}'")
            values.append(
                AxisValue(
                    label=safe_name(str(label)),
                    overrides=flat,
                    base=_resolve_base(path, base, f"{where} value '{label}'") if base is not None else None,
                )
            )
        labels = [v.label for v in values]
        if len(set(labels)) != len(labels):
            raise ConfigError(f"{where}: labels are not unique once made file-safe: {labels}")
        return Axis(name, tuple(values))
    raise ConfigError(
        f"{where}: must be a list of values (for a dotted key) or a mapping label -> {{key: value, ...}}"
    )


def load_grid(path: str) -> Grid:
    """Parse and check a grid file (keys, types and every override against the config schema)."""
    raw = read_yaml_mapping(path, "grid")
    unknown = set(raw) - {"name", "base", "run_dir", "set", "axes", "description"}
    if unknown:
        raise ConfigError(
            f"{path}: unknown grid key(s) {sorted(unknown)} (known: name, base, run_dir, set, axes)"
        )
    name = raw.get("name") or os.path.splitext(os.path.basename(path))[0]
    return grid_from_mapping(path, raw, str(name), str(raw.get("run_dir") or "runs/{grid}/{name}"), path)


def grid_from_mapping(
    path: str, raw: dict, name: str, run_dir: str, where: str, inherited: dict[str, Any] | None = None
) -> Grid:
    """A Grid from the ``base`` / ``set`` / ``axes`` of a mapping (a grid file, or a part of a study file at
    ``where``); ``inherited`` overrides come before the mapping's own ``set``."""
    if not isinstance(raw.get("set") or {}, dict):
        raise ConfigError(f"{where}: 'set' must be a mapping of dotted keys to values")
    fixed = {**(inherited or {}), **_flatten(raw.get("set") or {})}
    check_overrides(fixed, f"{where}: set")
    axes_raw = raw.get("axes")
    if not isinstance(axes_raw, dict) or not axes_raw:
        raise ConfigError(f"{where}: 'axes' must be a non-empty mapping")
    axes = [_parse_axis(path, k, v) for k, v in axes_raw.items()]
    base = raw.get("base")
    return Grid(
        path=os.path.abspath(path),
        name=safe_name(name),
        base=_resolve_base(path, base, f"{where}: base") if base is not None else None,
        run_dir=run_dir,
        fixed=fixed,
        axes=axes,
    )


# ---- expansion ---------------------------------------------------------------------------------------


def expand(grid: Grid) -> list[SweepRun]:
    """Every point of the grid, in axis order (the last axis varies fastest), with unique names."""
    runs: list[SweepRun] = []
    for point in itertools.product(*(a.values for a in grid.axes)):
        labels = {a.name: v.label for a, v in zip(grid.axes, point)}
        name = "-".join([grid.name, *labels.values()])
        overrides: dict[str, Any] = {}
        owner: dict[str, str] = {}
        base, base_axis = grid.base, None
        for axis, value in zip(grid.axes, point):
            for k, v in value.overrides.items():
                if k in owner:
                    raise ConfigError(f"{grid.path}: axes '{owner[k]}' and '{axis.name}' both set '{k}'")
                owner[k] = axis.name
                overrides[k] = v
            if value.base is not None:
                if base_axis is not None:
                    raise ConfigError(f"{grid.path}: axes '{base_axis}' and '{axis.name}' both choose 'base'")
                base, base_axis = value.base, axis.name
        fields = {"grid": grid.name, "name": name, **{k: v for k, v in labels.items() if "." not in k}}
        try:
            run_dir = grid.run_dir.format(**fields)
        except (KeyError, IndexError, ValueError) as e:
            raise ConfigError(
                f"{grid.path}: run_dir template '{grid.run_dir}': unknown field {e} (known: {', '.join(fields)})"
            ) from e
        runs.append(SweepRun(name, base, run_dir, labels, overrides, dict(grid.fixed)))
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise ConfigError(f"{grid.path}: run names collide: {dup[:5]}")
    return runs


def recipe_text(run: SweepRun, recipe_path: str, grid_path: str) -> str:
    """The YAML of one run's recipe: ``base:`` (relative to the recipe) then the nested overrides."""
    lines = [f"# generated by `echo-megatron sweep {os.path.relpath(grid_path)}`; do not edit, edit the grid"]
    if run.base:
        lines.append(f"base: {os.path.relpath(run.base, os.path.dirname(os.path.abspath(recipe_path)))}")
    body = yaml.safe_dump(nest(run.all_overrides()), sort_keys=False, default_flow_style=False, width=1000)
    return "\n".join(lines) + "\n" + body


def missing_bases(runs: list[SweepRun]) -> list[str]:
    return sorted({r.base for r in runs if r.base and not os.path.isfile(r.base)})


def write_recipes(grid: Grid, runs: list[SweepRun], out_dir: str, validate: bool = True) -> list[str]:
    """Write ``out_dir/<run>.yaml`` for every run, ``runs.txt`` (one recipe a line, for job arrays) and
    ``sweep.json`` (name, recipe, run_dir, axes and overrides of each run). With ``validate``, every recipe
    is loaded back through ``load_config`` (so its base must exist)."""
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for r in runs:
        path = os.path.join(out_dir, f"{r.name}.yaml")
        with open(path, "w", encoding="utf-8") as f:
            f.write(recipe_text(r, path, grid.path))
        if validate:
            load_config(path)
        paths.append(path)
    with open(os.path.join(out_dir, "runs.txt"), "w", encoding="utf-8") as f:
        f.write("".join(os.path.abspath(p) + "\n" for p in paths))
    manifest = {
        "grid": grid.path,
        "name": grid.name,
        "set": grid.fixed,
        "runs": [
            {
                "name": r.name,
                "recipe": os.path.abspath(p),
                "base": r.base,
                "run_dir": r.run_dir,
                "axes": r.axes,
                "overrides": r.overrides,
            }
            for r, p in zip(runs, paths)
        ],
    }
    with open(os.path.join(out_dir, "sweep.json"), "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=1)
    return paths
