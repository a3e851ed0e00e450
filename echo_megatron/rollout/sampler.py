"""``Sampler``: batched, seeded KV-cache generation from a megatron-core ``GPTModel`` in this process.

The RL loop hands it the *training* model (unwrapped from DDP, this rank's TP shard): no weight copy, so
generation always sees the current policy. ``generate`` switches the model to eval mode (and sequence
parallelism off) for its duration and restores both afterwards.

One call, for P prompts and n samples each:
  1. prompts are sorted by length and cut into chunks of at most ``max_batch`` sequences;
  2. per chunk, each distinct prompt is prefilled once (left-padded) and its cache rows are repeated n times;
  3. decoding appends one token per step to every live row; rows that finish (EOS, stop, length) are
     dropped from the cache once an eighth of the batch has finished, so long tails run on small batches.
Each sequence draws its uniforms from its own generator seeded by (seed, prompt index, sample index), so
its tokens do not depend on batch size, chunking, sort order or which other rows finished first.

Tensor parallelism: every rank of a TP group calls ``generate`` with the same arguments. The output layer
gathers the vocabulary-parallel logits (megatron's ``gather_from_tensor_model_parallel_region``), every rank
samples from the same logits with the same uniforms, and the chosen tokens are broadcast from the group's
first rank so the ranks stay in lockstep bit for bit.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch

from echo_megatron.rollout.backend import Rollout, SamplingParams
from echo_megatron.rollout.kv_cache import CachedForward
from echo_megatron.rollout.sampling import choose_tokens
from echo_megatron.rollout.stops import StopChecker, cut_text

COMPACT_FRACTION = 8  # drop finished rows from the cache once 1/8 of the batch has finished


def _unwrap(model):
    while hasattr(model, "module"):
        model = model.module
    return model


@contextlib.contextmanager
def inference_mode(model) -> Iterator[None]:
    """eval(), no autograd, sequence parallelism off (decoding runs one token per step); all restored after."""
    was_training = model.training
    toggled = []
    for obj in [model.config, *model.modules()]:
        for attr in ("sequence_parallel", "reduce_scatter_embeddings"):
            if getattr(obj, attr, None) is True:
                toggled.append((obj, attr))
                setattr(obj, attr, False)
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for obj, attr in toggled:
            setattr(obj, attr, True)
        model.train(was_training)


def sequence_uniforms(seed: int, prompt_index: int, sample_index: int, steps: int) -> np.ndarray:
    """The uniforms in [0, 1) that sequence (prompt_index, sample_index) consumes, one per step."""
    return np.random.default_rng([seed, prompt_index, sample_index]).random(steps)


class Sampler:
    """KV-cache sampler over ``model`` (a megatron ``GPTModel``, PP = 1).

    Args:
        model: this rank's GPTModel (a DDP wrapper is unwrapped; weights are used in place).
        eod_id: end-of-document token; generation of a row ends after it (unless ``ignore_eos``).
        pad_id: token id used for left padding (masked out; any valid id works).
        max_seq_len: prompt + response tokens per sequence at most.
        vocab_size: the tokenizer's vocabulary; ids at or above it (megatron's padding) are never sampled.
        decode: ids -> text, needed for stop strings and ``Rollout.text``.
        max_batch: sequences decoded together (the KV cache holds this many rows).
    """

    def __init__(
        self,
        model,
        eod_id: int,
        pad_id: int,
        max_seq_len: int,
        *,
        vocab_size: int | None = None,
        decode: Callable[[list[int]], str] | None = None,
        max_batch: int = 64,
    ) -> None:
        self.model = _unwrap(model)
        self.forward = CachedForward(self.model)  # raises for PP > 1 and unsupported features
        self.eod_id, self.pad_id = int(eod_id), int(pad_id)
        self.max_seq_len = int(max_seq_len)
        self.vocab_size = vocab_size
        self.decode = decode
        self.max_batch = int(max_batch)
        if self.max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        pos_emb = getattr(self.model.embedding, "position_embeddings", None)
        if pos_emb is not None and self.max_seq_len > pos_emb.num_embeddings:
            raise ValueError(
                f"max_seq_len {self.max_seq_len} exceeds the model's {pos_emb.num_embeddings} learned positions"
            )

    def sync_weights(self) -> float:
        """Nothing to do: the sampler reads the training model's parameters in place."""
        return 0.0

    # -- public API ------------------------------------------------------------------------------------------
    def generate(self, prompts: Sequence[Sequence[int]], **params) -> list[Rollout]:
        """Sample ``n`` responses per prompt; see :class:`SamplingParams` for the keyword arguments.

        Returns ``len(prompts) * n`` rollouts ordered by (prompt_index, sample_index).
        """
        p = SamplingParams(**params)
        p.validate()
        prompts = [list(map(int, q)) for q in prompts]
        self._check_prompts(prompts)
        stops = StopChecker(p.stop, p.stop_token_seqs, self.decode)
        jobs = sorted(
            ((len(prompts[i]), i, j) for i in range(len(prompts)) for j in range(p.n)), key=lambda t: t[:2]
        )
        results: dict[tuple[int, int], Rollout] = {}
        with inference_mode(self.model):
            for start in range(0, len(jobs), self.max_batch):
                rows = [(i, j) for _, i, j in jobs[start : start + self.max_batch]]
                for r in self._generate_chunk(prompts, rows, p, stops):
                    results[(r.prompt_index, r.sample_index)] = r
        return [results[(i, j)] for i in range(len(prompts)) for j in range(p.n)]

    # -- internals -------------------------------------------------------------------------------------------
    def _check_prompts(self, prompts: list[list[int]]) -> None:
        vocab = self.vocab_size or self.model.vocab_size
        for i, q in enumerate(prompts):
            if not q:
                raise ValueError(f"prompt {i} is empty")
            if len(q) >= self.max_seq_len:
                raise ValueError(
                    f"prompt {i} has {len(q)} tokens; max_seq_len {self.max_seq_len} leaves no room to generate"
                )
            bad = [t for t in q if not 0 <= t < vocab]
            if bad:
                raise ValueError(f"prompt {i} has token ids outside [0, {vocab}): {bad[:5]}")

    def _generate_chunk(
        self, prompts: list[list[int]], rows: list[tuple[int, int]], p: SamplingParams, stops: StopChecker
    ) -> list[Rollout]:
        device = next(self.model.parameters()).device
        uniq = sorted({i for i, _ in rows})
        slot_of = {i: k for k, i in enumerate(uniq)}
        lens = [len(prompts[i]) for i in uniq]
        width = max(lens)
        budget = [min(p.max_new_tokens, self.max_seq_len - len(prompts[i])) for i, _ in rows]
        steps = max(budget)

        # 1. Prefill each distinct prompt once, left-padded; positions count real tokens (-1 = pad).
        tokens = torch.full((len(uniq), width), self.pad_id, dtype=torch.long)
        positions = torch.full((len(uniq), width), -1, dtype=torch.long)
        for k, i in enumerate(uniq):
            n_pad = width - lens[k]
            tokens[k, n_pad:] = torch.tensor(prompts[i])
            positions[k, n_pad:] = torch.arange(lens[k])
        cache = self.forward.new_cache(len(uniq), width + steps)
        logits = self.forward(cache, tokens.to(device), positions.to(device))

        # 2. n samples: repeat each prompt's cache rows.
        src = torch.tensor([slot_of[i] for i, _ in rows], device=device)
        cache.select_rows(src)
        logits = logits.index_select(0, src)
        pos = torch.tensor([len(prompts[i]) for i, _ in rows], device=device)
        u = torch.from_numpy(np.stack([sequence_uniforms(p.seed, i, j, steps) for i, j in rows]))
        u = u.to(device=device, dtype=torch.float32)

        # 3. Decode. Live sequences: chunk rows `live_rows` sitting at cache rows `live_idx`.
        n = len(rows)
        out_tok = torch.zeros(n, steps, dtype=torch.long, device=device)
        out_lp = torch.zeros(n, steps, dtype=torch.float32, device=device)
        length = [0] * n
        reason: list[str | None] = [None] * n
        matched: list = [None] * n
        host_ids: list[list[int]] = [[] for _ in range(n)]
        live_rows = list(range(n))
        live_idx = torch.arange(n, device=device)
        rows_t = torch.arange(n, device=device)
        budget_t = torch.tensor(budget, device=device)
        for step in range(steps):
            if logits.shape[0] != len(live_rows):
                logits = logits.index_select(0, live_idx)
            tok, lp = choose_tokens(logits, u[rows_t, step], p.temperature, p.top_k, p.top_p, self.vocab_size)
            tok = self._broadcast(tok)
            out_tok[rows_t, step] = tok
            out_lp[rows_t, step] = lp
            eos = (tok == self.eod_id) if not p.ignore_eos else torch.zeros_like(tok, dtype=torch.bool)
            done = (budget_t[rows_t] <= step + 1) | eos
            done_list, eos_list = done.tolist(), eos.tolist()
            tok_list = tok.tolist() if stops.active else None
            for k, r in enumerate(live_rows):
                length[r] = step + 1
                if stops.active:
                    host_ids[r].append(tok_list[k])
                    hit = stops(host_ids[r])
                    if hit is not None and not eos_list[k]:
                        reason[r], matched[r], done_list[k] = "stop", hit, True
                        continue
                if done_list[k]:
                    reason[r] = "eos" if eos_list[k] else "length"
            keep = [k for k, d in enumerate(done_list) if not d]
            if not keep:
                break
            if len(keep) < len(live_rows):
                keep_t = torch.tensor(keep, device=device)
                live_rows = [live_rows[k] for k in keep]
                live_idx, rows_t, tok = live_idx[keep_t], rows_t[keep_t], tok[keep_t]
                if cache.batch - len(keep) >= max(1, cache.batch // COMPACT_FRACTION):
                    cache.select_rows(live_idx)
                    pos = pos.index_select(0, live_idx)
                    live_idx = torch.arange(len(keep), device=device)
            if cache.batch != len(live_rows):  # finished rows still in the cache decode a dummy token
                feed = torch.full((cache.batch,), self.pad_id, dtype=torch.long, device=device)
                feed[live_idx] = tok
            else:
                feed = tok
            # a finished row still in the cache may sit past the last position (its prompt was longer, so its
            # budget ran out first): its dummy token goes to the last position instead of out of range
            logits = self.forward(cache, feed.unsqueeze(1), pos.clamp(max=self.max_seq_len - 1).unsqueeze(1))
            pos = pos + 1

        return self._finish(prompts, rows, out_tok, out_lp, length, reason, matched)

    def _broadcast(self, tok: torch.Tensor) -> torch.Tensor:
        from megatron.core import parallel_state as ps

        if ps.get_tensor_model_parallel_world_size() > 1:
            torch.distributed.broadcast(
                tok, src=ps.get_tensor_model_parallel_src_rank(), group=ps.get_tensor_model_parallel_group()
            )
        return tok

    def _finish(self, prompts, rows, out_tok, out_lp, length, reason, matched) -> list[Rollout]:
        toks, lps = out_tok.tolist(), out_lp.tolist()
        result = []
        for r, (i, j) in enumerate(rows):
            ids, lp = toks[r][: length[r]], lps[r][: length[r]]
            ro = Rollout(i, j, list(prompts[i]), ids, lp, reason[r] or "length", stop=matched[r])
            if self.decode is not None:
                body = ids
                if ro.finish_reason == "eos":
                    body = ids[:-1]
                elif isinstance(ro.stop, list):
                    body = ids[: -len(ro.stop)]
                text = self.decode(body)
                stop_strings = [ro.stop] if isinstance(ro.stop, str) else []
                ro.text, _ = cut_text(text, stop_strings)
            result.append(ro)
        return result
