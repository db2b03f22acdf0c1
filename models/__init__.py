"""Model zoo. Importing this package registers every built-in architecture (explicit imports), then
every installed plugin (entry-point group ``nerve_bench.models``, see models/plugins.py).

Import order is registration order, which is the order of ``list_models()``: the built-in zoo in the
benchmark's default order, then the plugins' models.
"""

# The order below is the benchmark's default model order: keep isort away from it.
# isort: off
from models import unet  # noqa: F401
from models import smp_models  # noqa: F401
from models import attention_unet  # noqa: F401
from models import sk_unet  # noqa: F401
from models import trans_cg_unet  # noqa: F401
from models import empty  # noqa: F401
from models import nnunet  # noqa: F401 - optional extra: registered outside the default set

# isort: on
from models.plugins import load_plugins
from models.registry import (
    BUILTIN,
    ModelError,
    ModelInfo,
    check_kwargs,
    create,
    get_info,
    list_models,
    register,
    register_prefix,
)

load_plugins()

__all__ = [
    "BUILTIN",
    "ModelError",
    "ModelInfo",
    "check_kwargs",
    "create",
    "get_info",
    "list_models",
    "load_plugins",
    "register",
    "register_prefix",
]
