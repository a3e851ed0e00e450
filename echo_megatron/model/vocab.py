"""The model's vocabulary, resolved in one place: how many token ids, how many embedding rows, EOD and pad.

With ``data.tokenizer.path`` set the tokenizer decides (its vocabulary with added tokens, its EOD and pad
tokens) and ``model.vocab_size`` is not used; without one (mock-data runs) ``model.vocab_size`` is the
vocabulary and its last id is both EOD and pad. The embedding and output layer have
:func:`padded_vocab_size` rows: ``model.builder`` builds the model with it, so the planner, the parameter
counter and the trainer count the same rows. The config is never written:
:func:`resolve_vocab` returns a :class:`Vocab`. A run's ``config.yaml`` records the size it trained
(``training.loop.save_config``), so loading a checkpoint can tell when its tokenizer has changed since.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Any

from echo_megatron.config import ConfigError


def padded_vocab_size(vocab_size: int, divisible_by: int, tp: int) -> int:
    """Round the vocabulary up to a multiple of ``divisible_by`` (times ``tp`` only when ``tp`` does not divide it).

    Megatron-LM always pads to ``divisible_by * tp``, so the same model has a different padded vocabulary at
    TP=1 and TP=2 and its embedding rows do not reshard exactly. With ``divisible_by`` a multiple of the TP
    size (128 and TP 1/2/4/8), ours is the same at every layout.
    """
    multiple = divisible_by if divisible_by % tp == 0 else divisible_by * tp
    return ((vocab_size + multiple - 1) // multiple) * multiple


@dataclass(frozen=True)
class Vocab:
    size: int  # token ids in use: the tokenizer's vocabulary (added tokens included), else model.vocab_size
    padded: int  # embedding / output-layer rows at the layout asked for
    eod: int  # end of document: appended after every document, the sampler's stop token
    pad: int  # fills rows of a batch past their end
    source: str  # where ``size`` came from, for messages: "tokenizer PATH" | "model.vocab_size ..."


def resolve_vocab(
    cfg: Any, tp: int | None = None, *, tokenizer: Any = None, missing_ok: bool = False
) -> Vocab:
    """The vocabulary ``cfg`` trains, padded for tensor parallel size ``tp`` (default ``parallel.tp``).

    ``tokenizer``: the already loaded tokenizer of ``cfg.data.tokenizer`` (else it is loaded here).
    ``missing_ok``: when the tokenizer cannot be loaded on this machine, fall back to ``model.vocab_size`` and
    say so in ``source`` (the planner and ``params`` inspect recipes meant for another machine); otherwise
    the :class:`ConfigError` stands.
    """
    tp = cfg.parallel.tp if tp is None else tp
    path = cfg.data.tokenizer.path
    if tokenizer is not None:
        size, eod, pad = tokenizer.vocab_size, tokenizer.eod, tokenizer.pad
        source = f"tokenizer {path}"
    elif path:
        try:
            size, eod, pad = _tokenizer_ids(str(path), cfg.data.tokenizer.eod, cfg.data.tokenizer.pad)
            source = f"tokenizer {path}"
        except ConfigError:
            if not missing_ok:
                raise
            size = cfg.model.vocab_size
            eod = pad = size - 1
            source = f"model.vocab_size (tokenizer {path} not found here)"
    else:
        size = cfg.model.vocab_size
        eod = pad = size - 1
        source = "model.vocab_size"
    padded = padded_vocab_size(size, cfg.model.make_vocab_size_divisible_by, tp)
    return Vocab(size=size, padded=padded, eod=eod, pad=pad, source=source)


def _tokenizer_ids(path: str, eod: str | None, pad: str | None) -> tuple[int, int, int]:
    """(vocab size, EOD id, pad id) of a tokenizer, remembered per file version (a sweep's dry run resolves
    the same tokenizer for every run, also when it is not on this machine)."""
    from echo_megatron.data.tokenizer import resolve_tokenizer_path

    local = resolve_tokenizer_path(path)
    stamp = (os.stat(local).st_mtime_ns, os.stat(local).st_size) if os.path.isfile(local) else None
    ids = _load_ids(path, eod, pad, stamp)
    if isinstance(ids, str):
        raise ConfigError(ids)
    return ids


@functools.lru_cache(maxsize=16)
def _load_ids(
    path: str, eod: str | None, pad: str | None, stamp: tuple[int, int] | None
) -> tuple[int, int, int] | str:
    """The ids, or the ConfigError's message (a tokenizer that is not here stays not here)."""
    from echo_megatron.config.data import TokenizerConfig
    from echo_megatron.data.tokenizer import load_tokenizer

    try:
        tok = load_tokenizer(TokenizerConfig(path=path, eod=eod, pad=pad))
    except ConfigError as e:
        return str(e)
    return tok.vocab_size, tok.eod, tok.pad
