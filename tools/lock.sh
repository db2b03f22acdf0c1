#!/usr/bin/env bash
# Regenerate requirements/constraints.txt from .venv (after a deliberate upgrade).
set -euo pipefail
VENV=${VENV:-.venv}
{
  echo "# Known-good lock for nerve-bench (CPU dev/CI machines). Used as pip constraints by 'make install'."
  echo "# Regenerate with 'make lock' after a deliberate upgrade; keep torch pinned (unpinned smp/timm pull CUDA torch)."
  "$VENV/bin/python" -m pip freeze --exclude-editable | grep -v -E '^(pip|setuptools|wheel)==' | sed -E 's/^(torch==[0-9.]+)\+cpu/\1/'
} > requirements/constraints.txt
echo "lock: wrote requirements/constraints.txt"
