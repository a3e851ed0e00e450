"""Every user value that reaches a rendered sbatch script, checked before rendering: none can add a line.

A value lands in the script in one of three ways. In an ``#SBATCH`` line, unquoted (sbatch reads those lines
itself, and a newline would end the directive and start a shell command): such values must match Slurm's own
grammar. In the shell body, single-quoted by the template's ``q`` filter: quoting makes them inert, but a control
character would still garble the script or the log. Or as a shell line of their own (``cluster.setup``, meant to be
shell). Rules:

- no value anywhere may hold a control character (tab aside): no newline, carriage return, NUL, escape, ...;
- ``cluster.partition`` / ``cluster.account``: comma-separated names of letters, digits, ``_``, ``.``, ``-``;
- ``cluster.time``: sbatch's ``--time`` forms (``M``, ``M:S``, ``H:M:S``, ``D-H``, ``D-H:M``, ``D-H:M:S``,
  ``UNLIMITED``/``INFINITE``);
- ``cluster.mem``: a whole number with an optional ``K``/``M``/``G``/``T`` suffix;
- paths in ``#SBATCH`` lines (``run_dir`` and the slurm folder under it, the submit directory): no whitespace,
  quotes, backslashes or ``%`` (which ``--output`` expands);
- ``cluster.sbatch_args``: each an option (``-x...`` / ``--xxx...``);
- stage names and commands (in the script's title comment): letters, digits, ``_``, ``.``, ``+``, ``-``.
"""

from __future__ import annotations

import re

from omegaconf import DictConfig, ListConfig

from echo_megatron.config import ConfigError

_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_NAMES = re.compile(r"[A-Za-z0-9_.-]+(?:,[A-Za-z0-9_.-]+)*")
_TIME = re.compile(r"\d+(?::\d+){0,2}|\d+-\d+(?::\d+){0,2}|(?i:unlimited|infinite)")
_MEM = re.compile(r"\d+[KMGTkmgt]?")
_SBATCH_PATH = re.compile(r"[^\s'\"\\%]+")
_OPTION = re.compile(r"--?[A-Za-z]")
_TITLE_WORD = re.compile(r"[A-Za-z0-9_.+-]+")


def _strings(node, key: str):
    """(dotted key, string) for every string below ``node``."""
    if isinstance(node, (DictConfig, dict)):
        for k, v in node.items():
            yield from _strings(v, f"{key}.{k}")
    elif isinstance(node, (ListConfig, list, tuple)):
        for i, v in enumerate(node):
            yield from _strings(v, f"{key}[{i}]")
    elif isinstance(node, str):
        yield key, node


def _need(ok: bool, where: str, key: str, value: str, rule: str) -> None:
    if not ok:
        raise ConfigError(f"{where}: {key} {value!r} is not {rule}")


def check_script_values(
    cluster: DictConfig, where: str, stage: str, command: str, paths: dict[str, str]
) -> None:
    """Raise ConfigError naming the first value that could inject into the sbatch script (rules above).
    ``paths``: name -> path for the paths written into ``#SBATCH`` lines."""
    for key, value in [*_strings(cluster, "cluster"), *paths.items(), ("stage", stage), ("command", command)]:
        _need(not _CONTROL.search(value), where, key, value, "free of control characters")
    for key in ("partition", "account"):
        if cluster[key] is not None:
            _need(
                bool(_NAMES.fullmatch(str(cluster[key]))),
                where,
                f"cluster.{key}",
                cluster[key],
                "a Slurm name list",
            )
    _need(
        bool(_TIME.fullmatch(str(cluster.time))), where, "cluster.time", cluster.time, "a Slurm --time value"
    )
    if cluster.mem is not None:
        _need(
            bool(_MEM.fullmatch(str(cluster.mem))), where, "cluster.mem", cluster.mem, "a Slurm --mem value"
        )
    for key, path in paths.items():
        _need(bool(_SBATCH_PATH.fullmatch(path)), where, key, path, "a path without spaces, quotes or %")
    for i, arg in enumerate(cluster.sbatch_args):
        _need(bool(_OPTION.match(str(arg))), where, f"cluster.sbatch_args[{i}]", arg, "an sbatch option")
    for key, word in (("stage", stage), ("command", command)):
        _need(bool(_TITLE_WORD.fullmatch(word)), where, key, word, "a plain name")
