"""Import a HuggingFace ``transformers`` model (a directory or a hub id) as an echo-megatron run directory.

The inverse of ``hf_export``: ``OlmoForCausalLM`` (non-parametric LayerNorm) and ``LlamaForCausalLM`` (RMSNorm;
``MistralForCausalLM`` without a sliding window has the same layout) become a megatron GPTModel checkpoint:

* q/k/v -> ``linear_qkv`` in megatron's per-query-group order [q heads of group g ; k_g ; v_g];
* gate/up -> ``linear_fc1`` = [gate ; up] (megatron's SwiGLU: silu(first half) * second half);
* RoPE base and the scalings megatron-core implements (linear; Llama-3.x with its published constants).

Everything is decided from ``config.json``, the tokenizer and the tensor names before a weight is written; an
architecture feature megatron's GPTModel cannot reproduce is refused by name (``ConfigError``: exit 2).
``config.json`` is read as JSON (both the ``rope_theta``/``rope_scaling`` and the ``rope_parameters`` spelling),
so the import does not depend on the installed transformers version.

Vocabulary: megatron pads the embedding to a multiple of ``make_vocab_size_divisible_by``. The import picks
the divisor (a multiple of 8, so TP 1/2/4/8 pad alike) that pads the tokenizer's vocabulary to exactly the HF
embedding's rows; when none does, it pads to a multiple of 128 and records the HF row count in
``model.hf_vocab_size``, which ``export-hf`` slices back to. Either way import -> export is byte-exact.

Output (written to ``OUT.partial-PID`` and renamed, so OUT is complete or absent): ``config.yaml`` (the model
section reproduces the architecture; ``data.tokenizer.path`` = ``OUT/tokenizer``), ``checkpoints/iter_0000000``
(+ ``latest``), ``tokenizer/`` (the HF tokenizer files) and ``hf_import.json`` (where it came from). The
weights are saved from one process at TP = PP = 1; dist_checkpointing reshards them to any layout at load.
"""

from __future__ import annotations

import glob
import json
import math
import os
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from echo_megatron.config import ConfigError

