"""Checkpoints: megatron ``dist_checkpointing`` (reshardable across TP/PP/DP), atomic, keep-last-N."""

from echo_megatron.checkpoint.dist import (
    checkpoint_dir,
    find_checkpoint,
    latest_checkpoint,
    load_checkpoint,
    read_common_state,
    save_checkpoint,
)

__all__ = [
    "checkpoint_dir",
    "find_checkpoint",
    "latest_checkpoint",
    "load_checkpoint",
    "read_common_state",
    "save_checkpoint",
]
