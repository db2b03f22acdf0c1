"""Fail fast when pretrained encoder weights cannot be obtained.

smp and timm download weights from the Hugging Face Hub (or a torch-hub URL) and, offline, retry
the network for tens of seconds before failing with a deep traceback. ``ensure_available`` checks
the local caches first and, if the weights are not there, raises a ModelError within seconds when
``HF_HUB_OFFLINE`` is set or a quick connection probe fails.
"""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path

from models.registry import ModelError

PROBE_HOST = ("huggingface.co", 443)
PROBE_TIMEOUT_S = 3.0
_TRUE = {"1", "true", "yes", "on"}


def hub_offline() -> bool:
    """True when the user asked huggingface_hub not to touch the network."""
    return any(
        os.environ.get(k, "").strip().lower() in _TRUE for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache, resolved from the environment at call time."""
    for key in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(key):
            return Path(os.environ[key])
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]) / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "huggingface" / "hub"


def network_reachable(host: tuple[str, int] = PROBE_HOST, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Connection probe bounded by ``timeout`` in total (DNS included, hence the thread)."""
    result: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection(host, timeout=timeout).close()
            result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])


def _in_hf_cache(repo_id: str, filenames: tuple[str, ...], revision: str | None) -> bool:
    from huggingface_hub import try_to_load_from_cache

    cache = hf_cache_dir()
    for filename in filenames:
        found = try_to_load_from_cache(repo_id, filename, cache_dir=cache, revision=revision)
        if isinstance(found, str) and Path(found).is_file():
            return True
    return False


def _smp_sources(encoder: str, weights: str) -> bool:
    """Whether smp encoder weights are cached; ModelError for an unknown weights name."""
    import segmentation_models_pytorch as smp

    settings = smp.encoders.encoders[encoder]["pretrained_settings"]
    if weights not in settings:
        raise ModelError(
            f"encoder {encoder!r} has no weights {weights!r}; available: {', '.join(settings) or 'none'}"
        )
    entry = settings[weights]
    return _in_hf_cache(entry["repo_id"], ("model.safetensors",), entry.get("revision"))


def _timm_sources(model_name: str) -> bool:
    """Whether timm pretrained weights for ``model_name`` are cached (HF hub or torch hub)."""
    import timm
    import torch.hub

    cfg = timm.models.get_pretrained_cfg(model_name)
    if cfg is None:
        raise ModelError(f"timm model {model_name!r} has no pretrained weights")
    if cfg.hf_hub_id:
        repo, _, revision = cfg.hf_hub_id.partition("@")
        files = (
            "model.safetensors",
            "pytorch_model.bin",
            cfg.hf_hub_filename or "open_clip_pytorch_model.bin",
        )
        if _in_hf_cache(repo, files, revision or None):
            return True
    if cfg.url:
        return (Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(cfg.url)).is_file()
    return False


def ensure_available(encoder: str, weights: str | None) -> None:
    """Raise ModelError now if ``weights`` for smp ``encoder`` would need an unreachable network."""
    if weights is None:
        return
    cached = _timm_sources(encoder[3:]) if encoder.startswith("tu-") else _smp_sources(encoder, weights)
    if cached:
        return
    why = "HF_HUB_OFFLINE is set" if hub_offline() else ""
    if not why and not network_reachable():
        why = f"{PROBE_HOST[0]} is unreachable"
    if why:
        raise ModelError(
            f"encoder weights {weights!r} for {encoder} need network access or a cached download; "
            f"{why} and they are not in the cache ({hf_cache_dir()}). "
            "Use encoder_weights=None, or download them once while online."
        )
