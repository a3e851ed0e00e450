"""Tensor parallelism: two gloo processes generate from a TP = 2 load of a checkpoint; TP = 1 must agree.

One spawn serves every check here: greedy and sampled tokens at TP = 2 (with and without sequence
parallelism) equal TP = 1, log-probs agree within 1e-4, PP > 1 is refused with a clear error, and a
checkpoint saved at TP = 2 exports to HF with logits equal to the TP = 1 model's.
"""

from __future__ import annotations

import json
import os
import socket

import pytest
import torch

pytestmark = pytest.mark.multiproc

PROMPTS = [[5, 9, 200, 3], [17], [40, 41, 42, 43, 44, 45, 46, 47, 48, 49]]
EOD = 255
CASES = {"greedy": dict(temperature=0.0), "sampled": dict(temperature=1.0, top_p=0.95, top_k=50)}
MODEL = [
    "model.num_layers=2",
    "model.hidden_size=64",
    "model.num_attention_heads=4",
    "model.num_query_groups=2",
    "model.ffn_hidden_size=128",
    "model.vocab_size=256",
    "model.seq_length=64",
    "model.init_method_std=0.1",
    "parallel.device=cpu",
    "train.seed=3",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _generate(policy) -> dict:
    from echo_megatron.rollout.sampler import Sampler

    s = Sampler(policy.model, eod_id=EOD, pad_id=0, max_seq_len=64)
    out = {}
    for name, kw in CASES.items():
        ro = s.generate(PROMPTS, n=2, max_new_tokens=16, seed=9, **kw)
        out[name] = [[r.response_ids, r.logprobs] for r in ro]
    return out


def _worker(rank: int, port: int, ckpt: str, root: str, result: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1")
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    from megatron.core import parallel_state as ps
    from omegaconf import OmegaConf

    from echo_megatron.checkpoint import find_checkpoint, load_checkpoint
    from echo_megatron.model.builder import build_model
    from echo_megatron.rollout.loading import load_policy
    from echo_megatron.rollout.sampler import Sampler

    out = {"tp": _generate(load_policy(ckpt, tp=2))}
    sp = load_policy(ckpt, ["parallel.sequence_parallel=true"], tp=2)
    assert sp.model.config.sequence_parallel
    out["tp_sp"] = _generate(sp)
    out["sp_restored"] = (
        sp.model.config.sequence_parallel and sp.model.decoder.layers[0].mlp.linear_fc1.sequence_parallel
    )
    save_run(os.path.join(root, "tp2"), sp.cfg, [sp.model], rank)  # for the export test
    # PP = 2: the sampler refuses it; a checkpoint saved at PP = 2 (for the export test)
    ps.destroy_model_parallel()
    ps.initialize_model_parallel(tensor_model_parallel_size=1, pipeline_model_parallel_size=2)
    cfg = OmegaConf.merge(sp.cfg, {"parallel": {"tp": 1, "pp": 2, "sequence_parallel": False}})
    stage = build_model(cfg, 256)
    try:
        Sampler(stage, eod_id=EOD, pad_id=0, max_seq_len=64)
        out["pp_error"] = None
    except NotImplementedError as e:
        out["pp_error"] = str(e)
    load_checkpoint(find_checkpoint(ckpt), [stage], load_rng=False)
    save_run(os.path.join(root, "pp2"), cfg, [stage], rank)
    if rank == 0:
        with open(result, "w") as f:
            json.dump(out, f)
    torch.distributed.barrier()
    ps.destroy_model_parallel()
    torch.distributed.destroy_process_group()


def save_run(run_dir: str, cfg, model: list, rank: int) -> None:
    from omegaconf import OmegaConf

    from echo_megatron.checkpoint import save_checkpoint

    if rank == 0:
        os.makedirs(run_dir, exist_ok=True)
        OmegaConf.save(cfg, os.path.join(run_dir, "config.yaml"))
    save_checkpoint(os.path.join(run_dir, "checkpoints"), 1, model)


@pytest.fixture(scope="module")
def tp_run(tmp_path_factory):
    """(TP = 1 policy, results of the 2-process job, TP = 2 run dir)."""
    from omegaconf import OmegaConf

    from echo_megatron.checkpoint import save_checkpoint
    from echo_megatron.config import load_config
    from echo_megatron.distributed.init import initialize
    from echo_megatron.model.builder import build_model
    from echo_megatron.rollout.loading import load_policy

    root = tmp_path_factory.mktemp("tp")
    cfg = load_config(None, [*MODEL, f"run_dir={root / 'run'}"])
    initialize(cfg)
    os.makedirs(root / "run", exist_ok=True)
    OmegaConf.save(cfg, root / "run" / "config.yaml")
    save_checkpoint(str(root / "run" / "checkpoints"), 0, [build_model(cfg, 256)])
    result = str(root / "result.json")
    torch.multiprocessing.start_processes(
        _worker,
        args=(_free_port(), str(root / "run"), str(root), result),
        nprocs=2,
        start_method="spawn",
    )
    with open(result) as f:
        out = json.load(f)
    return load_policy(str(root / "run"), tp=1), out, root


@pytest.mark.parametrize("layout", ["tp", "tp_sp"])
@pytest.mark.parametrize("case", list(CASES))
def test_tp2_generation_equals_tp1(tp_run, layout, case):
    policy, out, _ = tp_run
    want = _generate(policy)[case]
    got = out[layout][case]
    assert [ids for ids, _ in got] == [ids for ids, _ in want]
    for (_, lp_got), (_, lp_want) in zip(got, want):
        assert torch.allclose(torch.tensor(lp_got), torch.tensor(lp_want), atol=1e-4, rtol=0)


def test_sequence_parallel_restored_and_pp_refused(tp_run):
    _, out, _ = tp_run
    assert out["sp_restored"]
    assert out["pp_error"] and "pipeline parallelism" in out["pp_error"]


@pytest.mark.parametrize("layout", ["tp2", "pp2"])
def test_export_from_other_layouts(tp_run, tmp_path, layout):
    from transformers import AutoModelForCausalLM

    from echo_megatron.commands.export_hf import export_hf
    from echo_megatron.rollout.reference import full_logits

    policy, _, root = tp_run
    out = export_hf(str(root / layout), str(tmp_path / "hf"))
    hf = AutoModelForCausalLM.from_pretrained(out, local_files_only=True).eval()
    assert type(hf).__name__ == "OlmoForCausalLM"
    ids = torch.tensor(PROMPTS[2:] * 2)
    with torch.no_grad():
        assert torch.allclose(hf(ids).logits, full_logits(policy.model, ids), atol=1e-4, rtol=0)
