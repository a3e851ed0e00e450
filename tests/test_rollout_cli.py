"""``echo-megatron generate`` on a run with a tokenizer, in a fresh process (as a user runs it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import torch


def test_generate_command(tmp_path, data_dir):
    from omegaconf import OmegaConf

    from echo_megatron.checkpoint import save_checkpoint
    from echo_megatron.config import load_config
    from echo_megatron.distributed.init import initialize
    from echo_megatron.model.builder import build_model
    from echo_megatron.rollout.sampler import Sampler

    tok_path = str(data_dir / "tokenizers" / "gpt2" / "gpt2_tokenizer.json")
    cfg = load_config(
        None,
        [
            "model.num_layers=2",
            "model.hidden_size=32",
            "model.num_attention_heads=2",
            "model.ffn_hidden_size=64",
            "model.vocab_size=50257",
            "model.seq_length=64",
            "parallel.device=cpu",
            f"data.tokenizer.path={tok_path}",
        ],
    )
    initialize(cfg)
    model = build_model(cfg, 50257)
    run = tmp_path / "run"
    os.makedirs(run)
    OmegaConf.save(cfg, run / "config.yaml")
    save_checkpoint(str(run / "checkpoints"), 5, [model])

    args = ["--prompt", "Question: 2 + 3 =", "--prompt", "Hi", "-n", "2", "--max-new-tokens", "6"]
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "echo_megatron",
            "generate",
            str(run),
            *args,
            "--temperature",
            "0.7",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert [(r["prompt"], r["sample"]) for r in rows] == [
        ("Question: 2 + 3 =", 0),
        ("Question: 2 + 3 =", 1),
        ("Hi", 0),
        ("Hi", 1),
    ]
    # the same sampler in this process, with the command's defaults (rollout.seed = 0), gives the same samples
    from echo_megatron.data.tokenizer import load_tokenizer

    tok = load_tokenizer(cfg.data.tokenizer)
    want = Sampler(model, eod_id=tok.eod, pad_id=tok.pad, max_seq_len=64, vocab_size=50257).generate(
        [tok.encode("Question: 2 + 3 ="), tok.encode("Hi")], n=2, max_new_tokens=6, temperature=0.7, seed=0
    )
    for r, w in zip(rows, want):
        assert r["response_ids"] == w.response_ids
        assert torch.allclose(torch.tensor(r["logprobs"]), torch.tensor(w.logprobs), atol=1e-5)
        assert r["text"] == tok.decode(w.response_ids if w.finish_reason != "eos" else w.response_ids[:-1])