SUPPORTED = ("OlmoForCausalLM", "LlamaForCausalLM", "MistralForCausalLM")
# Architectures users are likely to try, with what megatron's GPTModel (as built here) cannot express.
REFUSED = {
    "Qwen2ForCausalLM": "biased q/k/v projections with an unbiased o_proj (megatron's add_qkv_bias; not built here)",
    "Qwen3ForCausalLM": "per-head q/k RMSNorm (qk_layernorm; not built here)",
    "Olmo2ForCausalLM": "q/k norms and norms after each sublayer (not built here)",
    "GemmaForCausalLM": "scaled embeddings, (1 + w) RMSNorm and GeLU-tanh gating",
    "Gemma2ForCausalLM": "scaled embeddings, logit soft-capping and sliding-window layers",
    "Phi3ForCausalLM": "fused qkv/gate_up tensors with partial rotary embeddings",
    "MixtralForCausalLM": "mixture-of-experts MLPs",
}
IMPORT_MARKER = "hf_import.json"
ITERATION = 0
_ROPE_LLAMA3 = {"low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}


# -- the source ----------------------------------------------------------------------------------------------
def resolve_hf_dir(path_or_id: str) -> str:
    """A local directory for ``path_or_id``: itself, or the hub snapshot of a repo id (config, weights, tokenizer)."""
    if os.path.isdir(path_or_id):
        return path_or_id
    try:
        from huggingface_hub import snapshot_download

        small = ["config.json", "tokenizer*", "special_tokens_map.json", "added_tokens.json", "*.model"]
        local = snapshot_download(
            path_or_id, allow_patterns=[*small, "*.safetensors", "*.safetensors.index.json"]
        )
        if not glob.glob(os.path.join(local, "*.safetensors")):  # an older repo: torch pickles only
            local = snapshot_download(path_or_id, allow_patterns=[*small, "pytorch_model*.bin*"])
        return local
    except Exception as e:  # offline, unknown repo, gated model, ...
        reason = str(e).splitlines()[0] if str(e) else ""
        raise ConfigError(
            f"{path_or_id}: no such directory, and the hub could not provide a model of that id "
            f"({type(e).__name__}: {reason})"
        ) from None


def read_hf_config(hf_dir: str) -> dict[str, Any]:
    path = os.path.join(hf_dir, "config.json")
    if not os.path.isfile(path):
        raise ConfigError(f"{hf_dir}: no config.json (not a transformers model directory)")
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def architecture(hf: dict[str, Any]) -> str:
    archs = hf.get("architectures") or []
    arch = archs[0] if len(archs) == 1 else None
    if arch in SUPPORTED:
        return arch
    if arch in REFUSED:
        raise ConfigError(f"import-hf: {arch} is not supported: {REFUSED[arch]}")
    raise ConfigError(
        f"import-hf: architecture {archs or hf.get('model_type')} is not supported "
        f"(import-hf reads {', '.join(SUPPORTED)})"
    )


# -- config.json -> model section ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Rope:
    theta: float
    scaling: str | None  # None | linear | llama3
    factor: float


def read_rope(hf: dict[str, Any]) -> tuple[Rope, list[str]]:
    """RoPE base and scaling from either spelling of ``config.json``; the second value lists what is refused."""
    params = dict(hf.get("rope_parameters") or {})
    if not params:  # transformers < 5: rope_theta + rope_scaling
        params = dict(hf.get("rope_scaling") or {})
        params.setdefault("rope_theta", hf.get("rope_theta", 10000.0))
    kind = params.get("rope_type", params.get("type", "default"))
    theta = float(params.get("rope_theta", hf.get("rope_theta", 10000.0)))
    problems = []
    if theta != int(theta):
        problems.append(f"rope_theta={theta} (model.rotary_base is an integer)")
    partial = params.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0))
    if partial != 1.0:
        problems.append(f"partial_rotary_factor={partial} (RoPE over part of each head)")
    factor = float(params.get("factor") or 1.0)
    if kind == "default":
        return Rope(theta, None, 1.0), problems
    if kind == "linear":
        return Rope(theta, "linear", factor), problems
    if kind == "llama3":
        odd = {k: params.get(k) for k, v in _ROPE_LLAMA3.items() if float(params.get(k, v)) != v}
        if odd:
            problems.append(
                f"rope llama3 scaling with {odd} (megatron-core implements low_freq_factor=1, "
                f"high_freq_factor=4, original_max_position_embeddings=8192)"
            )
        return Rope(theta, "llama3", factor), problems
    problems.append(f"rope_type={kind} (megatron-core implements default, linear and llama3 RoPE)")
    return Rope(theta, None, 1.0), problems


def model_settings(hf: dict[str, Any], arch: str) -> dict[str, Any]:
    """The ``model`` section (architecture fields) reproducing ``config.json``; every refusal in one error."""
    problems: list[str] = []
    hidden, heads = int(hf["hidden_size"]), int(hf["num_attention_heads"])
    groups = int(hf.get("num_key_value_heads") or heads)
    head_dim = hf.get("head_dim")
    if head_dim is not None and head_dim * heads != hidden:
        problems.append(f"head_dim={head_dim} != hidden_size / num_attention_heads = {hidden // heads}")
    if hf.get("hidden_act", "silu") not in ("silu", "swish"):
        problems.append(f"hidden_act={hf['hidden_act']} (SwiGLU with SiLU only)")
    rope, rope_problems = read_rope(hf)
    problems += rope_problems
    attn_bias, mlp_bias = bool(hf.get("attention_bias", False)), bool(hf.get("mlp_bias", False))
    if arch == "OlmoForCausalLM":
        if hf.get("clip_qkv") is not None:
            problems.append(f"clip_qkv={hf['clip_qkv']} (q/k/v clamping)")
        if attn_bias:
            problems.append(
                "attention_bias=true (OLMo's MLP has no biases; megatron biases all linears or none)"
            )
        norm, eps, bias = "NonParametricLayerNorm", 1e-5, False  # OlmoLayerNorm: no weights, eps 1e-5
    else:
        if attn_bias != mlp_bias:
            problems.append(
                f"attention_bias={attn_bias} with mlp_bias={mlp_bias} (megatron biases all linears or none)"
            )
        window = hf.get("sliding_window") if arch == "MistralForCausalLM" else None
        if window is not None and window < hf.get("max_position_embeddings", 0):
            problems.append(f"sliding_window={window} (no sliding-window attention in the local spec)")
        norm, eps, bias = "RMSNorm", float(hf.get("rms_norm_eps", 1e-6)), attn_bias
    if problems:
        raise ConfigError(f"import-hf: {arch} with unsupported features: " + "; ".join(problems))
    return {
        "preset": None,
        "num_layers": int(hf["num_hidden_layers"]),
        "hidden_size": hidden,
        "num_attention_heads": heads,
        "num_query_groups": None if groups == heads else groups,
        "ffn_hidden_size": int(hf["intermediate_size"]),
        "seq_length": int(hf.get("max_position_embeddings", 2048)),
        "normalization": norm,
        "layernorm_epsilon": eps,
        "activation": "swiglu",
        "position_embedding_type": "rope",
        "rotary_base": int(rope.theta),
        "rope_scaling": rope.scaling,
        "rope_scaling_factor": rope.factor,
        "add_bias_linear": bias,
        "untie_embeddings_and_output_weights": not bool(hf.get("tie_word_embeddings", False)),
        "init_method_std": float(hf.get("initializer_range", 0.02)),
        "attention_dropout": float(hf.get("attention_dropout") or 0.0),
        "hidden_dropout": 0.0,
    }


