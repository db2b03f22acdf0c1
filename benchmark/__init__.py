"""nerve-bench: benchmark runner, training/evaluation core and CLI."""

__version__ = "0.1.0"
