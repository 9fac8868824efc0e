"""lofi-bench: the pipeline behind the `lofi` command (data, fidelity, training, evaluation, tables)."""

__version__ = "0.1.0"
