"""Skip-connection contributions: how much the decoder relies on each down -> up skip.

In diffusers' UNet2DConditionModel every down-path output (``conv_in``, each down layer, each
downsampler) is pushed on a stack, and every up ResnetBlock2D pops one and concatenates it *after*
the backbone features: ``cat([backbone, skip], dim=1)``. A forward pre-hook on that resnet therefore
sees both halves. Per skip (named by that up resnet, `foundation.sites.skips`) and timestep we measure

* ``norm_ratio``: ||skip|| / ||backbone|| at the concatenation;
* ``hf_skip`` / ``hf_backbone``: share of spectral energy above a cutoff frequency -- FreeU's analysis
  (Si et al. 2024, Sec. 3) finds skips carry the high frequencies while the backbone carries the
  low-frequency denoising signal;
* ``delta_zero`` / ``delta_mean`` / ``delta_scale``: relative change of the noise prediction when the
  skip is zeroed, replaced by its per-channel spatial mean (keeps the statistics, removes the layout),
  or scaled by a factor (`foundation.skips.edit`).

Note diffusers' FreeU (``enable_freeu``) rescales only the lowest 2x2 FFT bins before the
concatenation; hooks here see the tensors after it.
"""

from __future__ import annotations

import pandas as pd
import torch

from foundation import sites
from foundation.sites import Site
from foundation.skips import check_mode, edit, split

from .binned import BinnedMeans
from .hooks import Probe, ProbeError, get_module
from .timestep import RowEdits, batched_changes, relative_change


Skip = Site  # a skip site of `foundation.sites`: `path` (the up ResNet), `source`, `channels`, `level`


def skip_pairs(unet) -> list[Site]:
    """Every down -> up skip of a diffusers UNet2DConditionModel, in the order the decoder uses them."""
    try:
        return sites.skips(unet)
    except sites.SiteError as e:
        raise ProbeError(str(e)) from None


def skip_named(unet, name: str) -> Site:
    """The skip called `name` (the up ResNet that concatenates it), or a ProbeError listing them all."""
    by_name = {s.name: s for s in skip_pairs(unet)}
    if name not in by_name:
        raise ProbeError(f"no skip named {name!r}; skips are {list(by_name)}")
    return by_name[name]


def high_freq_share(x: torch.Tensor, cutoff: float = 0.25) -> torch.Tensor:
    """Per-sample share of spectral energy at frequencies max(|fy|, |fx|) > cutoff (cycles/pixel).

    (B, C, H, W) -> (B,). The Nyquist frequency is 0.5; the default counts the upper half band.
    """
    spec = torch.fft.fft2(x.float(), norm="ortho").abs().square()  # Parseval: energies add up
    fy = torch.fft.fftfreq(x.shape[-2], device=x.device).abs()
    fx = torch.fft.fftfreq(x.shape[-1], device=x.device).abs()
    high = torch.maximum(fy[:, None], fx[None, :]) > cutoff
    return (spec * high).sum((1, 2, 3)) / spec.sum((1, 2, 3)).clamp_min(1e-12)


METRICS = ("norm_ratio", "hf_skip", "hf_backbone")


class SkipProbe(Probe):
    """Record norm ratio and high-frequency shares of every skip per timestep bin while sampling."""

    name = "skips"

    def __init__(self, model, *, cutoff: float = 0.25, **kw):
        super().__init__(model, **kw)
        self.cutoff = cutoff
        self.stats = BinnedMeans()

    def _attach(self, unet):
        self.skips = skip_pairs(unet)
        for s in self.skips:
            self._hook(get_module(unet, s.path), lambda m, args, s=s: self._record(s, args[0]), kind="pre")

    def reset(self):
        self.stats.clear()
        self.fired = 0

    @torch.no_grad()
    def _record(self, skip: Skip, x: torch.Tensor) -> None:
        rows = self.ctx.rows if self.ctx.rows is not None else slice(None)
        back, sk = split(x[rows], skip)
        ratio = sk.float().flatten(1).norm(dim=1) / back.float().flatten(1).norm(dim=1).clamp_min(1e-12)
        vals = torch.stack([ratio.mean(), high_freq_share(sk, self.cutoff).mean(),
                            high_freq_share(back, self.cutoff).mean()])
        self.stats.add(skip.name, vals, self.ctx.bin, self.n_bins)
        self.fired += 1

    def table(self, timestep_of_bin=None) -> pd.DataFrame:
        """Rows of `skips.csv` (skip, timestep, metric, value) for the passive metrics."""
        return pd.DataFrame([dict(skip=name, timestep=t, metric=m, value=float(mean[k]))
                             for name, t, mean in self.stats.means(self.bin_table(), timestep_of_bin)
                             for k, m in enumerate(METRICS)])


