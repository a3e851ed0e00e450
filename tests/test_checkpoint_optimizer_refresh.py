"""Weights loaded under an existing optimizer reach its main parameters (bf16 mixed precision).

megatron's bf16 optimizer keeps fp32 copies of the weights it was built with and writes them back into the model
at each step. Loading new weights without the optimizer state (an RL policy from its base, ``checkpoint.load``
without the optimizer) must refresh those copies, or the first step silently restores the random
initialisation: on an H100 a GRPO run's policy went to uniform entropy (7.5 nats) after one step.

bf16 is a GPU setting; here the model and optimizer are built in bf16 on the CPU with CUDA reported present.
"""

from __future__ import annotations

import torch

from echo_megatron.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from echo_megatron.config import load_config
from echo_megatron.distributed.init import destroy, initialize
from echo_megatron.model import precision
from echo_megatron.training.setup import build_train_state


def _main_params(optimizer) -> list[torch.Tensor]:
    opts = getattr(optimizer, "chained_optimizers", [optimizer])
    return [p for o in opts for group in o.fp32_from_float16_groups for p in group]


def _bf16_state(cfg, monkeypatch):
    with monkeypatch.context() as m:  # bf16 is refused where CUDA is absent; only the build needs to think so
        m.setattr(torch.cuda, "is_available", lambda: True)
        return build_train_state(cfg, cfg.model.vocab_size, torch.device("cpu"), total_steps=4)


def test_loading_weights_refreshes_the_bf16_optimizer_copies(tmp_path, monkeypatch):
    monkeypatch.setattr(precision, "te_available", lambda: False)
    cfg = load_config("recipes/tiny_cpu.yaml", ["train.precision=bf16", "model.transformer_impl=local"])
    initialize(cfg)
    try:
        base = _bf16_state(cfg, monkeypatch)
        save_checkpoint(str(tmp_path), 1, base.model, None, None, {})
        torch.manual_seed(1)  # another initialisation: the weights the optimizer is built with
        st = _bf16_state(cfg, monkeypatch)
        model_params = list(st.model[0].parameters())
        mains = _main_params(st.optimizer)
        assert len(mains) == len(model_params) and mains[0].dtype == torch.float32
        assert any(not torch.equal(a, b) for a, b in zip(model_params, base.model[0].parameters()))

        load_checkpoint(
            latest_checkpoint(str(tmp_path)),
            st.model,
            st.optimizer,
            load_rng=False,
            load_optimizer_state=False,
        )
        loaded = [p.detach().clone() for p in st.model[0].parameters()]
        assert all(torch.equal(a, b) for a, b in zip(loaded, base.model[0].parameters()))
        assert all(torch.equal(m.bfloat16(), p) for m, p in zip(_main_params(st.optimizer), loaded))
    finally:
        destroy()
