"""RL prompt sets and the resumable per-step prompt sampler.

A prompt set is a task name from ``echo_megatron.eval.tasks`` (``gsm8k_train``, ``testbed`` ...) or a JSONL
file with ``question`` and ``answer`` fields. The policy sees ``prompt_text(question, rl.prompt_template)``
(``question + "\\n\\n"``, or the raw question) and writes the solution.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from echo_megatron.data.prompt import prompt_text
from echo_megatron.data.records import numbered_jsonl_rows


@dataclass(frozen=True)
class Prompt:
    id: str
    question: str
    answer: str

    @property
    def text(self) -> str:
        """The prompt under the default template (the RL session applies ``rl.prompt_template``)."""
        return prompt_text(self.question)


def load_prompts(spec: str, max_problems: int | None = None) -> list[Prompt]:
    """Prompts from a JSONL path or a task name; a row without a question or answer is an error naming it."""
    if os.path.isfile(spec):
        out: list[Prompt] = []
        for i, row in numbered_jsonl_rows(spec):
            for key in ("question", "answer"):
                if row.get(key) in (None, ""):
                    raise ValueError(f"{spec}:{i}: prompt has no '{key}'")
            out.append(Prompt(str(row.get("id", i)), str(row["question"]), str(row["answer"])))
            if max_problems and len(out) >= max_problems:
                break
    else:
        from echo_megatron.eval.tasks import load_task

        out = [
            Prompt(str(p.id), p.question, str(p.answer)) for p in load_task(spec, max_problems=max_problems)
        ]
        for p in out:
            if p.answer in ("", "None"):
                raise ValueError(f"prompt set {spec}: problem {p.id} has no answer")
    if not out:
        raise ValueError(f"prompt set {spec} is empty")
    return out


class PromptSampler:
    """Step ``s`` takes prompts ``[s * P, (s + 1) * P)`` of an endless stream of seeded epoch permutations.

    The position is the step number alone, so a resumed run draws exactly the prompts it would have drawn.
    """

    def __init__(self, num_prompts: int, per_step: int, seed: int) -> None:
        if per_step > num_prompts:
            raise ValueError(f"rl.num_rollout_samples ({per_step}) > number of prompts ({num_prompts})")
        self.n, self.per_step, self.seed = num_prompts, per_step, seed

    def epoch_of(self, step: int) -> float:
        return step * self.per_step / self.n

    def indices(self, step: int) -> list[int]:
        start = step * self.per_step
        out, perms = [], {}
        for k in range(start, start + self.per_step):
            epoch, pos = divmod(k, self.n)
            if epoch not in perms:
                perms[epoch] = np.random.default_rng([self.seed, epoch]).permutation(self.n)
            out.append(int(perms[epoch][pos]))
        return out
