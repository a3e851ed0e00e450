"""``echo-megatron tokenizer train|show RECIPE [k=v ...]``: train a small tokenizer on a recipe's sources, or
show the recipe's tokenizer (vocab size, special ids, hash, an example)."""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator

from echo_megatron.commands._common import load_from_args


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["train", "show"])
    parser.add_argument("recipe", help="recipe YAML file")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides")


def training_texts(cfg) -> Iterator[str]:
    """Prompts and solutions (apart, so that no token spans the question/solution boundary) of every source."""
    from echo_megatron.data.preprocess import documents_of_chunk, plan_sources, preflight

    plans = plan_sources(cfg)
    for plan in plans:
        preflight(plan, cfg.data.on_bad_record)
    for plan in plans:
        n = 0
        for record in plan.records():
            docs, _, _ = documents_of_chunk([record], plan.spec, plan.name, cfg.data.on_bad_record)
            for d in docs:
                if d.prompt:
                    yield d.prompt
                yield d.solution
                n += 1
            if plan.cfg.max_docs is not None and n >= plan.cfg.max_docs:
                break


def run(args: argparse.Namespace) -> int:
    from echo_megatron.config import ConfigError
    from echo_megatron.data.tokenizer import load_tokenizer, save_tokenizer, train_tokenizer

    cfg = load_from_args(args)
    tc = cfg.data.tokenizer
    if args.action == "train":
        out = tc.train_out or tc.path
        if not out:
            raise ConfigError("data.tokenizer.train_out (or data.tokenizer.path) must say where to write")
        t0 = time.perf_counter()
        backend = train_tokenizer(
            training_texts(cfg), tc.kind, tc.vocab_size, tc.min_frequency, tc.max_number
        )
        path = save_tokenizer(backend, out)
        print(
            f"trained {tc.kind} tokenizer: vocab {backend.get_vocab_size(with_added_tokens=True):,} "
            f"in {time.perf_counter() - t0:.1f}s -> {path}"
        )
        return 0
    tok = load_tokenizer(tc)
    print(
        f"{tok.path}: vocab_size {tok.vocab_size:,}, eod {tok.eod} {tok.token(tok.eod)!r}, "
        f"pad {tok.pad} {tok.token(tok.pad)!r}, hash {tok.hash}"
    )
    example = "Ana has 12 apples. She buys 7 more.\n\n12 + 7 = 19"
    ids = tok.encode(example)
    print(f"example: {len(ids)} tokens {[tok.token(i) for i in ids]}")
    return 0
