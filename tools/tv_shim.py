"""Keep a CUDA-only torchvision importable next to a CPU-only torch.

Installed by ``make install`` into site-packages together with a ``.pth`` line, so it
runs at interpreter start-up. It only adds a meta-path hook; the work happens the first
time ``torchvision`` is imported: if ``torchvision/_C.so`` loads, nothing is changed
(GPU boxes with a matching torchvision); otherwise the two operator schemas that
``torchvision._meta_registrations`` needs (``nms`` and ``qnms``) are defined so that
timm, smp, torchmetrics and Lightning can import. Calling those ops still fails loudly.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

_LIBS: list = []  # keep torch.library.Library objects alive, or their defs vanish


def _so_loads(so_path: Path) -> bool:
    import torch

    try:
        torch.ops.load_library(str(so_path))
        return True
    except (OSError, RuntimeError, ImportError):
        return False


def _define_missing_ops() -> None:
    import torch

    lib = torch.library.Library("torchvision", "DEF")
    for op in ("nms", "qnms"):
        lib.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _LIBS.append(lib)


class _TorchvisionHook:
    def find_spec(self, name, path=None, target=None):  # noqa: ANN001
        if name != "torchvision":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec("torchvision")
        if spec is not None and spec.origin:
            sos = list(Path(spec.origin).parent.glob("_C*.so"))
            if sos and not _so_loads(sos[0]):
                _define_missing_ops()
        return spec


def install() -> None:
    if not any(isinstance(h, _TorchvisionHook) for h in sys.meta_path):
        sys.meta_path.insert(0, _TorchvisionHook())


install()
