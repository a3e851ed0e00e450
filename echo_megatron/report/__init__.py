"""Reports from run directories: per-run facts (``runs``), figures (``plots``), ``report.html`` (``html``)
and sweep grids (``sweep``). ``headline(run_dir)`` is the one-line summary the demo prints."""

from echo_megatron.report.runs import headline, load_run

__all__ = ["headline", "load_run"]
