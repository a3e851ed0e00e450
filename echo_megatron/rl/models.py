"""The models around the policy: a frozen reference, and a critic (GPT body + scalar value head).

The critic is megatron's ``GPTModel`` without its output layer (``post_process=False``), our final norm,
and a replicated ``Linear(hidden, 1)`` head, initialised from the base checkpoint's body as in the paper
(critic initialised from the base). With sequence parallelism its hidden states are gathered first.
"""

from __future__ import annotations

import torch
from megatron.core.transformer.module import MegatronModule
from omegaconf import DictConfig

from echo_megatron.model.builder import build_model
from echo_megatron.model.norms import Norm


class ValueModel(MegatronModule):
    def __init__(self, cfg: DictConfig, vocab_size: int) -> None:
        body = build_model(cfg, vocab_size, pre_process=True, post_process=False, for_ddp=True)
        super().__init__(config=body.config)
        self.model_type = body.model_type  # read by megatron's schedules
        self.body = body
        # GPTModel(post_process=False) stops before the final norm; add it and the value head.
        self.final_norm = Norm(body.config, body.config.hidden_size, eps=body.config.layernorm_epsilon)
        self.value_head = torch.nn.Linear(
            body.config.hidden_size, 1, bias=True, dtype=body.config.params_dtype
        )
        torch.nn.init.normal_(self.value_head.weight, std=1.0 / (body.config.hidden_size + 1) ** 0.5)
        torch.nn.init.zeros_(self.value_head.bias)

    def set_input_tensor(self, input_tensor) -> None:  # megatron schedules call this (PP = 1 here)
        self.body.set_input_tensor(input_tensor)

    def forward(self, tokens: torch.Tensor, position_ids: torch.Tensor, attention_mask=None) -> torch.Tensor:
        """Values ``[b, s]``."""
        from megatron.core.tensor_parallel import gather_from_sequence_parallel_region

        hidden = self.body(tokens, position_ids, attention_mask)  # [s, b, h]
        if self.config.sequence_parallel:
            hidden = gather_from_sequence_parallel_region(hidden)
        return self.value_head(self.final_norm(hidden)).squeeze(-1).transpose(0, 1).float()

    def sharded_state_dict(self, prefix: str = "", sharded_offsets: tuple = (), metadata: dict | None = None):
        from megatron.core import parallel_state as ps
        from megatron.core.transformer.utils import sharded_state_dict_default

        sd = self.body.sharded_state_dict(
            prefix=f"{prefix}body.", sharded_offsets=sharded_offsets, metadata=metadata
        )
        for name in (
            "final_norm",
            "value_head",
        ):  # replicated over TP: the TP group gives distinct replica ids
            sd.update(
                sharded_state_dict_default(
                    getattr(self, name),
                    f"{prefix}{name}.",
                    sharded_offsets,
                    metadata,
                    tp_group=ps.get_tensor_model_parallel_group(),
                )
            )
        return sd


def build_critic_chunks(cfg: DictConfig, vocab_size: int, device: torch.device) -> list:
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig

    critic = ValueModel(cfg, vocab_size).to(device)
    ddp_cfg = DistributedDataParallelConfig(
        grad_reduce_in_fp32=True,
        average_in_collective=False,
        use_distributed_optimizer=cfg.parallel.use_distributed_optimizer,
    )
    return [DistributedDataParallel(config=critic.config, ddp_config=ddp_cfg, module=critic)]


def build_reference(cfg: DictConfig, vocab_size: int, device: torch.device, base: str) -> torch.nn.Module:
    """A frozen copy of the base policy (for the KL term)."""
    from echo_megatron.checkpoint import find_checkpoint, load_checkpoint

    ref = build_model(cfg, vocab_size).to(device)
    load_checkpoint(find_checkpoint(base), [ref], load_rng=False)
    ref.eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    return ref