def check_layout(m: dict[str, Any], tp: int, pp: int) -> None:
    problems = []
    groups = m["num_query_groups"] or m["num_attention_heads"]
    for name, value, by in (
        ("num_attention_heads", m["num_attention_heads"], tp),
        ("num_key_value_heads", groups, tp),
        ("intermediate_size", m["ffn_hidden_size"], tp),
        ("num_hidden_layers", m["num_layers"], pp),
    ):
        if value % by:
            problems.append(f"{name}={value} is not divisible by {'tp' if by == tp else 'pp'}={by}")
    if problems:
        raise ConfigError("import-hf: parallel layout: " + "; ".join(problems))


# -- vocabulary ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class VocabPlan:
    tokenizer_vocab: int  # model.vocab_size (the trainer's convention: the tokenizer's size)
    divisible_by: int  # model.make_vocab_size_divisible_by
    padded: int  # megatron's embedding rows
    hf_vocab_size: int | None  # set when ``padded`` differs from the HF rows (export slices to it)


def _two_adic(n: int) -> int:
    return (n & -n).bit_length() - 1


def plan_vocab(tokenizer_vocab: int, hf_vocab: int, tp: int) -> VocabPlan:
    """Megatron's padded vocabulary = ceil(V_tok / d) * d (``model.vocab.padded_vocab_size``, d % tp == 0).

    Exact when some divisor d of the HF rows, a multiple of lcm(8, tp), exceeds hf_vocab - V_tok (prefer 128, else
    the most powers of two, else the smallest); otherwise d = 128 * k (the smallest that reaches the HF rows) and
    the HF row count is recorded for export."""
    if tokenizer_vocab > hf_vocab:
        raise ConfigError(
            f"import-hf: the tokenizer has {tokenizer_vocab} tokens but the model's vocab_size is {hf_vocab}"
        )
    step = math.lcm(8, tp)
    gap = hf_vocab - tokenizer_vocab
    exact = [d for d in range(step, hf_vocab + 1, step) if hf_vocab % d == 0 and d > gap]
    if exact:
        d = 128 if 128 in exact else min(exact, key=lambda x: (-min(_two_adic(x), 7), x))
        return VocabPlan(tokenizer_vocab, d, hf_vocab, None)
    d = math.lcm(128, tp)
    while -(-tokenizer_vocab // d) * d < hf_vocab:
        d += math.lcm(128, tp)
    return VocabPlan(tokenizer_vocab, d, -(-tokenizer_vocab // d) * d, hf_vocab)


# -- tensors -------------------------------------------------------------------------------------------------
def weight_files(hf_dir: str) -> list[str]:
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        path = os.path.join(hf_dir, index)
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                shards = sorted(set(json.load(f)["weight_map"].values()))
            return [os.path.join(hf_dir, s) for s in shards]
    for single in ("model.safetensors", "pytorch_model.bin"):
        if os.path.isfile(os.path.join(hf_dir, single)):
            return [os.path.join(hf_dir, single)]
    found = sorted(glob.glob(os.path.join(hf_dir, "*.safetensors")))
    if found:
        return found
    raise ConfigError(f"{hf_dir}: no model.safetensors or pytorch_model.bin (weights) found")


def read_weights(hf_dir: str) -> dict[str, torch.Tensor]:
    """Every tensor of the checkpoint, in its stored dtype (safetensors, or torch pickles with weights_only)."""
    out: dict[str, torch.Tensor] = {}
    for path in weight_files(hf_dir):
        if path.endswith(".safetensors"):
            from safetensors import safe_open

            with safe_open(path, framework="pt") as f:
                for key in f.keys():
                    out[key] = f.get_tensor(key)
        else:
            out.update(torch.load(path, map_location="cpu", weights_only=True))
    return out


def fuse_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, groups: int) -> torch.Tensor:
    """HF q [heads*d, ...], k/v [groups*d, ...] -> megatron's fused QKV: per group [its q heads ; k ; v]."""
    per = heads // groups
    d = q.shape[0] // heads
    rest = q.shape[1:]
    q = q.reshape(groups, per, d, *rest)
    k = k.reshape(groups, 1, d, *rest)
    v = v.reshape(groups, 1, d, *rest)
    return torch.cat([q, k, v], dim=1).reshape(groups * (per + 2) * d, *rest)


def to_megatron_state_dict(hf_sd: dict[str, torch.Tensor], m: dict[str, Any]) -> dict[str, torch.Tensor]:
    """HF Llama/OLMo tensors -> a megatron GPTModel state dict (TP = 1, local spec). Tensors the model has no
    place for, or lacks, are refused by name (e.g. q/k norms, biases a config does not announce)."""
    heads, groups = m["num_attention_heads"], m["num_query_groups"] or m["num_attention_heads"]
    rms, tied = m["normalization"] == "RMSNorm", not m["untie_embeddings_and_output_weights"]
    kinds = ("weight", "bias") if m["add_bias_linear"] else ("weight",)
    sd = {k: v for k, v in hf_sd.items() if not k.endswith("rotary_emb.inv_freq")}
    used: set[str] = set()

    def take(key: str) -> torch.Tensor:
        if key not in sd:
            raise ConfigError(f"import-hf: the checkpoint has no tensor {key}")
        used.add(key)
        return sd[key]

    out = {"embedding.word_embeddings.weight": take("model.embed_tokens.weight")}
    if tied:
        used.add("lm_head.weight")  # some checkpoints store the tied copy as well
    else:
        out["output_layer.weight"] = take("lm_head.weight")
    if rms:
        out["decoder.final_layernorm.weight"] = take("model.norm.weight")
    for i in range(m["num_layers"]):
        src, dst = f"model.layers.{i}.", f"decoder.layers.{i}."
        for kind in kinds:
            q, k, v = (take(f"{src}self_attn.{p}_proj.{kind}") for p in "qkv")
            out[f"{dst}self_attention.linear_qkv.{kind}"] = fuse_qkv(q, k, v, heads, groups)
            out[f"{dst}self_attention.linear_proj.{kind}"] = take(f"{src}self_attn.o_proj.{kind}")
            gate, up = take(f"{src}mlp.gate_proj.{kind}"), take(f"{src}mlp.up_proj.{kind}")
            out[f"{dst}mlp.linear_fc1.{kind}"] = torch.cat([gate, up], dim=0)
            out[f"{dst}mlp.linear_fc2.{kind}"] = take(f"{src}mlp.down_proj.{kind}")
        if rms:
            out[f"{dst}input_layernorm.weight"] = take(f"{src}input_layernorm.weight")
            out[f"{dst}pre_mlp_layernorm.weight"] = take(f"{src}post_attention_layernorm.weight")
    extra = sorted(set(sd) - used)
    if extra:
        more = f" and {len(extra) - 3} more" if len(extra) > 3 else ""
        raise ConfigError(
            f"import-hf: tensors with no place in the megatron model: {', '.join(extra[:3])}{more}"
        )
    return out


def pad_vocab_rows(sd: dict[str, torch.Tensor], padded: int) -> dict[str, torch.Tensor]:
    """Zero rows appended to the embedding / output layer up to megatron's padded vocabulary (never sampled)."""
    for key in ("embedding.word_embeddings.weight", "output_layer.weight"):
        if key in sd and sd[key].shape[0] < padded:
            w = sd[key]
            sd[key] = torch.cat([w, w.new_zeros(padded - w.shape[0], *w.shape[1:])])
    return sd


# -- tokenizer -----------------------------------------------------------------------------------------------
TOKENIZER_FILES = ("tokenizer", "special_tokens", "added_tokens")


def copy_tokenizer(hf_dir: str, out_dir: str) -> str:
    """The HF tokenizer files in ``out_dir`` (a ``tokenizer.json`` converted by transformers when the source
    has only a slow tokenizer); returns ``out_dir``."""
    os.makedirs(out_dir, exist_ok=True)
    for name in sorted(os.listdir(hf_dir)):
        if name.startswith(TOKENIZER_FILES) and os.path.isfile(os.path.join(hf_dir, name)):
            shutil.copy(os.path.join(hf_dir, name), out_dir)
    if not os.path.isfile(os.path.join(out_dir, "tokenizer.json")):
        try:
            from transformers import AutoTokenizer

            AutoTokenizer.from_pretrained(hf_dir, use_fast=True).save_pretrained(out_dir)
        except Exception as e:
            raise ConfigError(
                f"import-hf: {hf_dir} has no tokenizer.json and transformers could not make one ({e})"
            ) from None
        if not os.path.isfile(os.path.join(out_dir, "tokenizer.json")):
            raise ConfigError(f"import-hf: {hf_dir} has no tokenizer.json (a fast tokenizer) to train with")
    return out_dir


def special_token(tokenizer_json: str, token_id: Any) -> str | None:
    """The text of ``token_id`` (or of the first of a list) in a ``tokenizers`` JSON file, or None."""
    from tokenizers import Tokenizer

    if isinstance(token_id, list):
        token_id = token_id[0] if token_id else None
    if token_id is None:
        return None
    return Tokenizer.from_file(tokenizer_json).id_to_token(int(token_id))


# -- the command ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ImportRecord:
    """``OUT/hf_import.json``: where an imported run came from."""

    source: str
    source_dir: str
    architecture: str
    hf_vocab: int
    tokenizer_vocab: int
    make_vocab_size_divisible_by: int
    padded_vocab: int


def read_import_record(run_dir: str) -> ImportRecord | None:
    path = os.path.join(run_dir, IMPORT_MARKER)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return ImportRecord(**json.load(f))


def _checked_overrides(overrides: Sequence[str]) -> list[str]:
    from echo_megatron.config.model import ARCHITECTURE_KEYS

    for item in overrides:
        key = item.split("=", 1)[0].strip()
        if key.startswith("model.") and key[len("model.") :] in (*ARCHITECTURE_KEYS, "preset"):
            raise ConfigError(f"import-hf: {key} comes from the model's config.json; it cannot be overridden")
    return list(overrides)


def _model_dotlist(m: dict[str, Any]) -> list[str]:
    return [f"model.{k}={'null' if v is None else v}" for k, v in m.items()]


def import_hf(source: str, out_dir: str, overrides: Sequence[str] = ()) -> str:
    """Import ``source`` (HF directory or hub id) as the run directory ``out_dir``; returns ``out_dir``.

    ``overrides``: ``key=value`` for the written config (e.g. ``parallel.tp=2``, ``model.seq_length=2048``,
    ``data.tokenizer.eod=...``); architecture keys come from ``config.json`` and cannot be overridden.
    """
    from omegaconf import OmegaConf

    from echo_megatron.checkpoint.dist import save_checkpoint
    from echo_megatron.config import load_config
    from echo_megatron.data.tokenizer import load_tokenizer
    from echo_megatron.distributed.init import detect_env, initialize
    from echo_megatron.model.builder import build_model
    from echo_megatron.rundir import RunDir

    if detect_env().world_size != 1:
        raise ConfigError("import-hf runs in one process (the checkpoint it writes loads at any TP/PP)")
    out_dir = os.path.abspath(out_dir)
    if os.path.exists(out_dir) and (not os.path.isdir(out_dir) or os.listdir(out_dir)):
        raise ConfigError(f"import-hf: {out_dir} exists and is not empty")
    overrides = _checked_overrides(overrides)
    user = load_config(None, overrides)  # the user's layout and run settings; a bad key fails here
    hf_dir = resolve_hf_dir(source)
    hf = read_hf_config(hf_dir)
    arch = architecture(hf)
    m = model_settings(hf, arch)
    check_layout(m, user.parallel.tp, user.parallel.pp)

    partial = f"{out_dir}.partial-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    try:
        tok_overrides = []
        if not user.data.tokenizer.path:
            copy_tokenizer(hf_dir, os.path.join(partial, "tokenizer"))
            tok_json = os.path.join(partial, "tokenizer", "tokenizer.json")
            eod = special_token(tok_json, hf.get("eos_token_id")) if user.data.tokenizer.eod is None else None
            pad = special_token(tok_json, hf.get("pad_token_id")) if user.data.tokenizer.pad is None else None
            tok_overrides = [
                f"data.tokenizer.path={os.path.join(partial, 'tokenizer')}",
                *([f"data.tokenizer.eod={json.dumps(eod)}"] if eod else []),
                *([f"data.tokenizer.pad={json.dumps(pad)}"] if pad and pad != eod else []),
            ]
        staged = load_config(None, [*_model_dotlist(m), *overrides, *tok_overrides])
        tokenizer = load_tokenizer(staged.data.tokenizer)
        hf_vocab = int(hf.get("vocab_size") or 0)
        vocab = plan_vocab(tokenizer.vocab_size, hf_vocab, staged.parallel.tp)
        vocab_overrides = [
            f"model.vocab_size={vocab.tokenizer_vocab}",
            f"model.make_vocab_size_divisible_by={vocab.divisible_by}",
            f"model.hf_vocab_size={'null' if vocab.hf_vocab_size is None else vocab.hf_vocab_size}",
        ]
        state = to_megatron_state_dict(read_weights(hf_dir), m)
        rows = state["embedding.word_embeddings.weight"].shape[0]
        if rows != hf_vocab:
            raise ConfigError(
                f"import-hf: embed_tokens has {rows} rows but config.json says vocab_size={hf_vocab}"
            )
        state = pad_vocab_rows(state, vocab.padded)

        # -- nothing refused: write -------------------------------------------------------------------------
        save_cfg = load_config(
            None,
            [
                *_model_dotlist(m),
                *vocab_overrides,
                "parallel.tp=1",
                "parallel.pp=1",
                "parallel.vpp=null",
                "parallel.device=cpu",
                "parallel.sequence_parallel=false",
                "train.precision=fp32",
                "model.transformer_impl=local",
            ],
        )
        initialize(save_cfg)
        model = build_model(save_cfg, vocab.tokenizer_vocab)
        missing, unexpected = model.load_state_dict(state, strict=False)
        missing = [k for k in missing if "_extra_state" not in k]
        if missing or unexpected:
            raise RuntimeError(
                f"import-hf: weight mapping mismatch: missing {missing}, unexpected {unexpected}"
            )
        run = RunDir(partial)
        save_checkpoint(run.checkpoints, ITERATION, [model], state={"consumed_samples": 0}, keep_last=0)
        del model, state
        name = os.path.basename(out_dir.rstrip("/"))
        final_tok = [o.replace(partial, out_dir, 1) for o in tok_overrides]  # the path after the rename
        cfg = load_config(
            None,
            [
                f"name={name}",
                f"run_dir={out_dir}",
                *_model_dotlist(m),
                *vocab_overrides,
                *overrides,
                *final_tok,
            ],
        )
        OmegaConf.save(cfg, run.config)
        record = ImportRecord(
            source=source,
            source_dir=os.path.abspath(hf_dir),
            architecture=arch,
            hf_vocab=hf_vocab,
            tokenizer_vocab=vocab.tokenizer_vocab,
            make_vocab_size_divisible_by=vocab.divisible_by,
            padded_vocab=vocab.padded,
        )
        with open(os.path.join(partial, IMPORT_MARKER), "w", encoding="utf-8") as f:
            json.dump(asdict(record), f, indent=1)
        if os.path.isdir(out_dir):
            os.rmdir(out_dir)  # empty (checked above)
        os.replace(partial, out_dir)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return out_dir
