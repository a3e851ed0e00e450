"""``python -m echo_megatron`` == ``echo-megatron`` (torchrun runs ``-m echo_megatron``)."""

import sys

from echo_megatron.cli import main

if __name__ == "__main__":  # the guard matters: dist_checkpointing's spawn manager re-imports __main__
    sys.exit(main())
