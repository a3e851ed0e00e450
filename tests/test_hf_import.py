"""HF import: tiny random OLMo / Llama models made here with transformers become echo-megatron runs that compute
HF's logits (TP 1 and TP 2, within 1e-4 in fp32) and HF's greedy tokens, export back to the same safetensors
bytes, and serve as the base of RL, Expert Iteration, continued pretraining and eval; unsupported features are
refused by name before anything is written. Also Megatron-LM's checkpoint dialect: the tracker file, and a
checkpoint written the way Megatron-LM saves one.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from argparse import Namespace
from pathlib import Path

import pytest
import torch
from echo_testing import cli, free_port

from echo_megatron.config import ConfigError

TEXTS = [
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May.",
    "How many clips did Natalia sell altogether in April and May? 48 + 24 = 72.",
    "x = 3 * 7\nprint(x - 5)\n",
]


def _bytes(t: torch.Tensor) -> bytes:
    return t.contiguous().view(torch.uint8).numpy().tobytes()


def safetensors_of(d: Path) -> dict[str, tuple[torch.dtype, tuple, bytes]]:
    from safetensors import safe_open

    out = {}
    for f in sorted(d.glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as st:
            for k in st.keys():
                t = st.get_tensor(k)
                out[k] = (t.dtype, tuple(t.shape), _bytes(t))
    return out


@pytest.fixture(scope="module")
def tokenizer_json(tmp_path_factory) -> Path:
    """A small byte-level BPE (ids 0, 1 = <|endoftext|>, <|pad|>), trained here in a blink."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=["<|endoftext|>", "<|pad|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(TEXTS * 10, trainer)
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    tok.save(str(path))
    return path


def make_hf(
    root: Path,
    arch: str,
    tokenizer: Path,
    vocab: int | None = None,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    **config,
) -> Path:
    """A random ``arch`` (olmo | llama | mistral) model saved with ``save_pretrained`` + the tokenizer; norm gains and biases
    are perturbed so that a wrong mapping of them shows in the logits."""
    from tokenizers import Tokenizer
    from transformers import AutoModelForCausalLM, LlamaConfig, MistralConfig, OlmoConfig

    kw = dict(
        vocab_size=vocab or Tokenizer.from_file(str(tokenizer)).get_vocab_size(),
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=128,
        initializer_range=0.1,
        bos_token_id=None,
        eos_token_id=0,
        pad_token_id=1,
    )
    kw.update(config)
    cfg = {"olmo": OlmoConfig, "llama": LlamaConfig, "mistral": MistralConfig}[arch](**kw)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith(".bias"):
                p.add_(0.2 * torch.randn_like(p))
    out = root / f"hf_{arch}_{seed}"
    model.save_pretrained(out)
    shutil.copy(tokenizer, out / "tokenizer.json")
    return out


def hf_logits(hf_dir: Path, ids: torch.Tensor) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        return hf(ids).logits


def tokens(vocab: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, vocab, (3, 40), generator=torch.Generator().manual_seed(seed))


