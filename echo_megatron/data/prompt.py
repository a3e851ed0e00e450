"""The one prompt template: how a question is put before a solution, in pretraining documents, RL prompts,
eval prompts and Expert Iteration's SFT documents alike.

    prompt_text(question)              -> question + "\\n\\n"          (what the model is given)
    document_text(question, solution)  -> prompt_text(question) + solution (EI's SFT documents: under
                                          rl.prompt_template, the form the policy generated them in)
    prompt_text(question, "raw")       -> question                  (rl.prompt_template=raw: the paper's RL and
                                                                    eval prompts; the model writes the separator)

A model sees at inference exactly the prefix it saw in pretraining, so the format it continues with is the one
its pretraining data taught it for that prefix.
"""

from __future__ import annotations

from echo_megatron.config.rl import PROMPT_TEMPLATES

PROMPT_SEP = "\n\n"


def prompt_text(question: str, template: str = "separator") -> str:
    """The text a model is given for ``question`` under ``template`` (``rl.prompt_template``): ``separator``
    = ``question + "\\n\\n"``, ``raw`` = the question alone."""
    if template == "raw":
        return question
    if template not in PROMPT_TEMPLATES:
        raise ValueError(f"unknown prompt template '{template}' ({' | '.join(PROMPT_TEMPLATES)})")
    return question + PROMPT_SEP


def document_text(question: str, solution: str, template: str = "separator") -> str:
    """A whole training document: the prompt under ``template``, then the solution as written."""
    return prompt_text(question, template) + solution
