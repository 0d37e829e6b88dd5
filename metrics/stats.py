"""Streaming feature statistics: running sums in float64 for FD, a compact copy of the features for KID.

Memory is O(d²) for the moments regardless of N; KID (and bootstrap CIs) need the features themselves, which
are kept on the CPU in float16 by default (`keep="float16"`), float32, or not at all (`keep=None`).
The sums are taken around a shift (the first batch's mean) so that E[xxᵀ] − μμᵀ does not cancel
catastrophically when features have a large mean (the usual trick for streaming covariance).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from foundation.io import atomic_path


class FeatureStats:
    def __init__(self, dim: int, keep: str | None = "float16"):
        self.dim = dim
        self.keep = keep
        self.n = 0
        self.shift: np.ndarray | None = None
        self.sum = np.zeros(dim, np.float64)
        self.sum_outer = np.zeros((dim, dim), np.float64)
        self._chunks: list[torch.Tensor] = []
        self._features: torch.Tensor | None = None

    def update(self, feats: torch.Tensor | np.ndarray) -> FeatureStats:
        f = torch.as_tensor(feats).detach()
        if f.ndim != 2 or f.shape[1] != self.dim:
            raise ValueError(f"expected (N, {self.dim}) features, got {tuple(f.shape)}")
        x = f.to("cpu", torch.float64).numpy()
        if self.shift is None:
            self.shift = x.mean(0)
        xc = x - self.shift
        self.sum += xc.sum(0)
        self.sum_outer += xc.T @ xc
        self.n += len(x)
        if self.keep:
            self._chunks.append(f.to("cpu", getattr(torch, self.keep)))
            self._features = None
        return self

    @property
    def mean(self) -> np.ndarray:
        return self.shift + self.sum / self.n

    @property
    def cov(self) -> np.ndarray:
        """Unbiased covariance (N − 1 denominator)."""
        if self.n < 2:
            raise ValueError(f"need at least 2 samples for a covariance, got {self.n}")
        m = self.sum / self.n
        return (self.sum_outer - self.n * np.outer(m, m)) / (self.n - 1)

    @property
    def features(self) -> torch.Tensor:
        if not self.keep:
            raise ValueError("features were not kept (keep=None); KID and bootstrap need them")
        if self._features is None:
            self._features = torch.cat(self._chunks) if self._chunks else torch.zeros(0, self.dim)
            self._chunks = [self._features]
        return self._features

    # -- persistence (reference-statistics cache) --------------------------------------------------------
    def save(self, path: str | Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {"n": np.array(self.n), "shift": self.shift, "sum": self.sum, "sum_outer": self.sum_outer}
        if self.keep:
            arrays["features"] = self.features.numpy()
        with atomic_path(path) as tmp:  # a concurrent reader never sees a half-written file
            np.savez(tmp, **arrays)

    @classmethod
    def load(cls, path: str | Path) -> FeatureStats:
        z = np.load(path)
        st = cls(int(z["sum"].shape[0]), keep=str(z["features"].dtype) if "features" in z else None)
        st.n, st.shift, st.sum, st.sum_outer = int(z["n"]), z["shift"], z["sum"], z["sum_outer"]
        if "features" in z:
            st._chunks = [torch.from_numpy(z["features"])]
        return st
