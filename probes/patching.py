"""Activation patching on the UNet site map: record one run's activations, copy them into many other runs at once.

Causal mediation in SD (Basu et al., ICLR 2024) and causal tracing (Meng et al., NeurIPS 2022) ask which internal
state carries a word: run a *source* prompt, then a *target* run in which one state is overwritten with the
source's, and see how far the output moves toward the source's. A site's state is read and written at its *taps*:

- ``resnet``, ``transformer``, ``attn2``: the module's output;
- ``skip``: the skip half of the up ResNet's concatenated input (`foundation.skips.split`);
- ``time_embedding``: the embedding every ResNet receives (the time MLP's output, and SDXL's added pooled-text /
  micro-conditioning embedding, which is where the pooled prompt enters).

`SourceCache` keeps the conditional rows of every tap at every UNet call of the source run (classifier-free
guidance's unconditional half sees no prompt, so it is left alone). `Patcher` runs a batch whose conditional rows
are many patch configurations at once: row r takes the source's tensor at site s in every UNet call whose timestep
lies in a bin that r's plan names for s. Rows whose plan is empty are not touched (bit for bit the target run).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from foundation.sites import Site

from .hooks import Probe, ProbeError, get_module, rows_per_bin

PATCHABLE = ("time_embedding", "resnet", "transformer", "attn2", "skip")


def site_key(site: Site) -> str:
    """Unique key of a site (a skip shares its path with its up ResNet)."""
    return f"{site.kind}:{site.path}"


def site_label(site: Site) -> str:
    """Short label for tables and figures: the site map's short name, with the kind where it is ambiguous."""
    return f"{site.short} x-attn" if site.kind == "attn2" else site.short


@dataclass(frozen=True)
class Tap:
    """Where a site's tensor is read and written: a module's output, or (skips) the trailing `channels` of its
    first input."""

    module: str
    skip_channels: int | None = None


def taps(unet: nn.Module, site: Site) -> list[Tap]:
    if site.kind not in PATCHABLE:
        raise ProbeError(f"sites of kind {site.kind!r} are not patchable; kinds: {', '.join(PATCHABLE)}")
    if site.kind == "time_embedding":
        return [Tap("time_embedding")] + ([Tap("add_embedding")] if getattr(unet, "add_embedding", None) is not None
                                          else [])
    if site.kind == "skip":
        return [Tap(site.path, site.channels)]
    return [Tap(site.path)]


# --- reading and writing a tap's tensor: output hooks see a tensor or a (tensor, ...) tuple (transformers are called
#     with return_dict=False); pre-hooks see the up ResNet's (input_tensor, temb) arguments

def _output(out) -> torch.Tensor:
    return out[0] if isinstance(out, tuple) else getattr(out, "sample", out)


def _with_output(out, x: torch.Tensor):
    if isinstance(out, tuple):
        return (x, *out[1:])
    if hasattr(out, "sample"):
        out.sample = x
        return out
    return x


def _input(args, kwargs) -> torch.Tensor:
    return args[0] if args else kwargs["input_tensor"]


def _with_input(args, kwargs, x: torch.Tensor):
    return ((x, *args[1:]), kwargs) if args else (args, {**kwargs, "input_tensor": x})


class _Taps(Probe):
    """Hooks a `fn(key, tap index, tensor) -> tensor or None` on every tap of `sites`."""

    def __init__(self, model, sites: list[Site], **kw):
        super().__init__(model, **kw)
        self.sites = list(sites)
        self.call = -1  # index of the UNet call in progress within the run
        self.bin = 0  # its timestep bin, on the CPU (one sync per UNet call, none per site)

    def _attach(self, unet):
        self._hook(unet, self._on_call, kind="pre", with_kwargs=True)
        for site in self.sites:
            key = site_key(site)
            for i, tap in enumerate(taps(unet, site)):
                module = get_module(unet, tap.module)
                if tap.skip_channels is None:
                    self._hook(module, lambda m, a, out, k=key, j=i: self._out(k, j, out))
                else:
                    self._hook(module, lambda m, a, kw, k=key, j=i, c=tap.skip_channels: self._in(k, j, c, a, kw),
                               kind="pre", with_kwargs=True)

    def _on_call(self, module, args, kwargs):
        self.call += 1
        self.bin = int(self.ctx.bin)
        return None

    def _out(self, key, i, out):
        x = _output(out)
        new = self._tensor(key, i, x)
        return None if new is None else _with_output(out, new)

    def _in(self, key, i, channels, args, kwargs):
        x = _input(args, kwargs)
        new = self._tensor(key, i, x[:, x.shape[1] - channels:])
        return None if new is None else _with_input(args, kwargs, torch.cat([x[:, : x.shape[1] - channels], new], 1))

    def _tensor(self, key: str, i: int, x: torch.Tensor):  # pragma: no cover - abstract
        raise NotImplementedError


class SourceCache(_Taps):
    """The conditional rows of every tap of `sites` at every UNet call of one run, and that call's timestep."""

    name = "activation cache"

    def __init__(self, model, sites: list[Site], **kw):
        super().__init__(model, sites, **kw)
        self.store: dict[tuple[str, int], list[torch.Tensor]] = {}
        self.timesteps: list[float] = []

    def _on_call(self, module, args, kwargs):
        super()._on_call(module, args, kwargs)
        self.timesteps.append(float(self.ctx.timestep))

    def _tensor(self, key, i, x):
        calls = self.store.setdefault((key, i), [])
        if len(calls) != self.call:
            raise ProbeError(f"site {key} fired {len(calls) + 1} times in UNet call {self.call}: a module called "
                             "twice per step cannot be patched by position")
        calls.append(x[self.rows()].detach().clone())
        self.fired += 1
        return None

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for calls in self.store.values() for t in calls)


class Patcher(_Taps):
    """Copy `cache`'s tensors into the conditional rows that `plan` names.

    ``plan[key]``: a (n_bins, rows) bool array, True where row r takes the source's tensor at site `key` in bin b;
    ``sources``: (rows,) index of each row's source image in the cache. The run must take the source run's
    timesteps, call for call (same scheduler and number of steps); that is checked at every UNet call."""

    name = "activation patcher"

    def __init__(self, model, cache: SourceCache, plan: dict[str, torch.Tensor], sources, **kw):
        keys = {site_key(s) for s in cache.sites}
        unknown = sorted(set(plan) - keys)
        if unknown:
            raise ProbeError(f"the plan patches {unknown}, which the source run did not record")
        super().__init__(model, [s for s in cache.sites if site_key(s) in plan and bool(plan[site_key(s)].any())],
                         n_images=len(sources), **kw)
        self.cache = cache
        self.sources = torch.as_tensor(sources, dtype=torch.long)
        self.rows_of = rows_per_bin(plan)
        self.n_patched = 0

    def _on_call(self, module, args, kwargs):
        super()._on_call(module, args, kwargs)
        if self.call >= len(self.cache.timesteps) or abs(float(self.ctx.timestep) - self.cache.timesteps[self.call]) > 1e-3:
            raise ProbeError(f"UNet call {self.call} at timestep {float(self.ctx.timestep):g} has no source call at "
                             "the same timestep: sample the target with the source's scheduler and number of steps")

    def _tensor(self, key, i, x):
        self.fired += 1
        rows = self.rows_of[key][self.bin]
        if rows is None:
            return None
        src = self.cache.store[(key, i)][self.call]
        at = self.rows().start + rows.to(x.device)
        out = x.clone()
        out[at] = src[self.sources[rows].to(src.device)].to(x.dtype)
        self.n_patched += len(rows)
        return out
