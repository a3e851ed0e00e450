"""Format classifier: >= 99% on every labeled real sample and on the testbed / gsm8k3 renderings, robust to
fences, truncation and mixed outputs. Prints the confusion matrix (pytest -s, or -rP)."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import pytest

from echo_megatron.rewards import FORMATS, classify_format
from echo_megatron.rewards.formats import CODE, CODE_INTERP, EMPTY, NL, OTHER


def _jsonl(path: Path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def labeled_sets(data_dir: Path) -> dict[str, list[tuple[str, str]]]:
    """name -> [(text, true label)] from the shared files (labels by provenance) and the testbed renderers."""
    sft = data_dir / "sft_samples"
    sets = {
        "tinygsm_style": [
            (r["assistant"], CODE) for r in _jsonl(sft / "tinygsm_style_gpt41_sample1000.jsonl")
        ],
        # OMI1 rows without <llm-code> are plain natural-language solutions ending in \boxed{}
        "omi1": [
            (r["generated_solution"], CODE_INTERP if "<llm-code>" in r["generated_solution"] else NL)
            for r in _jsonl(sft / "openmathinstruct1_sample100.jsonl")
        ],
        "omi2": [(r["generated_solution"], NL) for r in _jsonl(sft / "openmathinstruct2_sample1000.jsonl")],
        "gsm8k": [(r["answer"], NL) for r in _jsonl(data_dir / "gsm8k" / "test.jsonl")]
        + [(r["answer"], NL) for r in _jsonl(data_dir / "gsm8k" / "train.jsonl")],
        "math500": [(r["solution"], NL) for r in _jsonl(data_dir / "math" / "math500_test.jsonl")],
    }
    return sets


def testbed_sets(data_dir: Path) -> dict[str, list[tuple[str, str]]]:
    """The testbed generator's three renderings of held-out problems, and gsm8k3's of GSM8K test problems."""
    from echo_megatron.config.data import TestbedConfig
    from echo_megatron.data.gsm8k3 import render
    from echo_megatron.data.testbed import generate

    _, test = generate(TestbedConfig(n_train=10, n_test=500, min_ops=2, max_ops=5, seed=3))
    tb = [(sol, fmt) for row in test for fmt, sol in row["solutions"].items()]
    g3 = []
    for r in _jsonl(data_dir / "gsm8k" / "test.jsonl")[:400]:
        sols = render(r["question"], r["answer"])
        if sols is not None:
            g3 += [(sol, fmt) for fmt, sol in sols.items()]
    return {"testbed": tb, "gsm8k3": g3}


def confusion(pairs: list[tuple[str, str]]) -> Counter:
    return Counter((truth, classify_format(text)) for text, truth in pairs)


def print_matrix(title: str, counts: Counter) -> None:
    truths = [f for f in FORMATS if any(t == f for t, _ in counts)]
    print(f"\n{title}: rows = true label, columns = predicted")
    print(f"{'':>12}" + "".join(f"{p:>12}" for p in FORMATS))
    for t in truths:
        print(f"{t:>12}" + "".join(f"{counts.get((t, p), 0):>12}" for p in FORMATS))


def test_real_samples_and_testbed_at_least_99_percent(data_dir):
    sets = {**labeled_sets(data_dir), **testbed_sets(data_dir)}
    total = Counter()
    for name, pairs in sets.items():
        counts = confusion(pairs)
        total += counts
        acc = sum(v for (t, p), v in counts.items() if t == p) / len(pairs)
        print_matrix(f"{name} ({len(pairs)} solutions, accuracy {acc:.2%})", counts)
        assert len(pairs) >= 100, name
        assert acc >= 0.99, (name, counts)
    print_matrix("all sets", total)
    assert set(sets["testbed"][i][1] for i in range(3)) == {CODE, CODE_INTERP, NL}


def test_truncated_testbed_generations_keep_their_format(data_dir):
    """A generation cut anywhere after its first 40% (a tiny model hitting max_new_tokens) keeps its label."""
    rng = random.Random(0)
    pairs = []
    for text, truth in testbed_sets(data_dir)["testbed"]:
        cut = rng.randint(int(0.4 * len(text)), len(text))
        pairs.append((text[:cut], truth))
    counts = confusion(pairs)
    print_matrix("truncated testbed", counts)
    acc = sum(v for (t, p), v in counts.items() if t == p) / len(pairs)
    assert acc >= 0.99, counts


@pytest.mark.parametrize(
    "text, label",
    [
        ("", EMPTY),
        ("   \n\t ", EMPTY),
        (None, EMPTY),
        # code: fenced, prose before the fence, cut off in the first tokens, garbled body
        ("```python\ndef simple_math_problem():\n    a = 3\n    return a\n```", CODE),
        ("Here is the program.\n```python\ndef simple_math_problem():\n    return 4\n```", CODE),
        ("def simple_ma", CODE),
        ("def simple_math_problem():\n    apples = 12\n    x = = 3", CODE),
        ("def solve():\n    return 5", CODE),
        ("def simple_math_problem():\n    # The answer is 5\n    return 5", CODE),
        # code_interp: cut before the first tag, tag without closing, an intro before the tag
        ("Let's use Python.\n<llm-co", CODE_INTERP),
        ("Let's use Python.\n<llm-code>\nx = 3\nprint(x", CODE_INTERP),
        (
            "We compute it.\n<llm-code>\nprint(2)\n</llm-code>\n<llm-code-output>\n2\n</llm-code-output>",
            CODE_INTERP,
        ),
        ("<llm-code>\ndef simple_math_problem():\n    return 1\n</llm-code>", CODE_INTERP),
        # nl: boxed, GSM8K ####, "answer is", truncated prose, nl with a runaway code continuation
        ("She has 3 + 4 = 7 apples.\nThe answer is \\boxed{7}.", NL),
        ("So 2 * 3 = 6.\n#### 6", NL),
        ("The final answer is 12.", NL),
        ("She has 19 + 4 = 23 apples.\nThe boxes hold 23 * 4", NL),
        ("Thus \\boxed{7}.\n\nQuestion: next\ndef simple_math_problem():\n    return 1", NL),
        (
            "We use a helper program:\n```\ndef count():\n    return 90\n```\nRunning it gives \\boxed{90}.",
            NL,
        ),
        # other: symbol soup, a bare number, code that is not one of the formats
        ("+ = ) ( 3 4 **", OTHER),
        ("42", OTHER),
        ("x = 5\nprint(x)", OTHER),
        ("import os\nos.system('ls')", OTHER),
        ("total = 5\nfor i in range(3):\n    total += i", OTHER),
        ("<llm-code-output>\n5\n</llm-code-output>", OTHER),
    ],
)
def test_rules(text, label):
    assert classify_format(text) == label


def test_never_raises_and_linear_on_hostile_text():
    rng = random.Random(1)
    alphabet = "ab \n\t{}\\$#<>/-=()`'\"0123456789" + "<llm-code>" + "def simple_math_problem\\boxed"
    for _ in range(300):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 400)))
        assert classify_format(text) in FORMATS
    for big in (" " * 200_000, "(" * 200_000, "def " * 50_000, "\\boxed{" * 50_000, "a" * 500_000):
        assert classify_format(big) in FORMATS
    assert classify_format(12345) == EMPTY  # not a string: treated as nothing
