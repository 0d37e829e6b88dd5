"""Inception-v3 features for FID/KID (Heusel et al. 2017; Binkowski et al. 2018), from a local weights file only.

Every FID library downloads the converted TF Inception weights at run time; our machines and many cluster nodes
are offline, so we never download. The weights must be the file torch-fidelity publishes,
`weights-inception-2015-12-05-6726825d.pth` (the TF 2015-12-05 graph used by the original FID code, converted to
PyTorch); we look for it, in order, at the configured path, at $UNET_LAB_INCEPTION_WEIGHTS, and in the torch hub
cache ($TORCH_HOME/hub/checkpoints/) where torch-fidelity would have put it on a connected machine.
The network and its preprocessing are torchmetrics' `NoTrainInceptionV3` (torch-fidelity's FID Inception).
"""

from __future__ import annotations

import os
from pathlib import Path
from unittest import mock

import torch

from ._fidelity import import_torchmetrics_image
from .provenance import file_sha256

INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{INCEPTION_FILE}"
OFFICIAL_SHA256_PREFIX = "6726825d"  # torch hub convention: the file name carries the sha256 prefix
ENV_VAR = "UNET_LAB_INCEPTION_WEIGHTS"


class InceptionWeightsMissing(FileNotFoundError):
    """FID cannot run: the Inception weights file is not on this machine."""


def candidate_paths(configured: str | os.PathLike | None = None) -> list[Path]:
    paths = []
    if configured:
        paths.append(Path(configured).expanduser())
    if os.environ.get(ENV_VAR):
        paths.append(Path(os.environ[ENV_VAR]).expanduser())
    paths.append(Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE)
    return paths


def find_inception_weights(configured: str | os.PathLike | None = None) -> Path:
    """The first existing candidate, or InceptionWeightsMissing with a message saying what to provide."""
    paths = candidate_paths(configured)
    for p in paths:
        if p.is_file():
            return p
    looked = "\n".join(f"  - {p}" for p in paths)
    raise InceptionWeightsMissing(
        f"FID needs the Inception-v3 weights file {INCEPTION_FILE} (torch-fidelity's conversion of the TF FID "
        f"Inception) and will not download it. Looked in:\n{looked}\n"
        f"Fetch it on a connected machine from {INCEPTION_URL} and point to it with metrics.fid.weights=PATH "
        f"or the environment variable {ENV_VAR}=PATH (or copy it into {paths[-1].parent}/).")


def unloadable_inception_message(configured, err: Exception) -> str:
    """Why FID is off when the Inception weights file exists but cannot be used (truncated download, wrong file)."""
    # the file the extractor tried: the first existing candidate, exactly as find_inception_weights picks it
    path = next((p for p in candidate_paths(configured) if p.is_file()), None)
    return (f"the Inception weights file {path} could not be loaded ({type(err).__name__}: {str(err)[:200]}); it is "
            f"probably truncated or not {INCEPTION_FILE}. Replace it with a fresh copy from {INCEPTION_URL} (its "
            f"sha256 starts with {OFFICIAL_SHA256_PREFIX}) and point metrics.fid.weights=PATH or {ENV_VAR}=PATH "
            f"at it")


class InceptionExtractor:
    """Callable: float images (N,3,H,W) in [0,1] -> (N, feature) pool features (2048 = pool3, as in FID)."""

    def __init__(self, weights: str | os.PathLike | None = None, feature: int = 2048, antialias: bool = True,
                 device=None):
        path = find_inception_weights(weights)
        fid = import_torchmetrics_image().fid
        if not fid._TORCH_FIDELITY_AVAILABLE:
            raise ModuleNotFoundError("FID needs torch-fidelity: `pip install --no-deps torch-fidelity` "
                                      "(its torchvision dependency is not needed for the Inception network)")
        self.net = fid.NoTrainInceptionV3(name="inception-v3-compat", features_list=[str(feature)],
                                          feature_extractor_weights_path=str(path), antialias=antialias)
        self.net.to(device or "cpu")
        self.path = path
        self.dim = feature
        self.weights_sha256 = file_sha256(path)
        self.official_weights = self.weights_sha256.startswith(OFFICIAL_SHA256_PREFIX)
        self.resize = ("torch bilinear antialias to 299 (torchmetrics default)" if antialias
                       else "TF1-compatible bilinear to 299 (torch-fidelity/original FID)")
        self.name = f"inception-v3-compat/pool{feature}"

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        # torchmetrics' FID with normalize=True converts exactly like this: (x * 255).byte()
        x = (images.clamp(0, 1) * 255).byte().to(next(self.net.parameters()).device)
        return self.net(x).float()


def save_random_inception(path: str | os.PathLike, seed: int = 0) -> Path:
    """Write a randomly initialised Inception state dict in the weights-file format (tests, no download)."""
    fid = import_torchmetrics_image().fid
    torch.manual_seed(seed)
    with mock.patch.object(fid.NoTrainInceptionV3, "load_state_dict", lambda self, sd, *a, **k: None), \
            mock.patch("torch_fidelity.feature_extractor_inceptionv3.load_state_dict_from_url", lambda *a, **k: {}):
        net = fid.NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"])
    path = Path(path)
    torch.save(net.state_dict(), path)
    return path
