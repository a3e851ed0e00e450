"""Source formatters on the real samples, local readers (jsonl / json / parquet), and bad input (the real hub
layouts are in test_data_layouts.py)."""

from __future__ import annotations

import json

import pytest
from echo_testing import data_root, writable

from echo_megatron.config import ConfigError, load_config
from echo_megatron.data.preprocess import plan_sources, preprocess
from echo_megatron.data.records import DataError
from echo_megatron.data.sources import PROMPT_SEP, make_document

OLMO = "allenai_gpt-neox-olmo-dolma-v1_5.json"


def docs_of(source: str, path, type_: str | None = None):
    """(row, document or None) of every record of a local file or folder read as source ``source``."""
    overrides = [f"data.sources.{source}.path={path}"] + (
        [f"data.sources.{source}.type={type_}"] if type_ else []
    )
    (plan,) = plan_sources(load_config(None, overrides))
    return [(row, make_document(plan.spec, row, source, where)) for where, row in plan.records()]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_tinygsm_sample_becomes_question_and_unfenced_function(data_dir):
    docs = docs_of("tinygsm", data_dir / "sft_samples" / "tinygsm_style_gpt41_sample1000.jsonl")
    assert len(docs) == 1000
    for row, d in docs:
        assert d.prompt == row["user"].strip() + PROMPT_SEP
        assert "```" not in d.solution and "def simple_math_problem" in d.solution
        assert d.format == "code" and d.text == d.prompt + d.solution


def test_omi1_keeps_correct_solutions_and_labels_formats(data_dir, tmp_path):
    docs = docs_of("omi1", data_dir / "sft_samples" / "openmathinstruct1_sample100.jsonl")
    kept = [(r, d) for r, d in docs if d is not None]
    assert len(kept) == sum(r["is_correct"] for r, _ in docs)
    for row, d in kept:
        assert d.format == ("code_interp" if "<llm-code>" in row["generated_solution"] else "nl")
    wrong = write_jsonl(tmp_path / "w.jsonl", [dict(docs[0][0], is_correct=False)])
    assert docs_of("omi1", wrong)[0][1] is None


def test_omi2_gsm8k_metamathqa_and_plain_text(data_dir, tmp_path):
    row, d = docs_of("omi2", data_dir / "sft_samples" / "openmathinstruct2_sample1000.jsonl")[0]
    assert d.prompt == row["problem"].strip() + PROMPT_SEP and d.solution == row["generated_solution"]
    assert d.format == "nl"
    row, d = docs_of("gsm8k", data_dir / "gsm8k" / "train.jsonl")[0]
    assert "<<" not in d.solution and d.solution.endswith("The answer is \\boxed{72}.")
    mm = write_jsonl(
        tmp_path / "mm.jsonl", [{"query": "What is 2+3?", "response": "2+3=5. The answer is: 5"}]
    )
    assert docs_of("metamathqa", mm)[0][1].text == "What is 2+3?\n\n2+3=5. The answer is: 5"
    web = write_jsonl(tmp_path / "web.jsonl", [{"text": "Let $x^2 = 4$. Then x = 2."}])
    for source in ("finemath", "algebraic_stack"):
        d = docs_of(source, web)[0][1]
        assert (d.prompt, d.solution, d.format) == ("", "Let $x^2 = 4$. Then x = 2.", "other")


def test_json_and_parquet_read_like_jsonl(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"question": f"q{i}", "solution": f"s{i}", "format": "nl", "answer": i} for i in range(5)]
    write_jsonl(tmp_path / "a.jsonl", rows)
    (tmp_path / "b.json").write_text(json.dumps(rows))
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "c.parquet")
    texts = {
        f: [d.text for _, d in docs_of("tb", tmp_path / f, "testbed")]
        for f in ("a.jsonl", "b.json", "c.parquet")
    }
    assert texts["a.jsonl"] == texts["b.json"] == texts["c.parquet"] == [f"q{i}\n\ns{i}" for i in range(5)]
    # a directory reads its files in name order
    assert len(docs_of("tb", tmp_path, "testbed")) == 15


def cfg_with(tmp_path, sources: dict, *overrides: str):
    lines = [f"data.indexed_dir={tmp_path / 'idx'}", "data.num_workers=1"]
    for name, kv in sources.items():
        lines += [f"data.sources.{name}.{k}={v}" for k, v in kv.items()]
    tok = data_root() / "tokenizers" / OLMO
    return load_config(None, [f"data.tokenizer.path={tok}", *lines, *overrides])


def test_malformed_line_names_file_and_line_or_is_skipped_and_counted(tmp_path):
    good = {"question": "q", "solution": "s"}
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(good) + "\n" + '{"question": "q", "solution": \n' + json.dumps(good) + "\n")
    cfg = cfg_with(tmp_path, {"tb": {"type": "testbed", "path": path}})
    with pytest.raises(DataError, match=r"bad\.jsonl:2: malformed JSON line"):
        preprocess(cfg, log=lambda s: None)
    cfg = writable(cfg)
    cfg.data.on_bad_record = "skip"
    (m,), _ = preprocess(cfg, log=lambda s: None)
    assert (
        m["docs"] == 2 and m["bad_records"]["count"] == 1 and "bad.jsonl:2" in m["bad_records"]["examples"][0]
    )


def test_missing_field_names_field_and_source(tmp_path):
    path = write_jsonl(tmp_path / "x.jsonl", [{"problem": "q", "answer": "1"}])
    cfg = cfg_with(tmp_path, {"omi2": {"path": path}})
    with pytest.raises(DataError, match=r"x\.jsonl\[0\]: source 'omi2': missing field 'generated_solution'"):
        preprocess(cfg, log=lambda s: None)


def test_empty_or_unknown_sources_fail_before_any_tokenizing(tmp_path):
    ok = write_jsonl(tmp_path / "ok.jsonl", [{"question": "q", "solution": "s"}])
    empty = write_jsonl(
        tmp_path / "empty.jsonl", [{"question": "q", "generated_solution": "s", "is_correct": False}]
    )
    cfg = cfg_with(tmp_path, {"a": {"type": "testbed", "path": ok}, "omi1": {"path": empty}})
    with pytest.raises(DataError, match=r"data\.sources\.omi1: source is empty"):
        preprocess(cfg, log=lambda s: None)
    assert not list((tmp_path / "idx").glob("a/shard_*"))  # the good source, listed first, was not tokenized
    cfg = cfg_with(tmp_path, {"a": {"type": "testbed", "path": ok}, "wiki": {"path": ok}})
    with pytest.raises(ConfigError, match=r"unknown source type 'wiki' \(known: tinygsm, omi1"):
        preprocess(cfg, log=lambda s: None)
    cfg = cfg_with(tmp_path, {"a": {"type": "testbed", "path": tmp_path / "nope.jsonl"}})
    with pytest.raises(DataError, match="nope.jsonl does not exist"):
        preprocess(cfg, log=lambda s: None)
    assert not list((tmp_path / "idx").glob("a/shard_*"))


def test_cli_maps_data_errors_to_exit_status_2(tmp_path, capsys):
    from echo_megatron.cli import main

    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"data:\n  tokenizer: {{path: /nonexistent/tok.json}}\n  sources:\n    bogus: {{path: {tmp_path}}}\n"
    )
    assert main(["preprocess", str(recipe)]) == 2
    assert "unknown source type 'bogus'" in capsys.readouterr().err
