"""The output-format labels used everywhere: testbed, rewards, RL metrics, eval and reports."""

from __future__ import annotations

CODE = "code"  # TinyGSM-style Python function: def simple_math_problem(): ... return result
CODE_INTERP = "code_interp"  # OpenMathInstruct-1 style: <llm-code> ... </llm-code> + <llm-code-output>
NL = "nl"  # OpenMathInstruct-2 style natural language ending in \boxed{} or a final answer
OTHER = "other"
EMPTY = "empty"

FORMATS: tuple[str, ...] = (CODE, CODE_INTERP, NL, OTHER, EMPTY)
SOLUTION_FORMATS: tuple[str, ...] = (CODE, CODE_INTERP, NL)
