"""Running means per (site, timestep bin), kept on the device: one `index_add_` per UNet call and no host sync until
a table is read. Shared by the passive probes (`TimestepProbe`, `SkipProbe`)."""

from __future__ import annotations

from collections.abc import Iterator

import torch


class BinnedMeans:
    def __init__(self):
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, torch.Tensor] = {}

    def clear(self) -> None:
        self.sums.clear()
        self.counts.clear()

    def keys(self) -> list[str]:
        return list(self.sums)

    def add(self, key: str, values: torch.Tensor, bin: torch.Tensor, n_bins: int) -> None:
        """Add one observation `values` (k,) to bin `bin` (a (1,) device tensor) of `key`."""
        if key not in self.sums:
            self.sums[key] = torch.zeros(n_bins, values.numel(), device=values.device)
            self.counts[key] = torch.zeros(n_bins, device=values.device)
        self.sums[key].index_add_(0, bin, values.reshape(1, -1))
        self.counts[key].index_add_(0, bin, torch.ones(1, device=values.device))

    def means(self, bin_table, timestep_of_bin=None) -> Iterator[tuple[str, float, torch.Tensor]]:
        """(key, timestep, mean (k,)) of every visited bin; the timestep is `timestep_of_bin(b)` or the bin's
        centre."""
        for key, s in self.sums.items():
            c = self.counts[key]
            mean = (s / c.clamp_min(1)[:, None]).cpu()
            for b, lo, hi in bin_table:
                if float(c[b]) > 0:
                    yield key, (timestep_of_bin(b) if timestep_of_bin else (lo + hi) / 2), mean[b]