# -- exactness, in one process (TP = 1) ----------------------------------------------------------------------
CASES = {
    "olmo": ("olmo", {}),
    "olmo-tied-gqa": ("olmo", {"tie_word_embeddings": True, "num_key_value_heads": 2}),
    "llama-gqa": ("llama", {"num_key_value_heads": 2, "rms_norm_eps": 1e-5}),
    "llama-tied-mqa-bias": (
        "llama",
        {"tie_word_embeddings": True, "num_key_value_heads": 1, "attention_bias": True, "mlp_bias": True},
    ),
    "llama-rope-llama3": (
        "llama",
        {
            "num_key_value_heads": 2,
            "rope_parameters": {
                "rope_type": "llama3",
                "rope_theta": 500000.0,
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192,
            },
        },
    ),
    "llama-rope-linear": (
        "llama",
        {"rope_parameters": {"rope_type": "linear", "rope_theta": 20000.0, "factor": 4.0}},
    ),
    "llama-bf16-wider-vocab": ("llama", {"vocab_size": 384, "dtype": torch.bfloat16}),
    "olmo-odd-vocab": ("olmo", {"vocab_size": 325}),
    "mistral-no-window": ("mistral", {"num_key_value_heads": 2, "sliding_window": None}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_import_matches_hf_and_exports_back_byte_for_byte(case, tokenizer_json, tmp_path):
    from echo_megatron.checkpoint.hf_import import import_hf
    from echo_megatron.commands.export_hf import export_hf
    from echo_megatron.rollout.loading import load_policy
    from echo_megatron.rollout.reference import full_logits

    arch, kw = CASES[case]
    kw = dict(kw)
    dtype = kw.pop("dtype", torch.float32)
    vocab = kw.pop("vocab_size", None)
    src = make_hf(tmp_path, arch, tokenizer_json, vocab=vocab, dtype=dtype, **kw)
    if case == "llama-rope-linear":  # the transformers 4 spelling of config.json reads the same
        c = json.loads((src / "config.json").read_text())
        rope = c.pop("rope_parameters")
        c["rope_theta"] = rope.pop("rope_theta")
        c["rope_scaling"] = {"type": rope["rope_type"], "factor": rope["factor"]}
        (src / "config.json").write_text(json.dumps(c))
    run = Path(import_hf(str(src), str(tmp_path / "run")))
    assert {"config.yaml", "checkpoints", "tokenizer", "hf_import.json"} <= set(os.listdir(run))
    policy = load_policy(str(run), tp=1)
    hf_vocab = json.loads((src / "config.json").read_text())["vocab_size"]
    m = policy.cfg.model
    if case == "olmo-odd-vocab":  # 325 has no divisor that is a multiple of 8: pad to 384, export cuts back
        assert (m.make_vocab_size_divisible_by, m.hf_vocab_size) == (128, 325)
    else:
        assert m.hf_vocab_size is None
        assert policy.model.embedding.word_embeddings.weight.shape[0] == hf_vocab
    ids = tokens(policy.vocab.size)
    with torch.no_grad():
        ours = full_logits(policy.model, ids)[..., :hf_vocab]
    theirs = hf_logits(src, ids)
    assert torch.allclose(ours, theirs, atol=1e-4, rtol=0), (ours - theirs).abs().max()
    assert ours.abs().max() > 0.5  # logits with something to compare

    out = tmp_path / "exported"
    export_hf(str(run), str(out), dtype="bfloat16" if dtype == torch.bfloat16 else "float32")
    want, got = safetensors_of(src), safetensors_of(out)
    assert want.keys() == got.keys()
    for k in want:
        assert want[k] == got[k], k


def test_fuse_qkv_inverts_split_qkv():
    from echo_megatron.checkpoint.hf_export import split_qkv
    from echo_megatron.checkpoint.hf_import import fuse_qkv

    heads, groups, d = 6, 2, 3
    q, k, v = torch.randn(heads * d, 5), torch.randn(groups * d, 5), torch.randn(groups * d, 5)
    fused = fuse_qkv(q, k, v, heads, groups)
    # group 0 = q heads 0..2, then k_0, then v_0
    assert torch.equal(fused[: 3 * d], q[: 3 * d]) and torch.equal(fused[3 * d : 4 * d], k[:d])
    assert all(torch.equal(a, b) for a, b in zip(split_qkv(fused, heads, groups), (q, k, v)))


@pytest.mark.parametrize(
    "tok,hf,tp,want",
    [
        (50280, 50304, 1, (128, 50304, None)),  # OLMo-1B: tokenizer 50280, embedding 50304
        (32000, 32000, 2, (128, 32000, None)),  # Llama-2
        (128256, 128256, 8, (128, 128256, None)),  # Llama-3
        (32016, 32016, 1, (16, 32016, None)),  # CodeLlama: 16 divides, 128 does not
        (50257, 50257, 1, (128, 50304, 50257)),  # no multiple of 8 divides: pad and record
    ],
)
def test_vocab_padding_plan(tok, hf, tp, want):
    from echo_megatron.checkpoint.hf_import import plan_vocab
    from echo_megatron.model.vocab import padded_vocab_size

    plan = plan_vocab(tok, hf, tp)
    assert (plan.divisible_by, plan.padded, plan.hf_vocab_size) == want
    for layout in (1, 2, 4, 8):  # the same padding at every TP: the checkpoint reshards
        assert padded_vocab_size(tok, plan.divisible_by, layout) == plan.padded


# -- refusals: by name, before anything is written ------------------------------------------------------------
def _edit_config(src: Path, dst: Path, **changes) -> Path:
    shutil.copytree(src, dst)
    c = json.loads((dst / "config.json").read_text())
    for k, v in changes.items():
        if v is None:
            c.pop(k, None)
        else:
            c[k] = v
    (dst / "config.json").write_text(json.dumps(c))
    return dst


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory, tokenizer_json) -> Path:
    return make_hf(tmp_path_factory.mktemp("llama"), "llama", tokenizer_json, num_key_value_heads=2)


@pytest.mark.parametrize(
    "changes,overrides,reason",
    [
        ({"architectures": ["Qwen2ForCausalLM"]}, [], "Qwen2ForCausalLM is not supported: biased q/k/v"),
        ({"architectures": ["GPT2LMHeadModel"]}, [], r"architecture \['GPT2LMHeadModel'\] is not supported"),
        ({"hidden_act": "gelu"}, [], "hidden_act=gelu"),
        ({"attention_bias": True}, [], "attention_bias=True with mlp_bias=False"),
        ({"head_dim": 32}, [], "head_dim=32"),
        ({"architectures": ["MistralForCausalLM"], "sliding_window": 32}, [], "sliding_window=32"),
        ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0}}, [], "rope_type=yarn"),
        (
            {
                "rope_parameters": {
                    "rope_type": "llama3",
                    "rope_theta": 1e4,
                    "factor": 8.0,
                    "low_freq_factor": 2.0,
                    "high_freq_factor": 4.0,
                    "original_max_position_embeddings": 8192,
                }
            },
            [],
            "low_freq_factor",
        ),
        ({"rope_parameters": {"rope_theta": 1e4, "partial_rotary_factor": 0.5}}, [], "partial_rotary_factor"),
        ({"vocab_size": 100}, [], "the tokenizer has .* tokens but the model's vocab_size is 100"),
        ({}, ["parallel.tp=3"], "num_attention_heads=4 is not divisible by tp=3"),
        ({}, ["model.hidden_size=128"], "model.hidden_size comes from the model's config.json"),
    ],
)
def test_unsupported_features_are_refused_by_name(llama_dir, tmp_path, changes, overrides, reason):
    from echo_megatron.checkpoint.hf_import import import_hf

    src = _edit_config(llama_dir, tmp_path / "src", **changes)
    out = tmp_path / "run"
    with pytest.raises(ConfigError, match=reason):
        import_hf(str(src), str(out), overrides)
    assert not out.exists() and not list(tmp_path.glob("run.partial*"))


