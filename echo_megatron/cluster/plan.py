"""Capacity plan: parameters, memory per GPU, whether it fits, and step / run time at a stated MFU.

Pure functions of the config; every formula cites where it comes from. Memory is per GPU of the most
loaded pipeline stage (the first: it holds the embedding and the most in-flight micro-batches).

* Parameters: counted analytically from the megatron GPTModel layout (checked against a meta-device build
  of the real model in tests/test_cluster_plan.py).
* Weights / gradients / optimizer states: bytes per parameter of Megatron-LM's mixed-precision Adam
  (Megatron-LM docs, "Distributed Optimizer"): bf16 = 2 (bf16 weights) + 4 (fp32 main grads) + 12 (fp32
  master weights, Adam m and v) = 18; fp32 = 4 + 4 + 8 = 16. The distributed optimizer (ZeRO-1) divides
  the optimizer states (and, for bf16, the fp32 master weights they include) by the data-parallel size d:
  6 + 12/d and 8 + 8/d bytes per parameter.
* Activations: Korthikanti et al. 2022, "Reducing Activation Recomputation in Large Transformer Models"
  (arXiv 2205.05198), Sec. 4, taken term by term so that SwiGLU, grouped-query attention, flash attention
  and dropout-free layers are counted as they are; with their assumptions (GELU MLP of 4h, MHA, dropout,
  no flash) it is exactly their Eq. 1, s·b·h·(34 + 5·a·s/h) bytes per layer. Tensor parallelism splits the
  terms after the column-parallel linears by t, sequence parallelism splits the rest too (their Eq. 2, 3);
  full recompute keeps only each layer's input, 2·s·b·h (Sec. 4.3); the first pipeline stage of 1F1B holds
  p micro-batches of L/p layers (Sec. 4.2.3), times 1 + (p-1)/(p·v) when interleaved; the output layer's
  logits add 4·s·b·V/t (Sec. 4.2.2).
* Time: FLOPs per token 6·N + causal attention 6·L·s·h (echo_megatron.training.flops, after Kaplan et al.
  2020 and PaLM App. B), divided by MFU x peak (989 dense bf16 TFLOP/s per H100 SXM); full recompute adds a
  forward pass, x 4/3.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from omegaconf import DictConfig

from echo_megatron.config.presets import SUGGESTED_PARALLEL
from echo_megatron.model.vocab import padded_vocab_size, resolve_vocab

GIB = 1024**3
# Of the GPU's memory, this much is kept back for the CUDA context, NCCL buffers, the caching allocator's
# fragmentation and temporary buffers (workspace, all-gather / reduce-scatter buckets).
RESERVE_GB = 6.0


def vocab_of(cfg: DictConfig) -> int:
    """The vocabulary ``cfg`` trains (``model.vocab.resolve_vocab``): its tokenizer's when the recipe names one
    that is on this machine, else ``model.vocab_size`` (a plan must not fail for a tokenizer kept elsewhere)."""
    return resolve_vocab(cfg, missing_ok=True).size


# ---- parameters ----------------------------------------------------------------------------------------


def norm_params(kind: str, h: int) -> int:
    """LayerNorm: weight + bias (2h); RMSNorm: weight (h); NonParametricLayerNorm: none."""
    return {"LayerNorm": 2 * h, "RMSNorm": h}.get(kind, 0)


def layer_params(m: DictConfig) -> int:
    """One transformer layer: QKV (h x (h + 2·g·h/a)), output projection (h x h), MLP (SwiGLU: 3·h·f, GELU:
    2·h·f), two norms, and biases when ``add_bias_linear``."""
    h, a = m.hidden_size, m.num_attention_heads
    g = m.num_query_groups or a
    f = m.ffn_hidden_size or 4 * h
    kv = (h // a) * g
    gated = m.activation == "swiglu"
    attn = h * (h + 2 * kv) + h * h
    mlp = h * f * (3 if gated else 2)
    bias = (h + 2 * kv) + h + (2 * f if gated else f) + h if m.add_bias_linear else 0
    return attn + mlp + bias + 2 * norm_params(m.normalization, h)


@dataclass
class ParamCount:
    embedding: int  # word (+ learned position) embeddings
    per_layer: int
    num_layers: int
    final_norm: int
    output_layer: int  # 0 when tied to the embedding

    @property
    def total(self) -> int:
        return self.embedding + self.per_layer * self.num_layers + self.final_norm + self.output_layer


def count_params(m: DictConfig, tp: int = 1, vocab: int | None = None) -> ParamCount:
    """Parameters of the whole model (not divided by tp); ``vocab`` (default ``m.vocab_size``) padded for
    ``tp`` as the model pads it (``model.vocab.padded_vocab_size``)."""
    v = padded_vocab_size(vocab or m.vocab_size, m.make_vocab_size_divisible_by, tp)
    h = m.hidden_size
    emb = v * h + (m.seq_length * h if m.position_embedding_type == "learned_absolute" else 0)
    out = v * h if m.untie_embeddings_and_output_weights else 0
    return ParamCount(emb, layer_params(m), m.num_layers, norm_params(m.normalization, h), out)


def stage_params(pc: ParamCount, pp: int) -> int:
    """Parameters on the most loaded pipeline stage: ceil(L/pp) layers plus the embedding (first stage) or
    the final norm and output layer (last stage; with tied weights the last stage holds a copy too)."""
    layers = math.ceil(pc.num_layers / pp) * pc.per_layer
    if pp == 1:
        return pc.total
    last_extra = pc.final_norm + (pc.output_layer or pc.embedding)
    return layers + max(pc.embedding, last_extra)


# ---- memory --------------------------------------------------------------------------------------------


def state_bytes_per_param(precision: str, distributed: bool, dp: int) -> tuple[float, float, float]:
    """(weights, gradients, optimizer states) bytes per parameter (Megatron-LM distributed optimizer docs)."""
    if precision == "fp32":
        w, g, opt = 4.0, 4.0, 8.0  # Adam m, v
    else:  # bf16 / fp8: bf16 weights, fp32 main grads, fp32 master weights + Adam m, v
        w, g, opt = 2.0, 4.0, 12.0
    return w, g, opt / dp if distributed else opt


def activation_bytes_per_layer(
    m: DictConfig, b: int, tp: int, sp: bool, flash: bool, act_bytes: int = 2
) -> float:
    """Bytes of activations one layer keeps for backward, per micro-batch of ``b`` sequences.

    Korthikanti et al. 2022, Sec. 4.1, term by term (s·b·h units; 2 = a 16-bit element):
      attention: LN input 2, QKV input 2, Q 2, K and V 2·g/a each, softmax output 2·a·s/h, dropout mask
                 a·s/h and dropout output 2·a·s/h (only with attention dropout), output-projection input 2,
                 dropout mask 1 (only with hidden dropout); flash attention keeps no s x s term (its
                 output is the projection input; its log-sum-exp is 4·a/h).
      MLP:       LN input 2, fc1 input 2, activation input 2·f/h (SwiGLU: 4·f/h), fc2 input 2·f/h,
                 dropout mask 1 (only with hidden dropout).
    Replicated across TP ranks unless sequence parallel: LN inputs, QKV and fc1 inputs, dropout masks.
    """
    s, h, a = m.seq_length, m.hidden_size, m.num_attention_heads
    g = m.num_query_groups or a
    f = m.ffn_hidden_size or 4 * h
    e = act_bytes / 2.0  # the paper counts 16-bit activations
    gated = m.activation == "swiglu"
    hid_drop = 1.0 if m.hidden_dropout > 0 else 0.0
    # terms in units of s·b·h bytes
    replicated = e * (2 + 2 + 2 + 2) + 2 * hid_drop  # 2 LN inputs, QKV input, fc1 input; dropout masks
    split = e * (2 + 2 * g / a + 2 * g / a + 2)  # Q, K, V, projection input
    split += e * ((4 if gated else 2) * f / h + 2 * f / h)  # activation input, fc2 input
    if flash:
        split += 4 * a / h  # fp32 log-sum-exp per head and token
    else:
        split += e * 2 * a * s / h  # softmax output
        if m.attention_dropout > 0:
            split += a * s / h + e * 2 * a * s / h  # mask + dropout output
    per_sbh = (replicated / tp if sp else replicated) + split / tp
    return per_sbh * s * b * h


def logits_bytes(m: DictConfig, b: int, tp: int, vocab: int | None = None) -> float:
    """The output layer's fp32 logits for the cross entropy: 4·s·b·V/t (Korthikanti et al., Sec. 4.2.2)."""
    v = padded_vocab_size(vocab or m.vocab_size, m.make_vocab_size_divisible_by, tp)
    return 4.0 * m.seq_length * b * v / tp


