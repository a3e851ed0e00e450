"""Tokenizers: load any HF tokenizer (``tokenizers`` JSON file, directory, hub name) and train small ones.

``load_tokenizer(cfg.data.tokenizer)`` returns a :class:`Tokenizer` with what the trainer and the dataset
builders need: ``vocab_size`` (before padding), ``eod`` (appended after every document), ``pad``,
``encode``/``decode``, ``path`` and a content ``hash``. It also has megatron's tokenizer surface
(``unique_identifiers``, ``eos``, ``tokenize``/``detokenize``), so it can be the ``tokenizer`` of a
``GPTDatasetConfig`` directly. Texts are always encoded without special tokens: no BOS, and the EOD is appended by
whoever builds a document.

The paper's tokenizer, Llama-2's (``meta-llama/Llama-2-7b-hf``: SentencePiece BPE, 32,000 tokens, digits split,
byte fallback, ``</s>`` = 2 ends every document), ships with the package as a ``tokenizers`` JSON converted from
its ``tokenizer.model`` (``echo_megatron/data/spm.py``); the hub name resolves to it offline.

Two kinds can be trained with the ``tokenizers`` library (``echo-megatron tokenizer train``):

* ``bpe``: byte-level BPE with the GPT-2 pre-tokenizer regex: general, lossless.
* ``numbers``: byte-level BPE whose pre-tokenizer isolates every run of digits and every newline, so merges may
  span words within a line (whole template phrases become tokens) but never a number; afterwards every integer
  ``0..max_number`` is made a single token by appending merges. Lossless (byte level), and on the testbed a
  document costs ~30 tokens instead of ~100 word pieces or ~280 characters.

Texts are trained as separate prompt and solution strings, so no learned token spans the ``"\\n\\n"`` between
question and solution: tokenizing ``prompt`` and ``solution`` apart (as preprocessing and RL do) gives the
same pieces a model sees at inference.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
from collections.abc import Iterable
from typing import Any

from echo_megatron.config import ConfigError

EOD_CANDIDATES = ("<|endoftext|>", "</s>", "<eos>", "<|eos|>", "<|eod|>", "[EOS]", "<|end_of_text|>")
PAD_CANDIDATES = ("<|pad|>", "<|padding|>", "<pad>", "[PAD]")
SPECIAL_TOKENS = ["<|endoftext|>", "<|pad|>"]  # ids 0 and 1 of every tokenizer trained here
KINDS = ("bpe", "numbers")


# Hub names whose tokenizer ships with the package (assets/tokenizers/, licences beside each file).
SHIPPED_TOKENIZERS = {
    "meta-llama/Llama-2-7b-hf": "tokenizers/llama2/tokenizer.json.gz",  # the paper's (from tokenizer.model)
}
JSON_SUFFIXES = (".json", ".json.gz")


def _offline_tokenizer_dirs() -> list[str]:
    """Where a hub name ``org/name`` is first looked for as ``org_name.json`` (or ``.json.gz``, offline copies):
    ``$ECHO_TOKENIZER_DIR``, then the tokenizers shipped with the package."""
    from echo_megatron.assets import asset

    dirs = [os.environ["ECHO_TOKENIZER_DIR"]] if os.environ.get("ECHO_TOKENIZER_DIR") else []
    return [*dirs, str(asset("tokenizers"))]


def resolve_tokenizer_path(path: str) -> str:
    """A local tokenizer file for ``path`` (file, directory, or hub name with an offline copy), else ``path``.

    A hub name ``org/name`` resolves to ``org_name.json[.gz]`` in ``$ECHO_TOKENIZER_DIR`` or the shipped
    tokenizers, or to the shipped copy listed in :data:`SHIPPED_TOKENIZERS` (``meta-llama/Llama-2-7b-hf``).
    """
    from echo_megatron.assets import asset

    if os.path.isfile(path):
        return path
    if os.path.isdir(path):
        for name in ("tokenizer.json", "tokenizer.json.gz"):
            candidate = os.path.join(path, name)
            if os.path.isfile(candidate):
                return candidate
        raise ConfigError(f"data.tokenizer.path: directory {path} has no tokenizer.json")
    if "/" in path and not path.endswith(JSON_SUFFIXES):
        for d in _offline_tokenizer_dirs():
            for suffix in JSON_SUFFIXES:
                candidate = os.path.join(d, path.replace("/", "_") + suffix)
                if os.path.isfile(candidate):
                    return candidate
        if path in SHIPPED_TOKENIZERS and asset(SHIPPED_TOKENIZERS[path]).is_file():
            return str(asset(SHIPPED_TOKENIZERS[path]))
    return path


def _read_backend(local: str):
    """A ``tokenizers.Tokenizer`` from a JSON file (``.gz`` compressed or not) or a SentencePiece ``.model``."""
    from tokenizers import Tokenizer as HFTokenizer

    if local.endswith(".model"):
        from echo_megatron.data.spm import convert

        return convert(local)
    try:
        if local.endswith(".gz"):
            with gzip.open(local, "rt", encoding="utf-8") as f:
                return HFTokenizer.from_str(f.read())
        return HFTokenizer.from_file(local)
    except Exception as e:
        raise ConfigError(f"data.tokenizer.path: cannot read {local} as a tokenizers JSON file: {e}") from e


class Tokenizer:
    """A HF ``tokenizers.Tokenizer`` plus the ids the trainer needs. Picklable (rebuilt from its JSON)."""

    def __init__(self, backend: Any, path: str, eod: str | None = None, pad: str | None = None) -> None:
        self._backend = backend
        self.path = path
        self._json = backend.to_str()
        self.hash = hashlib.sha256(self._json.encode("utf-8")).hexdigest()[:16]
        self.vocab_size: int = backend.get_vocab_size(with_added_tokens=True)
        self.eod: int = self._special_id(eod, EOD_CANDIDATES, "eod")
        pad_id = self._special_id(pad, PAD_CANDIDATES, "pad", required=False)
        self.pad: int = self.eod if pad_id is None else pad_id

    def _special_id(self, name: str | None, candidates: tuple[str, ...], what: str, required: bool = True):
        names = (name,) if name else candidates
        for n in names:
            i = self._backend.token_to_id(n)
            if i is not None:
                return int(i)
        if name or required:
            raise ConfigError(
                f"tokenizer {self.path}: no {what} token {' or '.join(names)}; set data.tokenizer.{what}"
            )
        return None

    # -- the trainer's surface -------------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        return self._backend.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self._backend.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        return self._backend.decode(list(ids), skip_special_tokens=False)

    def token(self, i: int) -> str | None:
        return self._backend.id_to_token(i)

    # -- megatron's tokenizer surface (GPTDatasetConfig.tokenizer) ---------------------------------------------
    @property
    def eos(self) -> int:
        return self.eod

    def tokenize(self, text: str) -> list[int]:
        return self.encode(text)

    def detokenize(self, ids: Iterable[int]) -> str:
        return self.decode(ids)

    @property
    def unique_identifiers(self) -> dict[str, Any]:
        """What megatron hashes into its dataset-index cache names."""
        return {"class": "Tokenizer", "hash": self.hash, "eod": self.eod, "pad": self.pad}

    def __getstate__(self) -> dict[str, Any]:
        return {"json": self._json, "path": self.path, "eod": self.eod, "pad": self.pad}

    def __setstate__(self, state: dict[str, Any]) -> None:
        from tokenizers import Tokenizer as HFTokenizer

        backend = HFTokenizer.from_str(state["json"])
        self._backend, self.path, self._json = backend, state["path"], state["json"]
        self.hash = hashlib.sha256(self._json.encode("utf-8")).hexdigest()[:16]
        self.vocab_size = backend.get_vocab_size(with_added_tokens=True)
        self.eod, self.pad = state["eod"], state["pad"]

    def __repr__(self) -> str:
        return f"Tokenizer({self.path!r}, vocab_size={self.vocab_size}, eod={self.eod}, pad={self.pad})"


def load_tokenizer(cfg_tokenizer: Any) -> Tokenizer:
    """The tokenizer of ``cfg.data.tokenizer`` (a TokenizerConfig or anything with ``path``/``eod``/``pad``).

    ``path`` may be a ``tokenizers`` JSON file (``.json`` or ``.json.gz``), a directory holding
    ``tokenizer.json``, a SentencePiece BPE ``.model`` (converted on load: needs ``sentencepiece``), or a hub
    name. A hub name is first looked for offline (:func:`resolve_tokenizer_path`: ``$ECHO_TOKENIZER_DIR``, the
    package's shipped tokenizers, ``meta-llama/Llama-2-7b-hf`` included); else ``transformers.AutoTokenizer``
    loads it.
    """
    path = getattr(cfg_tokenizer, "path", None)
    if not path:
        raise ConfigError(
            "data.tokenizer.path is not set (a tokenizers JSON file, a directory or a hub name)"
        )
    eod, pad = getattr(cfg_tokenizer, "eod", None), getattr(cfg_tokenizer, "pad", None)
    local = resolve_tokenizer_path(str(path))
    if os.path.isfile(local):
        return Tokenizer(_read_backend(local), local, eod, pad)
    try:
        from transformers import AutoTokenizer

        hf = AutoTokenizer.from_pretrained(local)
    except Exception as e:
        raise ConfigError(
            f"data.tokenizer.path: '{path}' is neither a local file/directory nor a loadable hub name ({e}); "
            "train one with `echo-megatron tokenizer train RECIPE`"
        ) from e
    backend = getattr(hf, "backend_tokenizer", None)
    if backend is None:
        raise ConfigError(f"data.tokenizer.path: hub tokenizer '{path}' has no fast (tokenizers) backend")
    return Tokenizer(backend, local, eod or hf.eos_token, pad or hf.pad_token)


# -- training ------------------------------------------------------------------------------------------------
def _backend_for(kind: str):
    from tokenizers import Regex, decoders, models, pre_tokenizers
    from tokenizers import Tokenizer as HFTokenizer

    tok = HFTokenizer(models.BPE())
    if kind == "bpe":
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    elif kind == "numbers":
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(r"\d+|\n"), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    else:
        raise ConfigError(f"data.tokenizer.kind: unknown kind '{kind}' (known: {', '.join(KINDS)})")
    tok.decoder = decoders.ByteLevel()
    return tok


def _add_number_tokens(backend: Any, max_number: int) -> Any:
    """Append BPE merges until every integer 0..max_number encodes to exactly one token.

    Digit runs are isolated by the pre-tokenizer, so merges between digit tokens never touch other text;
    each round merges the first two pieces of every number still split (ranks after all trained merges).
    """
    from tokenizers import Tokenizer as HFTokenizer

    numbers = [str(n) for n in range(max_number + 1)]
    for _ in range(len(str(max_number)) + 1):
        split = [(s, backend.encode(s).tokens) for s in numbers]
        split = [(s, t) for s, t in split if len(t) > 1]
        if not split:
            return backend
        state = json.loads(backend.to_str())
        vocab, merges = state["model"]["vocab"], state["model"]["merges"]
        next_id = max(vocab.values()) + 1
        for _, toks in split:
            a, b = toks[0], toks[1]
            if a + b not in vocab:
                vocab[a + b] = next_id
                next_id += 1
                merges.append([a, b])
        backend = HFTokenizer.from_str(json.dumps(state))
    raise RuntimeError("could not make every integer a single token")


def train_tokenizer(
    texts: Iterable[str],
    kind: str = "bpe",
    vocab_size: int = 4096,
    min_frequency: int = 2,
    max_number: int = 999,
) -> Any:
    """A trained HF ``tokenizers.Tokenizer`` (ids 0/1 = ``<|endoftext|>``/``<|pad|>``). Deterministic."""
    from tokenizers import pre_tokenizers, trainers

    backend = _backend_for(kind)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer)
    if kind == "numbers":
        backend = _add_number_tokens(backend, max_number)
    return backend


def save_tokenizer(backend: Any, path: str) -> str:
    """Write ``backend`` as a ``tokenizers`` JSON file (``path`` may be a directory) and return the file path."""
    if path.endswith(os.sep) or os.path.isdir(path) or not path.endswith(".json"):
        path = os.path.join(path, "tokenizer.json")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    backend.save(tmp, pretty=False)
    os.replace(tmp, path)
    return path
