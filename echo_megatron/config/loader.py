"""Load a recipe: schema <- base recipes <- model preset <- recipe <- ``key=value`` overrides.

Every layer is merged into the structured schema, so an unknown key or a wrong type fails at once
with a :class:`ConfigError` naming the key and where it came from (file or command line).
A recipe may name ``base: other.yaml`` (relative to itself) to inherit from another recipe.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from echo_megatron.config.checks import ConfigValueError, check_config
from echo_megatron.config.presets import PRESETS
from echo_megatron.config.schema import ExperimentConfig
from echo_megatron.errors import UserError


class ConfigError(UserError, ValueError):
    """A bad recipe or override; the CLI turns it into exit status 2."""


# The recipes installed with the package (echo_megatron/recipes: the repository's recipes/ folder).
SHIPPED_RECIPES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "recipes")


def resolve_recipe(path: str) -> str:
    """``path`` if it is a file, else the shipped recipe of that name (``recipes/paper/150m_tg.yaml`` or
    ``paper/150m_tg.yaml`` work from any folder, whether the package is a clone or an installed wheel)."""
    if os.path.isfile(path):
        return path
    rel = os.path.normpath(path)
    rel = rel[len("recipes" + os.sep) :] if rel.startswith("recipes" + os.sep) else rel
    shipped = os.path.join(SHIPPED_RECIPES, rel)
    if not os.path.isabs(path) and os.path.isfile(shipped):
        return shipped
    raise ConfigError(f"recipe file not found: {path}")


_INT, _FLOAT, _TIMESTAMP = (f"tag:yaml.org,2002:{t}" for t in ("int", "float", "timestamp"))


class RecipeLoader(yaml.SafeLoader):
    """YAML as recipes mean it: PyYAML's safe loader without YAML 1.1's base-60 numbers and timestamps, so
    ``30:00`` stays the string it looks like (a Slurm time, ``cluster.time``; YAML 1.1 reads the integer
    1800, 1,800 minutes to Slurm) and ``2024-01-01`` stays a string; ``1e-5`` is a float (YAML 1.1 wants a
    dot: ``1.0e-5``); a key given twice in one mapping is an error."""

    yaml_implicit_resolvers = {
        first: [(tag, rx) for tag, rx in pairs if tag not in (_INT, _FLOAT, _TIMESTAMP)]
        for first, pairs in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"found duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


RecipeLoader.add_implicit_resolver(
    _INT,
    re.compile(r"^(?:[-+]?0b[0-1_]+|[-+]?0[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+)$"),
    list("-+0123456789"),
)
RecipeLoader.add_implicit_resolver(
    _FLOAT,
    re.compile(
        r"^(?:[-+]?[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?|[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+"
        r"|[-+]?\.[0-9][0-9_]*(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
    ),
    list("-+0123456789."),
)


def parse_yaml(text: str) -> Any:
    """A YAML document or scalar as recipes read it (:class:`RecipeLoader`)."""
    return yaml.load(text, Loader=RecipeLoader)  # noqa: S506 - a SafeLoader subclass


def _read_yaml(path: str) -> DictConfig:
    try:
        with open(path, encoding="utf-8") as f:
            data = parse_yaml(f.read())
        cfg = OmegaConf.create(data) if isinstance(data, dict) else None
    except Exception as e:  # yaml syntax errors
        raise ConfigError(f"{path}: cannot parse YAML: {' '.join(str(e).split())}") from e
    if not isinstance(cfg, DictConfig):
        raise ConfigError(f"{path}: a recipe must be a YAML mapping")
    return cfg


def _parse_overrides(overrides: Sequence[str]) -> DictConfig:
    """``key=value`` overrides as a config; each value read as YAML the way recipes are."""
    out = OmegaConf.create({})
    for item in overrides:
        key, value = item.split("=", 1)
        OmegaConf.update(out, key, parse_yaml(value) if value else None, merge=True, force_add=True)
    return out


def read_yaml_mapping(path: str, what: str) -> dict[str, Any]:
    """The YAML mapping in ``path``, a ``what`` file (grid, pipeline); a ConfigError naming the file when it is
    missing, not YAML, or not a mapping."""
    if not os.path.isfile(path):
        raise ConfigError(f"{what} file not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            data = parse_yaml(f.read())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: cannot parse YAML: {' '.join(str(e).split())}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a {what} must be a YAML mapping")
    return data


def _recipe_chain(path: str, seen: tuple[str, ...] = ()) -> list[tuple[str, DictConfig]]:
    """[(file, cfg)] from the root base to ``path``; ``base:`` keys are removed."""
    path = os.path.abspath(path)
    if path in seen:
        raise ConfigError(f"{path}: recipe inheritance cycle")
    if not os.path.isfile(path):
        raise ConfigError(f"recipe file not found: {path}" + (f" (the base of {seen[-1]})" if seen else ""))
    cfg = _read_yaml(path)
    base = cfg.pop("base", None)
    chain: list[tuple[str, DictConfig]] = []
    if base:
        chain = _recipe_chain(os.path.join(os.path.dirname(path), str(base)), seen + (path,))
    return chain + [(path, cfg)]


def merge_checked(base: DictConfig, layer: Any, where: str) -> DictConfig:
    """``OmegaConf.merge(base, layer)``; a key or value the schema refuses is a ConfigError naming ``where``."""
    try:
        return OmegaConf.merge(base, layer)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or ""
        msg = str(e).splitlines()[0]
        raise ConfigError(f"{where}: bad key '{key}': {msg}" if key else f"{where}: {msg}") from e


def _preset_name(cfg: DictConfig, where: str) -> str | None:
    """``model.preset`` of one layer, or None; a ConfigError when ``model`` is no mapping or the name no string."""
    model = cfg.get("model")
    if model is not None and not isinstance(model, DictConfig):
        raise ConfigError(f"{where}: 'model' must be a mapping of model keys, not {type(model).__name__}")
    name = None if model is None else model.get("preset")
    if name is not None and not isinstance(name, str):
        raise ConfigError(f"{where}: 'model.preset' must be a preset name, not {type(name).__name__}")
    return name


def _preset_layer(chain: list[tuple[str, DictConfig]], overrides: DictConfig) -> tuple[str, dict]:
    name = _preset_name(overrides, "command line")
    for path, cfg in reversed(chain):  # the command line, then the most derived recipe, wins
        name = _preset_name(cfg, path) if name is None else name
    if name is None:
        return "", {}
    if name not in PRESETS:
        raise ConfigError(f"model.preset: unknown preset '{name}' (known: {', '.join(PRESETS)})")
    return name, {"model": PRESETS[name]}


def dotlist_value(v: Any) -> str:
    """A value as OmegaConf's dotlist parser reads it back in a ``key=value`` override (lists and dicts in flow
    style; a string YAML would read as something else is quoted)."""
    if isinstance(v, (list, dict)):
        return yaml.safe_dump(v, default_flow_style=True).strip()
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str) and yaml.safe_load(v) != v:  # "12:00:00" would read back as the int 43200
        return "'" + v.replace("'", "''") + "'"
    return str(v)


def load_config(recipe: str | None, overrides: Sequence[str] = ()) -> DictConfig:
    """The resolved, validated config (a structured DictConfig typed as :class:`ExperimentConfig`)."""
    cfg = OmegaConf.structured(ExperimentConfig)
    chain = _recipe_chain(resolve_recipe(recipe)) if recipe else []
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"command line: override '{item}' is not of the form key=value")
    try:
        dotlist = _parse_overrides(overrides)
    except (OmegaConfBaseException, yaml.YAMLError) as e:
        raise ConfigError(f"command line: {' '.join(str(e).split())}") from e
    preset_name, preset = _preset_layer(chain, dotlist)
    if preset:
        cfg = merge_checked(cfg, preset, f"preset {preset_name}")
    for path, layer in chain:
        cfg = merge_checked(cfg, layer, path)
    cfg = merge_checked(cfg, dotlist, "command line")
    try:
        OmegaConf.resolve(cfg)
    except OmegaConfBaseException as e:
        raise ConfigError(f"cannot resolve interpolation: {e}") from e
    try:
        check_config(cfg)
    except ConfigValueError as e:
        raise ConfigError(f"{recipe or 'command line'}: {e}") from None
    OmegaConf.set_readonly(cfg, True)  # a changed copy is OmegaConf.merge(cfg, {...}), never an edit in place
    return cfg


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg)