@dataclass
class Layout:
    nodes: int
    gpus_per_node: int
    tp: int
    pp: int
    vpp: int | None
    sequence_parallel: bool

    @property
    def gpus(self) -> int:
        return self.nodes * self.gpus_per_node

    @property
    def dp(self) -> int:
        return self.gpus // (self.tp * self.pp)

    def describe(self) -> str:
        sp = " +SP" if self.sequence_parallel and self.tp > 1 else ""
        vpp = f" vpp={self.vpp}" if self.vpp else ""
        return f"tp={self.tp}{sp} pp={self.pp}{vpp} dp={self.dp}"


@dataclass
class Memory:
    """Bytes per GPU on the most loaded stage."""

    params_per_gpu: float
    weights: float
    grads: float
    optimizer: float  # without the distributed optimizer
    optimizer_dist: float  # with it
    activations: float  # no recompute
    activations_recompute: float  # full recompute
    microbatches_in_flight: int

    def total(self, distributed: bool, recompute: bool) -> float:
        opt = self.optimizer_dist if distributed else self.optimizer
        act = self.activations_recompute if recompute else self.activations
        return self.weights + self.grads + opt + act


def layout_of(
    cfg: DictConfig, nodes: int | None = None, gpus_per_node: int | None = None, **parallel
) -> Layout:
    p = dict(cfg.parallel) | parallel
    return Layout(
        nodes or cfg.cluster.nodes,
        gpus_per_node or cfg.cluster.gpus_per_node,
        int(p["tp"]),
        int(p["pp"]),
        p.get("vpp"),
        bool(p.get("sequence_parallel")),
    )


