"""echo-megatron: pretrain -> RL -> per-format analysis on megatron-core."""

__version__ = "0.1.0"
