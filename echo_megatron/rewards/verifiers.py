r"""Verifiers: how the final answer of a completion is found and judged against the gold. An extension point.

``score`` drives one ``Item`` per completion through four steps of a ``Verifier``; every step that needs to run
untrusted code returns a ``Job`` for the sandbox, and the next step gets its ``Reply``:

    extract(item, task) -> Job | None   format, gold, and either the answer from the text or a program to run
    take(item, reply)                   the program's reply -> the answer (or an error); may fall back to the text
    judge(item, task) -> Job | None     decide ``correct`` in-process, or ask for a math-verify comparison
    settle(item, reply)                 math-verify's verdict -> ``correct``

A verifier is chosen by name (``rewards.verifier``, ``score --verifier``) from ``VERIFIERS``. ``strict`` is
this project's verifier (module docstrings of ``extract`` and ``equivalence`` give its rules):

- ``nl``/``other``: ``extract.nl_answer`` (``\boxed``, ``####``, "answer is", optionally the last number);
- ``code``: the program runs in the sandbox and ``simple_math_problem()`` is called (else the last zero-argument
  function, a global ``result`` or the last printed line); ``code_interp``: every ``<llm-code>`` block runs in
  one session and the last block's value or printed output is the answer; the text is never used for them;
- numbers are compared in-process (``equivalence.answers_equal``), LaTeX answers by math-verify in a verify
  worker (sandboxed, and never running model code).

Adding a verifier (the paper's, say): subclass ``Verifier``, override the steps that differ, add it to
``VERIFIERS``. A step that must run code returns a ``Job`` whose ``kind`` names a runner in ``runner.RUNNERS``
(a new kind is a new runner there, with its role: ``program`` jobs never see a gold, ``verify`` jobs never run
model code); ``take`` may fall back to the text (``item.text``, and ``item.prompt`` when the caller passed
prompts) when the program gives nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

from echo_megatron.rewards.equivalence import answers_equal
from echo_megatron.rewards.extract import (
    MAX_COMPLETION_CHARS,
    code_program,
    gold_answer,
    llm_code_blocks,
    nl_answer,
)
from echo_megatron.rewards.formats import CODE, CODE_INTERP, EMPTY, classify_format
from echo_megatron.rewards.protocol import Job, Reply


def setting(cfg, name: str, default):
    """``cfg.name``, or ``default`` when ``cfg`` is None or lacks it (``cfg``: a RewardConfig, its OmegaConf node,
    or any object with some of its attributes)."""
    return getattr(cfg, name, default) if cfg is not None else default


@dataclass
class Item:
    """One completion on its way through ``score``."""

    text: str
    reference: object
    prompt: str | None = None  # the question, when the caller passes it (``score(..., prompts=)``)
    format: str = EMPTY
    gold: str | None = None
    answer: str | None = None  # the answer compared with the gold (a program's value or output for code)
    correct: bool = False
    error: str | None = None  # None, or one of protocol.ERROR_KINDS
    detail: str = ""
    elapsed: float = 0.0  # seconds spent on this item (in-process work + its sandbox runs)


class Verifier:
    """The strict verifier (see the module docstring); other verifiers subclass it and override steps."""

    name = "strict"

    def __init__(self, cfg=None) -> None:
        self.last_number_fallback = bool(setting(cfg, "last_number_fallback", True))
        self.rel_tol = float(setting(cfg, "rel_tol", 1e-6))

    def extract(self, item: Item, task: str) -> Job | None:
        item.format = classify_format(item.text[:MAX_COMPLETION_CHARS])
        item.gold = gold_answer(item.reference, task)
        if len(item.text) > MAX_COMPLETION_CHARS:
            item.error = "too_long"
        elif item.format == EMPTY:
            item.error = "empty"
        elif item.format == CODE:
            return Job("function", (code_program(item.text),))
        elif item.format == CODE_INTERP:
            return Job("notebook", tuple(llm_code_blocks(item.text)))
        else:
            item.answer = nl_answer(item.text, self.last_number_fallback)
            if item.answer is None:
                item.error = "no_answer"
        return None

    def take(self, item: Item, reply: Reply) -> None:
        item.answer, item.error, item.detail = reply.value, reply.error, reply.detail

    def judge(self, item: Item, task: str) -> Job | None:
        if item.error is None and item.answer is None:
            item.error = "no_answer"
        if item.error is None and item.gold is None:
            item.error = "no_reference"
        if item.error is not None:
            return None
        eq = answers_equal(item.answer, item.gold, task, self.rel_tol)
        if eq is None:
            return Job("verify", gold=item.gold, pred=item.answer)
        item.correct = eq
        return None

    def settle(self, item: Item, reply: Reply) -> None:
        item.correct = reply.equal is True
        if reply.error is not None:
            item.error, item.detail = "verify", f"{reply.error}: {reply.detail}"


VERIFIERS: dict[str, type[Verifier]] = {"strict": Verifier}


def make_verifier(cfg=None) -> Verifier:
    """The verifier named by ``cfg.verifier`` (default ``strict``), configured from ``cfg``."""
    name = str(setting(cfg, "verifier", "strict"))
    if name not in VERIFIERS:
        raise ValueError(f"unknown verifier {name!r}; known: {sorted(VERIFIERS)}")
    return VERIFIERS[name](cfg)
