"""Checkpoints: megatron ``dist_checkpointing`` (reshardable across TP/PP/DP), atomic, keep-last-N."""

from echo_megatron.checkpoint.dist import (
    find_checkpoint,
    latest_checkpoint,
    load_checkpoint,
    read_common_state,
    save_checkpoint,
)

__all__ = ["find_checkpoint", "latest_checkpoint", "load_checkpoint", "read_common_state", "save_checkpoint"]
