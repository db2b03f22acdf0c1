#!/usr/bin/env bash
# Create $VENV and install the pinned known-good set, then nerve-bench in editable mode.
set -euo pipefail
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install --disable-pip-version-check -q)
# Some machines' pip.conf lists index folders that do not exist; drop that noise, keep real errors.
quiet() { "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2); }
# torch first and pinned: an unpinned resolve of smp/timm would pull a multi-GB CUDA build.
quiet "${PIP[@]}" -c requirements/constraints.txt torch
# The extras: ONNX export (onnx, onnxscript, onnxruntime) and nnU-Net v2 (nnunetv2 and its networks'
# dynamic-network-architectures, which caps timm below 1.0.23: the lock pins timm 1.0.22).
quiet "${PIP[@]}" -c requirements/constraints.txt -e ".[dev,onnx,nnunet]"
# A CUDA-only torchvision wheel next to CPU torch cannot load its ops; the shim defines the two
# schemas torchvision needs at import. It is a no-op when torchvision/_C.so loads.
SITE=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
cp tools/tv_shim.py "$SITE/_nerve_bench_tv_shim.py"
echo "import _nerve_bench_tv_shim" > "$SITE/_nerve_bench_tv_shim.pth"
NO_ALBUMENTATIONS_UPDATE=1 "$VENV/bin/python" -c "import torchvision, timm, segmentation_models_pytorch, lightning, albumentations, tifffile, imagecodecs, nnunetv2.training.nnUNetTrainer.nnUNetTrainer, dynamic_network_architectures.architectures.unet" \
  || { echo "install: the installed set does not import; see the error above" >&2; exit 1; }
echo "install: $VENV ready"
