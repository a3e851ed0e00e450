"""A SentencePiece BPE model (Llama-2's ``tokenizer.model``) as a HF ``tokenizers`` JSON, converted once.

The paper's models use Llama-2's tokenizer through HF ``tokenizers`` (datatrove's ``DocumentTokenizer`` and
OpenRLHF load ``meta-llama/Llama-2-7b-hf``). The package ships that tokenizer as
``assets/tokenizers/llama2/tokenizer.json.gz``, made from the shipped ``tokenizer.model`` by this module
(``python -m echo_megatron.data.spm MODEL OUT.json.gz``), so loading it needs neither ``sentencepiece`` nor
``protobuf``; ``tests/test_tokenizer_llama2.py`` re-runs the conversion (byte-identical output) and checks
that the JSON encodes real text to the same ids as the SentencePiece library.

Why the layout below is SentencePiece's BPE encoder:

* SentencePiece BPE repeatedly merges the adjacent pair whose concatenation is the vocabulary piece of the
  highest score. A HF ``BPE`` model applies merges by rank, so the merges are every split ``(l, r)`` of every
  normal piece ``p = l + r`` with both halves in the vocabulary, ranked by ``p``'s score (highest first). Llama's
  trainer split digits (``split_digits``) and never made multi-digit pieces, so numbers stay one token per digit.
* Normalisation is the identity with a dummy prefix: ``"▁"`` prepended, spaces replaced by ``"▁"`` (the model's
  ``normalizer_spec``: ``identity``, ``add_dummy_prefix``, no ``remove_extra_whitespaces``).
* Characters outside the vocabulary fall back to their UTF-8 bytes (``<0x..>`` pieces, ``byte_fallback``).
* ``<unk>``, ``<s>``, ``</s>`` are special added tokens (ids 0, 1, 2), as in the hub's ``tokenizer.json``; like
  the HF tokenizer the paper used (and unlike the SentencePiece library), a literal ``"</s>"`` in a text encodes
  as the end-of-sequence id. The post-processor adds ``<s>`` only when asked for special tokens; echo-megatron
  always encodes with ``add_special_tokens=False`` (no BOS, as in the paper's pretraining documents).
"""

from __future__ import annotations

import gzip
import os
import sys
from typing import Any

from echo_megatron.config import ConfigError

# SentencePiece piece types (sentencepiece_model.proto): NORMAL 1, UNKNOWN 2, CONTROL 3, USER_DEFINED 4, BYTE 6
NORMAL, UNKNOWN, CONTROL, BYTE = 1, 2, 3, 6
SPACE = "\u2581"  # "▁", SentencePiece's whitespace symbol


def bpe_merges(pieces: list[tuple[str, float, int]]) -> list[tuple[str, str]]:
    """HF BPE merges that reproduce SentencePiece's BPE on ``pieces`` = [(piece, score, type)] in id order.

    Every split (l, r) of a normal piece p = l + r whose halves are both pieces is a merge; merges are ranked by
    the score of p, highest first (ties: the ids of l, then r), which is the order SentencePiece merges in.
    """
    ids = {p: i for i, (p, _, _) in enumerate(pieces)}
    ranked = []
    for piece, score, kind in pieces:
        if kind != NORMAL:
            continue
        for k in range(1, len(piece)):
            left, right = piece[:k], piece[k:]
            if left in ids and right in ids:
                ranked.append((-score, ids[left], ids[right], left, right))
    ranked.sort()
    return [(left, right) for *_, left, right in ranked]


def _read_model(path: str) -> Any:
    try:
        from sentencepiece import sentencepiece_model_pb2
    except ImportError as e:
        raise ConfigError(
            f"{path}: converting a SentencePiece model needs the sentencepiece package (pip install sentencepiece)"
        ) from e
    model = sentencepiece_model_pb2.ModelProto()
    with open(path, "rb") as f:
        model.ParseFromString(f.read())
    return model


def convert(path: str) -> Any:
    """The HF ``tokenizers.Tokenizer`` of the SentencePiece BPE model at ``path`` (Llama-2's layout only)."""
    from tokenizers import AddedToken, Tokenizer, decoders, normalizers, processors
    from tokenizers.models import BPE

    model = _read_model(path)
    t, n = model.trainer_spec, model.normalizer_spec
    unsupported = [
        what
        for what, bad in (
            ("model_type is not BPE", t.model_type != 2),
            ("no byte_fallback", not t.byte_fallback),
            ("treat_whitespace_as_suffix", t.treat_whitespace_as_suffix),
            (f"normalizer '{n.name}' is not identity", n.name != "identity"),
            ("no add_dummy_prefix", not n.add_dummy_prefix),
            ("remove_extra_whitespaces", n.remove_extra_whitespaces),
        )
        if bad
    ]
    if unsupported:
        raise ConfigError(f"{path}: unsupported SentencePiece model ({', '.join(unsupported)})")
    pieces = [(p.piece, p.score, p.type) for p in model.pieces]
    vocab = {piece: i for i, (piece, _, _) in enumerate(pieces)}
    tok = Tokenizer(BPE(vocab, bpe_merges(pieces), unk_token=t.unk_piece, fuse_unk=True, byte_fallback=True))
    tok.add_special_tokens(
        [AddedToken(p, normalized=False, special=True) for p, _, k in pieces if k in (UNKNOWN, CONTROL)]
    )
    tok.normalizer = normalizers.Sequence([normalizers.Prepend(SPACE), normalizers.Replace(" ", SPACE)])
    tok.decoder = decoders.Sequence(
        [decoders.Replace(SPACE, " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    bos = t.bos_piece
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos}:0 $A:0", pair=f"{bos}:0 $A:0 {bos}:1 $B:1", special_tokens=[(bos, vocab[bos])]
    )
    return tok


def write_json_gz(tok: Any, out: str) -> str:
    """``tok`` as a gzip-compressed ``tokenizers`` JSON file, byte-identical for identical input (no mtime)."""
    data = tok.to_str(pretty=False).encode("utf-8")
    tmp = out + ".tmp"
    with open(tmp, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as f:
        f.write(data)
    os.replace(tmp, out)
    return out


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m echo_megatron.data.spm TOKENIZER.model OUT.json.gz", file=sys.stderr)
        return 2
    tok = convert(args[0])
    print(f"{write_json_gz(tok, args[1])}: {tok.get_vocab_size(with_added_tokens=True)} tokens")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
