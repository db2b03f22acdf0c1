"""Model zoo. Importing this package registers every architecture (explicit imports, no discovery)."""

from models.registry import ModelError, create, get_info, list_models, register

__all__ = ["ModelError", "create", "get_info", "list_models", "register"]
