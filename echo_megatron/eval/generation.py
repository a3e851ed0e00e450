"""Eval generation: a *generator* turns problems into completions, so the run does not care where they come from.

    generator(problems, *, n, temperature, top_p, max_new_tokens, seed) -> [[Completion] * n per problem]

:func:`model_generator` wraps a live megatron model (the RL loop's policy, a loaded checkpoint) through the
rollout backend on the prompts of ``data.prompt.prompt_text``; :func:`reference_generator` returns each
problem's reference solution (the gold check of the scoring path).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from echo_megatron.config import ConfigError
from echo_megatron.data.prompt import prompt_text
from echo_megatron.eval.tasks import Problem

PROMPT_TOO_LONG = "prompt_too_long"  # finish reason of a problem whose prompt leaves no room to generate


@dataclass
class Completion:
    """One generated solution (the text after the prompt)."""

    text: str
    finish_reason: str | None = None  # eos | stop | length | prompt_too_long | None (not from a sampler)
    num_tokens: int | None = None


Generator = Callable[..., list[list[Completion]]]


# ---- generators ---------------------------------------------------------------------------------------------


class SamplerGenerator:
    """Generations from a rollout backend (``Sampler.generate``) on the prompts ``prompt_text(question,
    template)``: ``question + "\\n\\n"`` (separator), or the question alone (raw; ``rl.prompt_template``).

    A prompt that leaves no room to generate (``len(ids) >= backend.max_seq_len``) gets an empty completion
    with finish reason ``prompt_too_long`` (scored as wrong), not an error.
    """

    def __init__(
        self,
        backend,
        tokenizer,
        *,
        top_k: int = 0,
        stop: Sequence[str] = (),
        template: str = "separator",
    ) -> None:
        if tokenizer is None:
            raise ConfigError(
                "eval needs the run's tokenizer (data.tokenizer.path) to turn questions into prompts; "
                "this run has none (a mock-data run)"
            )
        self.backend = backend
        self.tokenizer = tokenizer
        self.top_k = int(top_k)
        self.stop = list(stop)
        self.template = template
        self.max_seq_len = getattr(backend, "max_seq_len", None)

    def __call__(
        self,
        problems: Sequence[Problem],
        *,
        n: int,
        temperature: float,
        top_p: float,
        max_new_tokens: int,
        seed: int,
    ) -> list[list[Completion]]:
        ids = [self.tokenizer.encode(prompt_text(p.question, self.template)) for p in problems]
        fits = [i for i, q in enumerate(ids) if self.max_seq_len is None or len(q) < self.max_seq_len]
        out = [[Completion("", PROMPT_TOO_LONG, 0) for _ in range(n)] for _ in problems]
        if fits:
            rollouts = self.backend.generate(
                [ids[i] for i in fits],
                n=n,
                max_new_tokens=max_new_tokens,
                temperature=temperature,
                top_p=top_p,
                top_k=self.top_k,
                stop=self.stop,
                seed=seed,
            )
            for ro in rollouts:
                out[fits[ro.prompt_index]][ro.sample_index] = Completion(
                    ro.text or "", ro.finish_reason, len(ro.response_ids)
                )
        return out


def model_generator(model, tokenizer, cfg) -> SamplerGenerator:
    """A generator on a live model (this rank's megatron GPTModel, DDP-wrapped or not; weights used in place)."""
    from echo_megatron.rollout.backend import make_backend

    if tokenizer is None:
        return SamplerGenerator(None, None)  # raises the clear error
    backend = make_backend(
        cfg.rollout.backend,
        model,
        eod_id=tokenizer.eod,
        pad_id=tokenizer.pad,
        max_seq_len=cfg.model.seq_length,
        vocab_size=tokenizer.vocab_size,
        decode=tokenizer.decode,
        max_batch=cfg.eval.batch_size,
    )
    return SamplerGenerator(backend, tokenizer, stop=list(cfg.rollout.stop), template=cfg.rl.prompt_template)


def reference_generator(fmt: str | None = None) -> Generator:
    """Each problem's reference solution as every one of its n generations (the testbed's ``fmt`` rendering when
    given). Scoring these must give (almost) 100%: the gold check of the scoring path."""

    def generate(problems: Sequence[Problem], *, n: int, **_: Any) -> list[list[Completion]]:
        out = []
        for p in problems:
            text = (p.solutions or {}).get(fmt) if fmt else p.solution
            if text is None:
                raise ValueError(
                    f"problem {p.id} has no reference solution{f' in format {fmt}' if fmt else ''}"
                )
            out.append([Completion(text) for _ in range(n)])
        return out

    return generate