def test_a_tensor_without_a_place_is_refused(llama_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    from echo_megatron.checkpoint.hf_import import import_hf

    src = shutil.copytree(llama_dir, tmp_path / "src")
    sd = load_file(src / "model.safetensors")
    sd["model.layers.0.self_attn.q_norm.weight"] = torch.ones(16)  # Qwen3 / OLMo-2 style q/k norms
    save_file(sd, src / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ConfigError, match=r"no place in the megatron model: model.layers.0.self_attn.q_norm"):
        import_hf(str(src), str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


# -- the CLI: import at TP 2, logits at TP 2 (torchrun), generate = HF greedy ----------------------------------
@pytest.fixture(scope="module")
def olmo_import(tmp_path_factory, tokenizer_json):
    d = tmp_path_factory.mktemp("olmo_cli")
    src = make_hf(d, "olmo", tokenizer_json, num_key_value_heads=2, seed=3)
    cli(["import-hf", str(src), str(d / "run"), "parallel.tp=2"])
    return src, d / "run"


@pytest.mark.multiproc
def test_cli_import_then_tp2_logits_equal_hf(olmo_import, tmp_path):
    src, run = olmo_import
    from echo_megatron.checkpoint.hf_import import import_hf

    llama = make_hf(
        tmp_path, "llama", src / "tokenizer.json", num_key_value_heads=2, tie_word_embeddings=True
    )
    import_hf(str(llama), str(tmp_path / "llama_run"))
    report = tmp_path / "report.json"
    args = [str(src), str(run), str(llama), str(tmp_path / "llama_run"), str(report)]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2"]
    proc = subprocess.Popen(
        [*torchrun, f"--master-port={free_port()}", __file__, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
        start_new_session=True,  # a hung run is killed with its workers, not just the launcher
    )
    try:
        _, err = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    assert proc.returncode == 0, err[-3000:]
    diffs = json.loads(report.read_text())
    assert len(diffs) == 2 and all(d < 1e-4 for d in diffs), diffs


def test_cli_generate_equals_hf_greedy(olmo_import, tokenizer_json):
    from tokenizers import Tokenizer
    from transformers import AutoModelForCausalLM

    src, run = olmo_import
    prompt = "Natalia sold clips to 48 of her"
    out = cli(
        ["generate", str(run), "--prompt", prompt, "--temperature", "0", "--max-new-tokens", "16", "--json"]
        + ["rollout.stop=[]"]
    )
    ours = json.loads(out.stdout.strip().splitlines()[-1])
    ids = Tokenizer.from_file(str(tokenizer_json)).encode(prompt).ids
    assert ours["prompt_ids"] == ids
    hf = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
    with torch.no_grad():
        full = hf.generate(
            torch.tensor([ids]), do_sample=False, max_new_tokens=16, eos_token_id=0, pad_token_id=1
        )
    theirs = full[0, len(ids) :].tolist()
    assert ours["response_ids"] == theirs[: len(ours["response_ids"])] and len(ours["response_ids"]) >= 1
    assert ours["response_ids"] == theirs or (ours["finish_reason"] == "eos" and theirs[-1] == 0)


def test_cli_refusal_is_one_line_exit_2(llama_dir, tmp_path):
    src = _edit_config(llama_dir, tmp_path / "src", architectures=["Qwen2ForCausalLM"])
    r = cli(["import-hf", str(src), str(tmp_path / "run")], check=False)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        "echo-megatron import-hf: config error: import-hf: Qwen2ForCausalLM is not supported: biased q/k/v "
        "projections with an unbiased o_proj (megatron's add_qkv_bias; not built here)"
    ]
    assert not (tmp_path / "run").exists()


def _tp2_logits(src_a: str, run_a: str, src_b: str, run_b: str, report: str) -> None:
    """Under torchrun: the max |logit difference| from HF of two imports loaded at TP = 2 (one process group)."""
    from echo_megatron.distributed.init import destroy
    from echo_megatron.rollout.loading import load_policy
    from echo_megatron.rollout.reference import full_logits

    diffs = []
    for src, run in ((src_a, run_a), (src_b, run_b)):
        policy = load_policy(run)  # TP = world size = 2
        assert policy.model.embedding.word_embeddings.weight.shape[0] * 2 == policy.vocab.padded
        ids = tokens(policy.vocab.size, seed=1)
        with torch.no_grad():
            ours = full_logits(policy.model, ids)[..., : policy.vocab.size]
        diffs.append((ours - hf_logits(Path(src), ids)).abs().max().item())
    if int(os.environ.get("RANK", 0)) == 0:
        Path(report).write_text(json.dumps(diffs))
    destroy()


if __name__ == "__main__":
    _tp2_logits(*sys.argv[1:6])


# -- Megatron-LM's checkpoint dialect -------------------------------------------------------------------------
MEGATRON_MODEL = [
    "model.normalization=RMSNorm",
    "model.num_query_groups=2",
    "model.vocab_size=512",
    "parallel.device=cpu",
    "train.steps=4",
]


def test_our_checkpoints_carry_megatron_lms_tracker(tmp_path):
    from megatron.core import dist_checkpointing

    from echo_megatron.checkpoint import find_checkpoint, save_checkpoint
    from echo_megatron.config import load_config
    from echo_megatron.distributed.init import initialize
    from echo_megatron.model.builder import build_model

    cfg = load_config("recipes/tiny_cpu.yaml", MEGATRON_MODEL)
    initialize(cfg)
    root = tmp_path / "checkpoints"
    save_checkpoint(str(root), 3, [build_model(cfg, 512)])
    save_checkpoint(str(root), 7, [build_model(cfg, 512)])
    assert (root / "latest_checkpointed_iteration.txt").read_text().strip() == "7"
    assert (root / "latest").read_text().strip() == "iter_0000007"
    common = dist_checkpointing.load_common_state_dict(str(root / "iter_0000007"))
    assert (common["iteration"], common["checkpoint_version"]) == (7, 3.0)  # what Megatron-LM's loader reads
    os.remove(root / "latest")  # a tracker alone (as Megatron-LM leaves it) is found too
    assert find_checkpoint(str(root)) == str(root / "iter_0000007")
    (root / "latest_checkpointed_iteration.txt").write_text("3\n")
    assert find_checkpoint(str(tmp_path)) == str(root / "iter_0000003")  # via the run dir


@pytest.mark.parametrize("layout", ["megatron-lm", "bare"])
def test_a_checkpoint_megatron_lm_wrote_loads(tmp_path, layout):
    """Saved as Megatron-LM's ``save_checkpoint`` does for ``--ckpt-format torch_dist`` (its state dict: args,
    checkpoint_version, iteration, model; iter_0000010 + the tracker; no echo ``common``), or as the bare
    ``dist_checkpointing.save(model.sharded_state_dict(), dir)``: our loader reads the weights into a training
    state (model + optimizer + scheduler) and leaves the RNG and the fresh optimizer alone."""
    from megatron.core import dist_checkpointing

    from echo_megatron.checkpoint import find_checkpoint, load_checkpoint
    from echo_megatron.config import load_config
    from echo_megatron.distributed.init import initialize
    from echo_megatron.model.builder import build_model
    from echo_megatron.training.setup import build_train_state

    cfg = load_config("recipes/tiny_cpu.yaml", MEGATRON_MODEL)
    _, device = initialize(cfg)
    torch.manual_seed(1)
    theirs = build_model(cfg, 512)
    root = tmp_path / "megatron_lm"
    (root / "iter_0000010").mkdir(parents=True)
    if layout == "megatron-lm":
        sd = {
            "args": Namespace(tensor_model_parallel_size=1, pipeline_model_parallel_size=1, num_layers=2),
            "checkpoint_version": 3.0,
            "iteration": 10,
            "model": theirs.sharded_state_dict(),
            "num_floating_point_operations_so_far": 0,
        }
    else:
        sd = theirs.sharded_state_dict()
    dist_checkpointing.save(sd, str(root / "iter_0000010"))
    (root / "latest_checkpointed_iteration.txt").write_text("10")

    torch.manual_seed(2)
    state = build_train_state(cfg, 512, device, total_steps=4)
    ours = state.model[0].module
    assert not torch.equal(ours.embedding.word_embeddings.weight, theirs.embedding.word_embeddings.weight)
    rng = torch.get_rng_state()
    common = load_checkpoint(find_checkpoint(str(root)), state.model, state.optimizer, state.scheduler)
    assert common["iteration"] == (10 if layout == "megatron-lm" else 0) and not common["has_optimizer"]
    assert torch.equal(torch.get_rng_state(), rng)
    want, got = dict(theirs.named_parameters()), dict(ours.named_parameters())
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)

    # a run directory around it (config.yaml + checkpoints -> the Megatron-LM save dir) serves generate / eval
    from omegaconf import OmegaConf

    from echo_megatron.rollout.loading import load_policy

    run = tmp_path / "run"
    run.mkdir()
    OmegaConf.save(cfg, run / "config.yaml")
    os.symlink(root, run / "checkpoints")
    policy = load_policy(str(run), tp=1)
    assert policy.iteration == (10 if layout == "megatron-lm" else 0)
    assert torch.equal(policy.model.output_layer.weight, theirs.output_layer.weight)


# -- an HF model as the base of RL, Expert Iteration, continued pretraining and eval --------------------------
RL_SMALL = [
    "rl.num_rollout_samples=4",
    "rollout.n=4",
    "rollout.max_new_tokens=16",
    "rl.micro_batch_size=8",
    "checkpoint.save_interval=0",
    "logging.progress_bar=false",
    "rewards.sandbox_workers=1",
]


@pytest.fixture(scope="module")
def testbed_hf(tmp_path_factory):
    """The testbed's prompts and tokenizer, a tiny random Llama over that tokenizer's vocabulary, and its import
    (copied into a run dir as ``base_import``, it spares a test the import it would otherwise make on the fly)."""
    from echo_megatron.checkpoint.hf_import import import_hf

    d = tmp_path_factory.mktemp("hf_base")
    tb = [f"testbed.out={d / 'tb'}", "testbed.n_train=200", "testbed.n_test=8"]
    cli(["testbed", "recipes/demo/testbed.yaml", *tb])
    src = make_hf(d, "llama", d / "tb" / "tokenizer.json", num_key_value_heads=2)
    return d, tb, src, Path(import_hf(str(src), str(d / "imported")))


def _rl_rows(run: Path) -> dict[int, dict]:
    rows = [json.loads(line) for line in open(run / "metrics.jsonl")]
    return {r["step"]: r for r in rows if r["phase"] == "rl"}


@pytest.mark.multiproc
def test_grpo_and_ei_from_an_hf_base(testbed_hf):
    d, tb, src, imported_once = testbed_hf
    r = cli(
        ["rl", "recipes/demo/grpo_testbed.yaml", *tb, f"rl.base={src}", f"run_dir={d / 'grpo'}", "rl.steps=2"]
        + RL_SMALL
    )
    imported = d / "grpo" / "base_import"
    assert json.loads((imported / "hf_import.json").read_text())["source"] == str(src)
    assert f"from base {imported / 'checkpoints' / 'iter_0000000'}" in r.stdout
    assert sorted(_rl_rows(d / "grpo")) == [1, 2]
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(d / "grpo" / "config.yaml")  # the HF architecture, not the recipe's
    assert (cfg.model.normalization, cfg.model.hidden_size, cfg.model.num_query_groups) == ("RMSNorm", 64, 2)

    # Expert Iteration from the same HF model; its run dir already holds the import (as after a requeue)
    shutil.copytree(imported_once, d / "ei" / "base_import")
    ei = ["rl.ei_rounds=1", "rl.ei_samples=4", "rl.ei_sft_batch=4", "rl.ei_sft_epochs=1"]
    r = cli(
        ["rl", "recipes/demo/ei_testbed.yaml", *tb, f"rl.base={src}", f"run_dir={d / 'ei'}", *ei] + RL_SMALL
    )
    assert "importing" not in r.stdout
    rows = _rl_rows(d / "ei")
    assert sorted(rows) == [1] and rows[1]["ei/samples"] == 4 * 4


def test_eval_of_an_hf_model(testbed_hf):
    from echo_megatron.commands.eval import _precheck

    d, tb, src, imported = testbed_hf
    out = d / "eval"
    shutil.copytree(imported, out / "base_import")
    r = cli(
        ["eval", str(src), "--out", str(out), *tb[:1], "eval.tasks=[testbed]", "eval.max_problems=4"]
        + ["eval.max_new_tokens=16"]
    )
    res = json.loads((out / "eval" / "testbed.json").read_text())
    assert res["num_problems"] == 4 and "testbed" in r.stdout
    assert f"# {out / 'base_import' / 'checkpoints' / 'iter_0000000'} (step 0)" in r.stdout
    with pytest.raises(ConfigError, match="needs --out DIR"):
        _precheck(str(src), ["eval.tasks=[testbed]"])


def test_continued_pretraining_from_an_hf_model(testbed_hf, tmp_path):
    """`pretrain checkpoint.load=HF_DIR` takes the HF architecture and tokenizer; at lr 0 its checkpoint exports
    back to the HF tensors byte for byte: the weights it trained from are the HF ones."""
    from echo_megatron.commands.export_hf import export_hf

    d, _, src, imported = testbed_hf
    run = tmp_path / "pt"
    shutil.copytree(imported, run / "base_import")
    common = [
        "pretrain",
        "recipes/tiny_cpu.yaml",
        f"checkpoint.load={src}",
        "train.steps=2",
        "logging.progress_bar=false",
    ]
    cli([*common, f"run_dir={run}", "optimizer.lr=0.0"])
    export_hf(str(run), str(tmp_path / "exported"))
    assert safetensors_of(src) == safetensors_of(tmp_path / "exported")
    loss = [json.loads(line) for line in open(run / "metrics.jsonl")]
    assert [r["step"] for r in loss if r["phase"] == "pretrain"] == [1, 2]


def test_other_ranks_wait_for_rank_0s_import_or_its_refusal(tmp_path, monkeypatch, llama_dir):
    """Under a launcher, ranks > 0 do not import: they wait for rank 0's finished directory, or fail with its
    refusal (``base_import.error``)."""
    from echo_megatron.checkpoint.base import resolve_base
    from echo_megatron.checkpoint.hf_import import import_hf

    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    run = tmp_path / "run"
    run.mkdir()
    (run / "base_import.error").write_text("importing x: Qwen2ForCausalLM is not supported")
    with pytest.raises(ConfigError, match="Qwen2ForCausalLM is not supported"):
        resolve_base(str(llama_dir), str(run), timeout_s=30)
    os.remove(run / "base_import.error")
    with pytest.raises(ConfigError, match="rank 0 did not finish"):
        resolve_base(str(llama_dir), str(run), timeout_s=0)
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    import_hf(str(llama_dir), str(run / "base_import"))  # as rank 0 would
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert resolve_base(str(llama_dir), str(run)) == str(run / "base_import" / "checkpoints" / "iter_0000000")
    another = shutil.copytree(llama_dir, tmp_path / "another_hf")
    with pytest.raises(ConfigError, match="holds an import of"):
        resolve_base(str(another), str(run))