class SkipIntervention(Probe):
    """Zero, mean-replace or scale one skip (by name, or a `Skip`) while the body runs."""

    name = "skip-intervention"

    def __init__(self, model, skip: str | Skip, mode: str, scale: float = 0.5, **kw):
        super().__init__(model, **kw)
        check_mode(mode)  # before attaching
        self.skip, self.mode, self.scale = skip, mode, scale

    def _attach(self, unet):
        if isinstance(self.skip, str):
            self.skip = skip_named(unet, self.skip)
        self._hook(get_module(unet, self.skip.path), self._replace, kind="pre")

    def _replace(self, module, args):
        back, sk = split(args[0], self.skip)
        self.fired += 1
        return (torch.cat([back, edit(sk, self.mode, self.scale)], dim=1), *args[1:])


class _SkipRows(RowEdits):
    """Skip interventions by rows (`RowEdits`): each edit a (Skip, mode, scale) as `SkipIntervention` takes them."""

    name = "skip-interventions"

    def _attach(self, unet):
        per_target: dict[str, list] = {}
        for j, item in enumerate(self.edits):
            if item is None:
                continue
            skip, mode, scale = item
            check_mode(mode)  # before attaching
            per_target.setdefault(skip.path, []).append((j, skip, mode, scale))
        for target, items in per_target.items():
            self._hook(get_module(unet, target), lambda m, args, items=items: self._replace(items, args), kind="pre")

    def _replace(self, items, args):
        self.fired += 1
        back, sk = split(args[0], items[0][1])
        new = sk.clone()
        for j, skip, mode, scale in items:
            rows = slice(j * self.n_rows, (j + 1) * self.n_rows)
            new[rows] = edit(sk[rows], mode, scale)
        return (torch.cat([back, new], dim=1), *args[1:])


@torch.no_grad()
def contributions(unet, x_t: torch.Tensor, t: int, cond: dict, scale: float = 0.5, batch: int = 1) -> pd.DataFrame:
    """delta_zero / delta_mean / delta_scale of every skip at timestep t (rows of `skips.csv`).

    ``batch`` > 1 runs that many interventions per UNet call (`probes.timestep.batched_changes`): equal to the
    default, one call per intervention, up to float rounding, and several times faster at small latents on a CPU."""
    if not (isinstance(batch, int) and batch >= 1):
        raise ValueError(f"batch={batch!r}: interventions per UNet call, an integer >= 1")
    edits = [(s, mode, scale) for s in skip_pairs(unet) for mode in ("zero", "mean", "scale")]
    if batch == 1:
        ref = unet(x_t, t, **cond).sample
        changes = []
        for s, mode, sc in edits:
            with SkipIntervention(unet, s, mode, sc):
                eps = unet(x_t, t, **cond).sample
            changes.append(relative_change(eps, ref).mean())
    else:
        changes = batched_changes(unet, x_t, t, cond, edits, _SkipRows, batch)
    host = torch.stack(changes).cpu().tolist()
    return pd.DataFrame([dict(skip=s.name, timestep=int(t), metric=f"delta_{m}", value=v)
                         for (s, m, _), v in zip(edits, host)])