def num_microbatches(cfg: DictConfig, lay: Layout) -> int:
    return max(1, cfg.train.global_batch_size // (cfg.train.micro_batch_size * max(lay.dp, 1)))


def memory(cfg: DictConfig, lay: Layout, vocab: int | None = None) -> Memory:
    """``vocab``: the tokenizer's vocabulary (default :func:`vocab_of`)."""
    m, t = cfg.model, cfg.train
    vocab = vocab or vocab_of(cfg)
    pc = count_params(m, lay.tp, vocab)
    per_gpu = stage_params(pc, lay.pp) / lay.tp
    w, g, _ = state_bytes_per_param(t.precision, False, lay.dp)
    opt = state_bytes_per_param(t.precision, False, lay.dp)[2]
    opt_dist = state_bytes_per_param(t.precision, True, lay.dp)[2]
    flash = m.transformer_impl != "local"  # TE / auto use fused (flash) attention on GPU
    act_bytes = 4 if t.precision == "fp32" else 2
    b = t.micro_batch_size
    per_layer = activation_bytes_per_layer(m, b, lay.tp, lay.sequence_parallel, flash, act_bytes)
    layers = math.ceil(m.num_layers / lay.pp)
    in_flight = min(lay.pp, num_microbatches(cfg, lay))
    interleave = 1 + (lay.pp - 1) / (lay.pp * lay.vpp) if lay.vpp and lay.pp > 1 else 1.0
    logits = logits_bytes(m, b, lay.tp, vocab) if lay.pp == 1 else 0.0  # on the last stage, not the first
    act = per_layer * layers * in_flight * interleave + logits
    layer_input = act_bytes * m.seq_length * b * m.hidden_size / (lay.tp if lay.sequence_parallel else 1)
    act_rc = layer_input * layers * in_flight * interleave + per_layer + logits  # + one layer being rebuilt
    return Memory(
        per_gpu, w * per_gpu, g * per_gpu, opt * per_gpu, opt_dist * per_gpu, act, act_rc, in_flight
    )


def fits(total_bytes: float, gpu_memory_gb: float) -> bool:
    return total_bytes <= (gpu_memory_gb - RESERVE_GB) * 1e9


# ---- time ----------------------------------------------------------------------------------------------


def flops_per_step(cfg: DictConfig, vocab: int | None = None) -> float:
    """Model FLOPs of one optimizer step: (6·N + 6·L·s·h) per token x global batch x sequence length."""
    from echo_megatron.training.flops import flops_per_token

    n = count_params(cfg.model, vocab=vocab or vocab_of(cfg)).total
    return flops_per_token(cfg, n) * cfg.train.global_batch_size * cfg.model.seq_length


def step_seconds(
    cfg: DictConfig, gpus: int, recompute: bool | None = None, vocab: int | None = None
) -> float:
    """flops_per_step / (gpus x peak x MFU); full recompute costs one more forward pass (x 4/3)."""
    recompute = cfg.model.recompute if recompute is None else recompute
    c = cfg.cluster
    t = flops_per_step(cfg, vocab) / (gpus * c.peak_tflops * 1e12 * c.mfu)
    return t * (4.0 / 3.0 if recompute else 1.0)


# RL: generation is bounded by reading the weights once per decoding step (memory bandwidth), or by FLOPs.
HBM_BYTES_PER_S = 3.35e12  # H100 SXM HBM3
PROMPT_TOKENS = 160  # a GSM8K-style question, tokenized (the plan's assumption; RL recipes do not say)


def rl_step_seconds(cfg: DictConfig, gpus: int, vocab: int | None = None) -> float:
    """One RL step: generate (prompts x n samples x max_new_tokens; the larger of the FLOP time 2·N per token
    and the bandwidth time of one weight read per decoding step of ``rollout.batch_size`` sequences), then
    score log-probs (old policy, and reference when a KL is used: 2·N per token each) and train the policy
    (6·N per token per PPO epoch); PPO adds a critic of the same size (2·N values + 6·N training)."""
    c, r, rl = cfg.cluster, cfg.rollout, cfg.rl
    n_params = count_params(cfg.model, vocab=vocab or vocab_of(cfg)).total
    prompts = rl.get("num_rollout_samples", rl.get("prompts_per_step", 64))
    seqs = prompts * r.n
    gen_tokens = seqs * r.max_new_tokens
    all_tokens = seqs * (PROMPT_TOKENS + r.max_new_tokens)
    peak = gpus * c.peak_tflops * 1e12 * c.mfu
    weight_bytes = n_params * (4 if cfg.train.precision == "fp32" else 2)
    decode_steps = math.ceil(seqs / max(1, r.batch_size * gpus)) * r.max_new_tokens
    t_gen = max(2 * n_params * gen_tokens / peak, decode_steps * weight_bytes / HBM_BYTES_PER_S)
    kl = rl.get("initial_policy_kl_penalty", rl.get("kl_coef", 0.0))
    passes = 2 + (2 if kl else 0) + 6 * rl.ppo_epochs  # old log-probs, reference, policy updates
    if rl.algorithm == "ppo":
        passes += 2 + 6 * rl.ppo_epochs
    return t_gen + passes * n_params * all_tokens / peak


def run_steps(cfg: DictConfig) -> int | None:
    """The pretraining run's steps: ``train.steps``, or ``train.epochs`` resolved from the preprocessed mixture
    (None while its sources are not preprocessed)."""
    if cfg.train.epochs is None:
        return int(cfg.train.steps)
    from echo_megatron.data.mixture import resolve_train_steps
    from echo_megatron.data.records import DataError

    try:
        return resolve_train_steps(cfg)
    except DataError:
        return None


def estimate_gpu_hours(cfg: DictConfig, command: str = "auto") -> float:
    """GPU-hours of a run on ``cluster.nodes x cluster.gpus_per_node`` GPUs (the sweep's cost hook).

    ``command`` auto = rl when ``rl.base`` is set, else pretrain. Expert Iteration has no cost model here
    (its generation volume depends on the prompt set's size), nor a pretraining run whose ``train.epochs`` wait
    for the preprocessed data: NaN.
    """
    if command == "auto":
        command = "rl" if cfg.rl.base else "pretrain"
    gpus = cfg.cluster.nodes * cfg.cluster.gpus_per_node
    if command == "rl":
        if cfg.rl.algorithm == "ei":
            return float("nan")
        return rl_step_seconds(cfg, gpus, vocab_of(cfg)) * cfg.rl.steps * gpus / 3600.0
    steps = run_steps(cfg)
    return (
        float("nan")
        if steps is None
        else step_seconds(cfg, gpus, vocab=vocab_of(cfg)) * steps * gpus / 3600.0
    )


# ---- layouts -------------------------------------------------------------------------------------------


def smallest_fitting_layout(
    cfg: DictConfig, nodes: int, gpus_per_node: int, vocab: int | None = None
) -> tuple[Layout, bool] | None:
    """The layout with the smallest tp·pp (then smaller tp, TP within a node) that fits with the distributed
    optimizer, without recompute if possible; returns (layout, needs_recompute) or None if none fits."""
    m = cfg.model
    g = m.num_query_groups or m.num_attention_heads
    candidates = []
    for tp in (1, 2, 4, 8):
        if tp > gpus_per_node or m.num_attention_heads % tp or g % tp:
            continue
        for pp in (1, 2, 4, 8, 16):
            if pp > m.num_layers or (nodes * gpus_per_node) % (tp * pp):
                continue
            candidates.append(Layout(nodes, gpus_per_node, tp, pp, None, tp > 1))
    candidates.sort(key=lambda lay: (lay.tp * lay.pp, lay.pp))
    vocab = vocab or vocab_of(cfg)
    for recompute in (False, True):
        for lay in candidates:
            if fits(memory(cfg, lay, vocab).total(True, recompute), cfg.cluster.gpu_memory_gb):
                return lay, recompute
    return None


def human_bytes(n: float) -> str:
    return f"{n / GIB:.2f}"


def human_seconds(s: float) -> str:
    if s < 120:
        return f"{s:.2f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    if s < 3 * 86400:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.1f} days"


# ---- the printed plan ----------------------------------------------------------------------------------


def _memory_block(cfg: DictConfig, lay: Layout, title: str, vocab: int) -> list[str]:
    mem = memory(cfg, lay, vocab)
    gb = cfg.cluster.gpu_memory_gb
    uses = (bool(cfg.parallel.use_distributed_optimizer), bool(cfg.model.recompute))
    lines = [
        f"{title}: {lay.describe()}  ({mem.params_per_gpu / 1e6:,.1f} M parameters per GPU, "
        f"{mem.microbatches_in_flight} micro-batch(es) in flight on the first stage)",
        f"  {'weights':<34}{human_bytes(mem.weights):>9} GiB",
        f"  {'gradients':<34}{human_bytes(mem.grads):>9} GiB",
        f"  {'optimizer states':<34}{human_bytes(mem.optimizer):>9} GiB"
        f"   distributed optimizer: {human_bytes(mem.optimizer_dist)} GiB",
        f"  {'activations, no recompute':<34}{human_bytes(mem.activations):>9} GiB",
        f"  {'activations, full recompute':<34}{human_bytes(mem.activations_recompute):>9} GiB",
        f"  {'total per GPU':<34}{'no recompute':>16}{'full recompute':>18}",
    ]
    for dist in (False, True):
        cells = []
        for rc in (False, True):
            total = mem.total(dist, rc)
            mark = " *" if (dist, rc) == uses else "  "
            cells.append(f"{human_bytes(total):>8} GiB {'fits' if fits(total, gb) else 'OOM ':<4}{mark}")
        label = "  with the distributed optimizer" if dist else "  without the distributed optimizer"
        lines.append(f"{label:<36}{cells[0]:>16}{cells[1]:>18}")
    return lines


def report(cfg: DictConfig, nodes: int, gpus_per_node: int, recipe: str = "") -> str:
    """The text ``echo-megatron plan`` prints."""
    m, t, c = cfg.model, cfg.train, cfg.cluster
    lay = layout_of(cfg, nodes, gpus_per_node)
    vocab = resolve_vocab(cfg, lay.tp, missing_ok=True)
    pc = count_params(m, lay.tp, vocab.size)
    g = m.num_query_groups or m.num_attention_heads
    out = [
        f"plan for {recipe or cfg.name}: {nodes} node(s) x {gpus_per_node} GPUs = {lay.gpus} GPUs "
        f"({c.gpu_memory_gb:g} GB each, {RESERVE_GB:g} GB kept back for CUDA context, NCCL and fragmentation)",
        f"model: {m.preset or 'custom'}, {m.num_layers} layers, hidden {m.hidden_size}, {m.num_attention_heads} heads "
        f"({g} kv groups), ffn {m.ffn_hidden_size or 4 * m.hidden_size} {m.activation}, seq {m.seq_length}, "
        f"vocab {vocab.size} (padded {vocab.padded}; from {vocab.source}), {m.transformer_impl} layers",
        f"parameters: {pc.total / 1e9:.3f} B = embedding {pc.embedding / 1e6:.1f} M + {pc.num_layers} x "
        f"{pc.per_layer / 1e6:.1f} M per layer + output layer {pc.output_layer / 1e6:.1f} M"
        + (" (tied)" if not pc.output_layer else ""),
        f"precision {t.precision}: weights/grads/optimizer bytes per parameter "
        + "/".join(f"{x:g}" for x in state_bytes_per_param(t.precision, False, 1)),
    ]
    if lay.gpus % (lay.tp * lay.pp):
        out.append(f"ERROR: {lay.gpus} GPUs are not divisible by tp*pp = {lay.tp * lay.pp}")
        return "\n".join(out) + "\n"
    nmb = num_microbatches(cfg, lay)
    if t.global_batch_size % (t.micro_batch_size * lay.dp):
        out.append(
            f"WARNING: global batch {t.global_batch_size} is not a multiple of micro batch x dp = "
            f"{t.micro_batch_size} x {lay.dp}"
        )
    out.append(
        f"batch: global {t.global_batch_size} x {m.seq_length} tokens = "
        f"{t.global_batch_size * m.seq_length / 1e6:.2f} M tokens per step; micro batch {t.micro_batch_size}, "
        f"{nmb} micro-batches per step per data-parallel rank"
    )
    out.append("")
    out += _memory_block(cfg, lay, "this recipe's layout", vocab.size)
    out.append("  (* = the recipe's own settings: parallel.use_distributed_optimizer, model.recompute)")
    shown = {(lay.tp, lay.pp, lay.vpp, lay.sequence_parallel)}
    if m.preset in SUGGESTED_PARALLEL:
        s = SUGGESTED_PARALLEL[m.preset]
        sug = layout_of(
            cfg,
            nodes,
            gpus_per_node,
            tp=s.get("tp", 1),
            pp=s.get("pp", 1),
            vpp=None,
            sequence_parallel=s.get("sequence_parallel", False),
        )
        if (lay.gpus % (sug.tp * sug.pp)) == 0 and (
            sug.tp,
            sug.pp,
            sug.vpp,
            sug.sequence_parallel,
        ) not in shown:
            out.append("")
            out += _memory_block(cfg, sug, f"suggested for {m.preset}", vocab.size)
            shown.add((sug.tp, sug.pp, sug.vpp, sug.sequence_parallel))
        out.append(
            f"suggested for {m.preset}: {sug.describe()}"
            + (", distributed optimizer" if s.get("use_distributed_optimizer") else "")
        )
    best = smallest_fitting_layout(cfg, nodes, gpus_per_node, vocab.size)
    if best is None:
        out.append(f"no tp (<= {gpus_per_node}) x pp layout fits {c.gpu_memory_gb:g} GB on {lay.gpus} GPUs")
    else:
        b, rc = best
        out.append(
            f"smallest layout that fits: {b.describe()}, distributed optimizer"
            + (", full recompute" if rc else ", no recompute")
        )
    step = step_seconds(cfg, lay.gpus, recompute=False, vocab=vocab.size)
    step_rc = step_seconds(cfg, lay.gpus, recompute=True, vocab=vocab.size)
    chosen = step_rc if m.recompute else step
    steps = run_steps(cfg)
    if steps is None:  # train.epochs before preprocessing: the cost of 1,000 steps
        length = (
            f"train.epochs {t.epochs:g}: steps known once preprocessed (echo-megatron mixture); 1,000 steps"
        )
        steps = 1000
    else:
        length = f"{steps} steps" + (f" (train.epochs {t.epochs:g})" if t.epochs is not None else "")
    out += [
        "",
        f"time at MFU {c.mfu:.0%} of {c.peak_tflops:g} TFLOP/s per GPU (dense bf16 H100): "
        f"{flops_per_step(cfg, vocab.size) / 1e15:.2f} PFLOP per step (6N + attention)",
        f"  step {human_seconds(step)} (full recompute {human_seconds(step_rc)}); "
        f"{length} = {human_seconds(chosen * steps)} = {chosen * steps * lay.gpus / 3600:,.1f} GPU-h",
    ]
    return "\n".join(out) + "\n"
