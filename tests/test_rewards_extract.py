"""Answer extraction and equivalence, with the gold self-checks on the shared real data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from echo_megatron.rewards.equivalence import (
    answers_equal,
    math_verify_equal,
    numeric_equal,
    parse_number,
)
from echo_megatron.rewards.extract import (
    answer_phrase,
    code_program,
    gold_answer,
    gsm8k_final,
    last_boxed,
    last_number,
    llm_code_blocks,
    nl_answer,
)


def _jsonl(path: Path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("so \\boxed{42}.", "42"),
        (
            "\\boxed{\\frac{1}{2}} then \\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}",
            "\\left( 3, \\frac{\\pi}{2} \\right)",
        ),
        ("\\boxed{\\{1, 2\\}}", "\\{1, 2\\}"),  # escaped braces do not count
        ("\\boxed{x^{2^{3}}} ok", "x^{2^{3}}"),
        ("\\boxed 5 apples", "5"),
        ("\\fbox{7}", "7"),
        ("\\boxed{3} and a truncated \\boxed{4", "3"),  # the last *complete* box
        ("no box here", None),
        ("\\boxed{", None),
    ],
)
def test_last_boxed(text, expected):
    assert last_boxed(text) == expected


def test_nl_answer_rule_order_and_fallback():
    assert gsm8k_final("a\n#### 1,000") == "1,000"
    assert answer_phrase("Thus the answer is $12$.") == "12"
    assert nl_answer("#### 5 then \\boxed{6}") == "6"  # boxed first
    assert nl_answer("x 3 y\n#### 5") == "5"
    assert nl_answer("The answer is 8.\nthen 9") == "8"
    assert nl_answer("first 3 then 17 apples") == "17"
    assert nl_answer("first 3 then 17 apples", last_number_fallback=False) is None
    assert last_number("costs $1,234.50 and -3") == "-3"
    assert nl_answer("") is None


def test_code_extraction():
    fenced = "Here:\n```python\nimport math\ndef simple_math_problem():\n    return 3\n```\nDone."
    assert code_program(fenced) == "import math\ndef simple_math_problem():\n    return 3\n"
    bare = "Sure thing.\nimport math\n\ndef simple_math_problem():\n    return 3"
    assert code_program(bare).startswith("import math\n")
    text = (
        "Let's use Python.\n<llm-code>\na = 2\n</llm-code>\n<llm-code-output>\n2\n</llm-code-output>\n"
        "<llm-code>\nprint(a * 3)\n</llm-code>\n<llm-code-output>\n999\n</llm-code-output>\n\\boxed{999}"
    )
    assert llm_code_blocks(text) == ["a = 2", "print(a * 3)"]
    assert llm_code_blocks("<llm-code>\nx = 1\nprint(x") == ["x = 1\nprint(x"]  # truncated block
    assert llm_code_blocks("no code") == []


@pytest.mark.parametrize(
    "text, value",
    [
        ("1,000", 1000.0),
        ("$1,000.00", 1000.0),
        ("240 dollars", 240.0),
        ("\\$5", 5.0),
        ("5.0", 5.0),
        ("x = 5", 5.0),
        ("\\frac{3}{4}", 0.75),
        ("-\\dfrac{1}{2}", -0.5),
        ("3/4", 0.75),
        ("50\\%", 50.0),
        ("025", 25.0),
        ("27.0", 27.0),
        ("1{,}000", 1000.0),
        ("\\text{5 apples}", 5.0),
        ("\u22127", -7.0),
        ("10^3", None),
        ("2\\sqrt{2}", None),
        ("9!", None),
        ("1 and 2", None),
        ("abc", None),
        ("9" * 200, None),  # too long to be an answer
    ],
)
def test_parse_number(text, value):
    assert parse_number(text) == value


def test_numeric_tolerance():
    assert numeric_equal("19.999999999999996", "20")
    assert numeric_equal("1,000", "1000.0")
    assert not numeric_equal("12346", "12345")  # rel_tol 1e-6, not 1e-4
    assert not numeric_equal("0.5", "0.6")
    assert numeric_equal("abc", "5") is None
    assert numeric_equal("33.3333", "33.33", rel_tol=1e-3)
    assert parse_number("5x", strict=True) is None and parse_number("5x") == 5.0


@pytest.mark.parametrize(
    "gold, pred, equal",
    [
        ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3, \\pi/2)", True),
        ("\\frac{14}{3}", "\\dfrac{28}{6}", True),
        ("(x+1)^2", "x^2+2x+1", True),
        ("\\text{(C)}", "C", True),
        ("\\frac{\\sqrt{3}}{2}", "\\sqrt{3}/2", True),
        ("[2,5)", "[2, 5)", True),
        ("\\{1,2\\}", "\\{2,1\\}", True),
        ("\\frac{14}{3}", "4.6667", False),
        ("x^2", "x^3", False),
        ("362880", "9!", True),
    ],
)
def test_math_verify(gold, pred, equal):
    assert math_verify_equal(gold, pred) is equal


def test_answers_equal_routes_math_to_math_verify_only_when_needed():
    assert answers_equal("0.5", "\\frac{1}{2}", "math") is True  # both plain numbers
    assert answers_equal("\\left(1,2\\right)", "(1, 2)", "math") is True  # normalised strings
    assert answers_equal("9!", "362880", "math") is None  # math-verify decides
    assert answers_equal("5x", "5", "math") is None
    assert answers_equal("5 apples", "5", "gsm8k") is True
    assert answers_equal("five", "5", "gsm8k") is False


def test_gold_math500_boxed_equals_answer(data_dir):
    rows = _jsonl(data_dir / "math" / "math500_test.jsonl")
    ok = 0
    for r in rows:
        pred, gold = last_boxed(r["solution"]), gold_answer(r["answer"], "math")
        eq = answers_equal(pred, gold, "math")
        ok += eq if eq is not None else math_verify_equal(gold, pred)
    print(f"MATH-500: boxed answer of the solution == answer field for {ok}/{len(rows)}")
    assert ok / len(rows) >= 0.99


def test_gold_gsm8k_solutions_equal_their_answers(data_dir):
    rows = _jsonl(data_dir / "gsm8k" / "test.jsonl") + _jsonl(data_dir / "gsm8k" / "train.jsonl")
    finals = [r["answer"].rsplit("####", 1)[1].strip() for r in rows]
    ok = sum(
        answers_equal(nl_answer(r["answer"]), gold_answer(f, "gsm8k"), "gsm8k") is True
        for r, f in zip(rows, finals)
    )
    assert ok == len(rows)
    # the reference may also be the whole worked solution
    assert [gold_answer(r["answer"], "gsm8k") for r in rows[:50]] == finals[:50]


def test_gold_aime_amc(data_dir):
    aime = _jsonl(data_dir / "competition" / "aime24.jsonl")
    amc = _jsonl(data_dir / "competition" / "amc23.jsonl")
    assert len(aime) == 30 and len(amc) == 40
    for r in aime:  # answers are zero-padded strings ("025"); a model writes \boxed{25}
        assert answers_equal(str(int(r["answer"])), gold_answer(r["answer"], "aime"), "aime") is True
        assert answers_equal(str(int(r["answer"]) + 1), gold_answer(r["answer"], "aime"), "aime") is False
    for r in amc:  # answers are floats (27.0); references may arrive as numbers
        gold = gold_answer(r["answer"], "amc")
        assert answers_equal(f"{r['answer']:g}", gold, "amc") is True
        assert answers_equal(nl_answer(f"so \\boxed{{{r['answer']:g}}}"), gold, "amc") is True
    assert gold_answer(None, "gsm8k") is None and gold_answer("  ", "gsm8k") is None
    assert gold_answer("text \\boxed{\\frac{1}{2}}", "math") == "\\frac{1}{2}"


@pytest.mark.parametrize(
    "pred, gold, task, equal",
    [
        # integer golds: exact; a float print-out (> 12 significant digits) is rounded to 12 first
        ("1500001", "1500000", "gsm8k", False),
        ("12345679", "12345678", "gsm8k", False),
        ("1500000.0000001", "1500000", "gsm8k", True),
        ("1500000.4", "1500000", "gsm8k", False),
        ("19.999999999999996", "20", "gsm8k", True),
        ("20.0000001", "20", "gsm8k", False),
        ("27", "27.0", "amc", True),  # AMC stores integer answers as floats
        ("4.2e1", "42", "gsm8k", True),
        ("-0", "0", "gsm8k", True),
        # decimal golds: to the gold's precision (half a unit of its last digit)
        ("33.3333", "33.33", "gsm8k", True),
        ("33.3", "33.33", "gsm8k", False),
        ("0.3", "0.30", "gsm8k", True),
        ("0.36", "0.3", "gsm8k", False),
        ("0.30000000000000004", "0.3", "gsm8k", True),
        # fraction golds: rel_tol (1e-6)
        ("0.3333333333333333", "1/3", "gsm8k", True),
        ("0.333", "1/3", "gsm8k", False),
        ("0.75", "\\frac{3}{4}", "math", True),
        # finite numbers only
        ("1e309", "2e308", "gsm8k", False),
        ("inf", "1e308", "gsm8k", False),
        ("nan", "0", "gsm8k", False),
        ("1e-99999999", "0", "gsm8k", False),
        # percent: dropped on the numeric tasks (their golds are bare numbers), a division by 100 on math
        ("25%", "25", "gsm8k", True),
        ("25\\%", "25", "testbed", True),
        ("2\\%", "2", "math", False),
        ("2\\%", "0.02", "math", True),
        ("2%", "2\\%", "math", True),
        # units, currency, degrees: unit words only on the numeric tasks; $ and degrees on both
        ("240 dollars", "240", "gsm8k", True),
        ("$18.90", "\\$18.90", "math", True),
        ("90^\\circ", "90", "math", True),
        ("5 apples", "5", "gsm8k", True),
    ],
)
def test_number_rules(pred, gold, task, equal):
    """The rules of equivalence.py's docstring, one row each (math rows that are no plain numbers would go on to
    the string match and math-verify)."""
    assert answers_equal(pred, gold, task) is equal, (pred, gold, task)


def test_units_on_math_are_left_to_math_verify():
    assert answers_equal("5 cm", "5", "math") is None and parse_number("5 cm", strict=True) is None
