"""Example nerve-bench model plugin (see model.py and docs/adding-a-model.md in nerve-bench)."""
