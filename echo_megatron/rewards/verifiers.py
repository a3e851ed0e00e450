r"""Verifiers: how the final answer of a completion is found and judged against the gold. An extension point.

``score`` drives one ``Item`` per completion through four steps of a ``Verifier``; every step that needs to run
untrusted code returns a ``Job`` for the sandbox, and the next step gets its ``Reply``:

    extract(item, task) -> Job | None   format, gold, and either the answer from the text or a program to run
    take(item, reply) -> Job | None     the program's reply -> the answer (or an error); may fall back to the text,
                                        or ask for one more program (``score`` runs those in a further round)
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

``paper`` (``PaperVerifier``) reproduces the decisions of the paper's ``math_verifier.py``, fallbacks and blind
spots included (``paper.py`` gives its rules); its programs run in the sandbox all the same. It reads the text of
its ``purpose`` (RL ``reward``: the prompt + completion; ``eval`` and ``ei``: the completion) and, with
``formats.classifier: paper``, labels the format as the paper does (which depends on whether the code gave a
value).

Adding a verifier: subclass ``Verifier``, override the steps that differ, add it to
``VERIFIERS``. A step that must run code returns a ``Job`` whose ``kind`` names a runner in ``runner.RUNNERS``
(a new kind is a new runner there, with its role: ``program`` jobs never see a gold, ``verify`` jobs never run
model code); ``take`` may fall back to the text (``item.text``, and ``item.prompt`` when the caller passed
prompts) when the program gives nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

from echo_megatron.rewards import paper
from echo_megatron.rewards.equivalence import answers_equal
from echo_megatron.rewards.extract import (
    MAX_COMPLETION_CHARS,
    code_program,
    gold_answer,
    llm_code_blocks,
    nl_answer,
)
from echo_megatron.rewards.formats import CODE, CODE_INTERP, EMPTY, classify_format
from echo_megatron.rewards.paper import CLASSIFIERS, PURPOSES, Purpose
from echo_megatron.rewards.protocol import ERROR_KINDS, Job, Reply


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
    """The strict verifier (see the module docstring); other verifiers subclass it and override steps.
    ``purpose``: which caller scores (``paper.PURPOSES``); ``classifier``: ``formats.classifier``."""

    name = "strict"

    def __init__(self, cfg=None, purpose: Purpose = "reward", classifier: str = "strict") -> None:
        if purpose not in PURPOSES:
            raise ValueError(f"unknown scoring purpose {purpose!r}; known: {list(PURPOSES)}")
        if classifier not in CLASSIFIERS:
            raise ValueError(f"unknown format classifier {classifier!r}; known: {list(CLASSIFIERS)}")
        if classifier == "paper" and self.name != "paper":
            raise ValueError(
                "formats.classifier=paper needs rewards.verifier=paper (the paper's label depends on its code run)"
            )
        self.purpose, self.classifier = purpose, classifier
        self.last_number_fallback = bool(setting(cfg, "last_number_fallback", True))
        self.rel_tol = float(setting(cfg, "rel_tol", 1e-6))

    def item(self, text: str, reference: object, prompt: str | None) -> Item:
        """The Item ``score`` drives through the steps (a verifier that needs more state returns a subclass)."""
        return Item(text, reference, prompt)

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

    def take(self, item: Item, reply: Reply) -> Job | None:
        item.answer, item.error, item.detail = reply.value, reply.error, reply.detail
        return None

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


@dataclass
class PaperItem(Item):
    """An Item with the paper procedure's state."""

    query: str = ""  # the text the paper reads (paper.paper_text)
    label: str = paper.TEXT  # the paper's response_type so far
    stage: str | None = None  # the program in flight: paper.LLM_CODE or paper.TINYGSM_CODE
    code_out: str | None = None  # str() of the code's value; None = the code gave nothing (-> parse the text)


class PaperVerifier(Verifier):
    """The paper's ``math_verifier.py`` decisions (``paper.py``), every program in the sandbox."""

    name = "paper"

    def item(self, text: str, reference: object, prompt: str | None) -> Item:
        query = paper.paper_text(text, prompt, self.purpose)
        return PaperItem(text, reference, prompt, query=query)

    def _tinygsm(self, item: PaperItem) -> Job | None:
        if "def" not in item.query:
            return None
        item.label, item.stage = paper.TINYGSM_CODE, paper.TINYGSM_CODE
        return Job("paper_function", (paper.tinygsm_program(item.query),))

    def extract(self, item: Item, task: str) -> Job | None:
        assert isinstance(item, PaperItem)
        item.gold = None if item.reference is None else paper.paper_gold(item.reference)
        if paper.LLM_CODE_OPEN in item.query:
            item.label = paper.LLM_CODE
            block = paper.first_llm_code_block(item.query)
            if block is not None:
                item.stage = paper.LLM_CODE
                return Job("paper_notebook", (block,))
        return self._tinygsm(item)

    def take(self, item: Item, reply: Reply) -> Job | None:
        assert isinstance(item, PaperItem)
        stage, item.stage = item.stage, None
        if reply.error is None and reply.value is not None:
            item.code_out = reply.value
            return None
        note = f"{stage}: {reply.error}: {reply.detail or ERROR_KINDS.get(reply.error or '', '')}"
        item.detail = (item.detail + "; " if item.detail else "") + note + " (the text is parsed)"
        return self._tinygsm(item) if stage == paper.LLM_CODE else None

    def _set_format(self, item: PaperItem) -> None:
        if self.classifier == "paper":
            item.format = paper.format_label(item.label)
        else:
            item.format = classify_format(item.text[:MAX_COMPLETION_CHARS])

    def judge(self, item: Item, task: str) -> Job | None:
        assert isinstance(item, PaperItem)
        item.answer = item.code_out
        self._set_format(item)
        if item.gold is None:
            item.error = "no_reference"
            return None
        kind = "paper_verify_pred_first" if self.purpose == "ei" else "paper_verify"
        pred = item.code_out if item.code_out is not None else item.query
        return Job(kind, gold=item.gold, pred=pred)

    def settle(self, item: Item, reply: Reply) -> None:
        assert isinstance(item, PaperItem)
        item.correct = reply.equal is True
        item.answer = reply.value
        if reply.error is not None:
            item.error, item.detail = "verify", f"{reply.error}: {reply.detail}"
            if self.purpose == "eval":  # run_inference_all.py: an exception scores 0 with the label "text"
                item.label = paper.TEXT
                self._set_format(item)
        elif reply.value is None:
            item.error = "no_answer"


VERIFIERS: dict[str, type[Verifier]] = {"strict": Verifier, "paper": PaperVerifier}


def make_verifier(cfg=None, purpose: Purpose = "reward", classifier: str = "strict") -> Verifier:
    """The verifier named by ``cfg.verifier`` (default ``strict``), configured from ``cfg``, for ``purpose``
    (``paper.PURPOSES``) with the format ``classifier`` (``formats.classifier``)."""
    name = str(setting(cfg, "verifier", "strict"))
    if name not in VERIFIERS:
        raise ValueError(f"unknown verifier {name!r}; known: {sorted(VERIFIERS)}")
    return VERIFIERS[name](cfg, purpose, classifier)
