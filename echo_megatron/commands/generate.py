"""``echo-megatron generate CHECKPOINT --prompt "..." [-n 4 --temperature 0.7]``: sample for quick inspection.

Runs in one process, or under ``torchrun --nproc-per-node N`` with tensor parallelism N. Prompts are text
when the run has a tokenizer (``data.tokenizer.path``), else space-separated token ids (``--prompt "5 17 3"``).
The RolloutConfig defaults (``rollout.*``) apply unless given here; ``--json`` prints one JSON object per
sample with ids, log-probs and finish reason.
"""

from __future__ import annotations

import argparse
import json
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="checkpoint dir (iter_NNNNNNN), checkpoints dir or run dir")
    parser.add_argument("--prompt", action="append", default=[], help="a prompt (repeatable)")
    parser.add_argument("--prompts-file", help="a text file with one prompt per line")
    parser.add_argument("-n", type=int, default=1, help="samples per prompt")
    parser.add_argument("--max-new-tokens", type=int, default=None)
    parser.add_argument("--temperature", type=float, default=None, help="0 = greedy")
    parser.add_argument("--top-p", type=float, default=None)
    parser.add_argument("--top-k", type=int, default=None)
    parser.add_argument("--stop", action="append", default=None, help="stop string (repeatable)")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--max-seq-len", type=int, default=None, help="default: the run's model.seq_length")
    parser.add_argument("--json", action="store_true", help="one JSON object per sample")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="overrides of the run's config")


def _prompts(args: argparse.Namespace) -> list[str]:
    prompts = list(args.prompt)
    if args.prompts_file:
        with open(args.prompts_file, encoding="utf-8") as f:
            prompts += [line.rstrip("\n").replace("\\n", "\n") for line in f if line.strip()]
    if not prompts:
        raise SystemExit("echo-megatron generate: give --prompt TEXT (repeatable) or --prompts-file FILE")
    return prompts


def _encode(policy, text: str) -> list[int]:
    if policy.tokenizer is not None:
        return policy.tokenizer.encode(text)
    try:
        return [int(t) for t in text.replace(",", " ").split()]
    except ValueError:
        raise SystemExit(
            f"echo-megatron generate: the run has no tokenizer (data.tokenizer.path), so a prompt is token ids "
            f"separated by spaces, not {text!r}"
        ) from None


def run(args: argparse.Namespace) -> int:
    import torch.distributed as dist

    from echo_megatron.distributed.init import destroy
    from echo_megatron.rollout.backend import SamplingParams
    from echo_megatron.rollout.loading import load_policy
    from echo_megatron.rollout.sampler import Sampler

    texts = _prompts(args)
    try:
        policy = load_policy(args.checkpoint, args.overrides)
        r = policy.cfg.rollout
        given = {
            "max_new_tokens": args.max_new_tokens,
            "temperature": args.temperature,
            "top_p": args.top_p,
            "top_k": args.top_k,
            "seed": args.seed,
            "stop": args.stop,
        }
        params = SamplingParams.from_config(r, n=args.n, **{k: v for k, v in given.items() if v is not None})
        sampler = Sampler(
            policy.model,
            eod_id=policy.vocab.eod,
            pad_id=policy.vocab.pad,
            max_seq_len=args.max_seq_len or policy.cfg.model.seq_length,
            vocab_size=policy.vocab.size,
            decode=policy.decode,
            max_batch=r.batch_size,
        )
        prompts = [_encode(policy, t) for t in texts]
        rollouts = sampler.generate(prompts, **vars(params))
        if dist.get_rank() == 0:
            _print(rollouts, texts, policy, args.json)
    finally:
        destroy()
    return 0


def _print(rollouts, texts, policy, as_json: bool) -> None:
    out = sys.stdout
    if not as_json:
        print(f"# {policy.checkpoint} (step {policy.iteration})", file=out)
    for ro in rollouts:
        if as_json:
            row = {
                "prompt": texts[ro.prompt_index],
                "sample": ro.sample_index,
                "text": ro.text,
                "finish_reason": ro.finish_reason,
                "prompt_ids": ro.prompt_ids,
                "response_ids": ro.response_ids,
                "logprobs": [round(x, 6) for x in ro.logprobs],
            }
            print(json.dumps(row), file=out)
        else:
            mean_lp = sum(ro.logprobs) / max(len(ro.logprobs), 1)
            print(
                f"--- prompt {ro.prompt_index} sample {ro.sample_index} [{ro.finish_reason}, "
                f"{len(ro.response_ids)} tokens, mean logprob {mean_lp:.3f}]",
                file=out,
            )
            sep = "" if policy.tokenizer is not None else " | "  # token ids: show where the response starts
            print(texts[ro.prompt_index] + sep + (ro.text or ""), file=out)
