"""One module per CLI command: ``add_arguments(parser)`` and ``run(args) -> int``.

``COMMANDS`` is the one list of them: the CLI builds its parser from it and ``submit`` checks the commands a
pipeline's stages run against it. Importing this package imports no command module (they load lazily).
"""

from __future__ import annotations

# command name -> (module under echo_megatron.commands, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "config": ("config", "print the resolved config of a recipe"),
    "params": ("params", "count a preset's parameters on the meta device"),
    "testbed": ("testbed", "generate the controlled three-format arithmetic testbed"),
    "tokenizer": ("tokenizer", "train or inspect a tokenizer"),
    "preprocess": ("preprocess", "tokenize a recipe's sources into megatron indexed datasets"),
    "mixture": ("mixture", "print the per-source table of a recipe's mixture"),
    "pretrain": ("pretrain", "pretrain a GPT model (single process, torchrun or srun)"),
    "generate": ("generate", "sample from a checkpoint"),
    "score": ("score", "score completions (format, answer, reward) from a JSONL file"),
    "rl": ("rl", "RL post-training: PPO, GRPO, REINFORCE++, Expert Iteration"),
    "eval": ("eval", "pass@1 / pass@k / maj@k per task and per output format"),
    "report": ("report", "HTML report and plots from run directories"),
    "export-hf": ("export_hf", "export a checkpoint to a HuggingFace transformers model"),
    "import-hf": ("import_hf", "import a HuggingFace transformers model (Llama, OLMo) as a run directory"),
    "demo": ("demo", "the whole study on the embedded testbed, on CPU, in minutes"),
    "submit": ("submit", "render and submit sbatch jobs for a recipe, pipeline or sweep"),
    "status": ("status", "show where each stage of a run directory is"),
    "plan": ("plan", "memory and time plan for a recipe on N nodes x G GPUs"),
    "sweep": ("sweep", "expand a grid into runs; --dry-run lists them with their cost"),
}
