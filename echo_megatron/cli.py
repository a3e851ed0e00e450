"""One entry point: ``echo-megatron <command> ...``.

Each command lives in ``echo_megatron/commands/<name>.py`` (listed in ``commands.COMMANDS``) and exposes
two functions: ``add_arguments(parser)`` and ``run(args) -> int``. Modules are imported lazily so that
``echo-megatron config`` does not pay for importing torch and megatron-core.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings

from echo_megatron.commands import COMMANDS
from echo_megatron.config import ConfigError
from echo_megatron.errors import UserError


def _load(module: str):
    return importlib.import_module(f"echo_megatron.commands.{module}")


def main(argv: list[str] | None = None) -> int:
    # megatron-core warns at import about optional GPU packages (Apex, TransformerEngine): noise on CPU.
    warnings.filterwarnings("ignore", category=UserWarning, module=r"megatron\..*")
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="echo-megatron", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    chosen = argv[0] if argv and argv[0] in COMMANDS else None
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            _load(module).add_arguments(p)
    args, extra = parser.parse_known_args(argv)
    # key=value overrides may also follow flags (`submit R --nodes 4 k=v`): argparse leaves those over.
    if extra and hasattr(args, "overrides") and all("=" in x and not x.startswith("-") for x in extra):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    mod = _load(COMMANDS[args.command][0])
    try:
        rc = mod.run(args)
    except ConfigError as e:
        print(f"echo-megatron {args.command}: config error: {e}", file=sys.stderr)
        return 2
    except UserError as e:
        print(f"echo-megatron {args.command}: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. `echo-megatron sweep --dry-run | head`
        sys.stderr.close()
        return 0
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
