"""Model zoo. Importing this package registers every architecture (explicit imports, no discovery).

Import order is registration order, which is the order of ``list_models()`` (the default set).
"""

# The order below is the benchmark's default model order: keep isort away from it.
# isort: off
from models import unet  # noqa: F401
from models import smp_models  # noqa: F401
from models import attention_unet  # noqa: F401
from models import sk_unet  # noqa: F401
from models import trans_cg_unet  # noqa: F401
from models import empty  # noqa: F401

# isort: on
from models.registry import ModelError, create, get_info, list_models, register, register_prefix

__all__ = ["ModelError", "create", "get_info", "list_models", "register", "register_prefix"]
