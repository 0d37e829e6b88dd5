"""Import torchmetrics' image metrics when torch-fidelity is installed without torchvision.

torchmetrics' FID uses only torch-fidelity's Inception module (`feature_extractor_inceptionv3`, `helpers`,
`interpolate_compat_tensorflow`), none of which needs torchvision. But `torch_fidelity/__init__.py` imports
every extractor (CLIP, VGG, DINOv2), and those import torchvision, which has no build for our torch. When that
import fails we register the installed package directory as a bare package, so the Inception submodules load
and the unrelated extractors are never imported. With torchvision present the normal import runs unchanged.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types


def ensure_torch_fidelity() -> bool:
    """Make `torch_fidelity.<submodule>` importable; False when torch-fidelity is not installed."""
    if "torch_fidelity" in sys.modules:
        return True
    spec = importlib.util.find_spec("torch_fidelity")
    if spec is None:
        return False
    try:
        importlib.import_module("torch_fidelity")
    except (ImportError, RuntimeError, AttributeError) as e:
        # torchvision missing, or present but built for another torch (its C++ ops fail to register)
        if not (getattr(e, "name", None) == "torchvision" or "torchvision" in repr(e)
                or _torchvision_broken()):
            raise
        pkg = types.ModuleType("torch_fidelity")
        pkg.__path__ = list(spec.submodule_search_locations or [])
        pkg.__spec__ = spec
        pkg.__file__ = spec.origin
        sys.modules["torch_fidelity"] = pkg
    return True


def _torchvision_broken() -> bool:
    try:
        importlib.import_module("torchvision")
    except Exception:  # noqa: BLE001 -- any failure means "cannot use it"
        return True
    return False


def import_torchmetrics_image():
    """`torchmetrics.image` with the torch-fidelity workaround applied first."""
    ensure_torch_fidelity()
    import torchmetrics.image  # noqa: F401
    import torchmetrics.image.fid  # noqa: F401
    import torchmetrics.image.kid  # noqa: F401

    return sys.modules["torchmetrics.image"]
