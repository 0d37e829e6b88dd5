"""Hook points: context managers that attach to a UNet by module path and always unhook.

A probe is a strategy object keyed by module path (like diffusers' ``set_attn_processor``): on
``__enter__`` it resolves its target paths in the module tree (the tree *is* the address space, as in
nnsight / TransformerLens hook points), installs forward hooks and/or attention processors, and on
``__exit__`` removes every hook and puts back the *same* processor objects -- also when the body
raised. Tools that silently stopped working when diffusers renamed classes taught us to fail loudly:
a probe with zero matching modules raises on entry, a probe whose hooks never fired raises on exit.

Every probe also tracks the denoising *step context* through a forward pre-hook on the UNet itself:
the current timestep's bin (a device tensor, so no CPU sync happens per layer or per step), the
latent's spatial size (to un-flatten attention maps of non-square images) and which batch rows are
conditional under classifier-free guidance.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterable

import torch
from torch import nn

from foundation import sites

NUM_TRAIN_TIMESTEPS = 1000


class ProbeError(RuntimeError):
    """A probe could not attach (missing modules) or observed nothing (zero hooks fired)."""


def unet_of(model) -> nn.Module:
    """The UNet of a pipeline, or the model itself if it already is one."""
    unet = getattr(model, "unet", model)
    if not isinstance(unet, nn.Module):
        raise ProbeError(f"expected a diffusers UNet or a pipeline with `.unet`, got {type(model).__name__}")
    return unet


def find_sites(unet: nn.Module, kind: str, what: str, where=None) -> dict[str, nn.Module]:
    """{path: module} of the UNet's sites of `kind` (`foundation.sites`) whose module passes `where(module)`, in
    module-tree order (diffusers' own, as `attn_processors` lists them); raises if none."""
    try:
        paths = {s.path for s in sites.sites(unet, kind)}
    except sites.SiteError as e:
        raise ProbeError(f"no {what}: {e}") from None
    found = {p: m for p, m in unet.named_modules() if p in paths and (where is None or where(m))}
    if not found:
        raise ProbeError(f"no {what} found in {type(unet).__name__}: this probe needs them (module paths are e.g. "
                         "'down_blocks.0.attentions.0.transformer_blocks.0.attn2')")
    return found


def get_module(root: nn.Module, path: str) -> nn.Module:
    try:
        return root.get_submodule(path)
    except AttributeError as e:
        raise ProbeError(f"module path {path!r} does not exist in {type(root).__name__}") from e


# ---------------------------------------------------------------------------------------------
# timestep bins and the classifier-free-guidance batch layout: small pure functions

def bin_edges(bins: int | Iterable[float], num_train_timesteps: int = NUM_TRAIN_TIMESTEPS) -> torch.Tensor:
    """Edges (n_bins + 1,) of timestep bins: `bins` equal-width bins over [0, T) or explicit edges."""
    if isinstance(bins, int):
        if bins < 1:
            raise ValueError("need at least one timestep bin")
        return torch.linspace(0, num_train_timesteps, bins + 1)
    edges = torch.as_tensor(list(bins), dtype=torch.float32)
    if edges.ndim != 1 or len(edges) < 2 or not bool((edges[1:] > edges[:-1]).all()):
        raise ValueError(f"timestep bin edges must be increasing, got {edges.tolist()}")
    return edges


def conditional_rows(batch: int, n_images: int | None, cfg_hint: bool | None) -> slice:
    """Rows of the UNet batch that carry the prompts' conditional predictions.

    diffusers' pipelines concatenate ``[negative, positive]`` under classifier-free guidance, so the
    batch doubles. We *detect* that from the batch size against the number of images instead of
    assuming it: B == n -> no CFG, every row; B == 2n -> CFG, the second half. Without `n_images`
    a pipeline's own ``do_classifier_free_guidance`` flag is the fallback hint.
    """
    if n_images is not None:
        if batch == n_images:
            return slice(0, batch)
        if batch == 2 * n_images:
            return slice(n_images, batch)
        raise ProbeError(f"UNet batch {batch} is neither the number of images ({n_images}) nor twice it "
                         f"(classifier-free guidance); tell the probe n_images= correctly")
    if cfg_hint is None:
        raise ProbeError("cannot tell whether this UNet batch holds classifier-free-guidance pairs: "
                         "attach the probe to the pipeline or pass n_images=")
    if cfg_hint:
        if batch % 2:
            raise ProbeError(f"classifier-free guidance is on but the UNet batch {batch} is odd")
        return slice(batch // 2, batch)
    return slice(0, batch)


def rows_per_bin(plan) -> dict[str, list]:
    """{site: [rows to act on in bin b, or None]} of a {site: (n_bins, rows) bool} plan, as index tensors built once
    per run (the patcher's and the token edits' per-call lookup)."""
    out = {}
    for key, p in plan.items():
        p = torch.as_tensor(p, dtype=torch.bool)
        out[key] = [r.nonzero().flatten() if bool(r.any()) else None for r in p]
    return out


@dataclass
class StepContext:
    """What a probe knows about the UNet call in progress (set by the UNet pre-hook)."""

    bin: torch.Tensor | None = None  # (1,) long, on the UNet's device
    timestep: torch.Tensor | None = None  # (1,) float, on the UNet's device
    latent_hw: tuple[int, int] | None = None
    rows: slice | None = None
    rows_error: Exception | None = None
    n_calls: int = 0


def timestep_of(args, kwargs) -> torch.Tensor:
    t = kwargs.get("timestep", args[1] if len(args) > 1 else None)
    if t is None:
        raise ProbeError("UNet called without a timestep")
    return t


def resolution_chain(latent_hw: tuple[int, int], n_tokens: int) -> tuple[int, int]:
    """(h, w) of a feature map with `n_tokens` pixels inside a UNet with input `latent_hw`.

    Each downsampler is a stride-2 conv with padding 1, so sizes shrink by ceil(x / 2); walking that
    chain recovers the shape of non-square maps that attention sees flattened.
    """
    h, w = latent_hw
    while h * w > n_tokens and h > 0:
        h, w = -(-h // 2), -(-w // 2)
    if h * w != n_tokens:
        raise ProbeError(f"cannot map {n_tokens} attention queries onto latent {latent_hw}")
    return h, w


# ---------------------------------------------------------------------------------------------
# the base class

class Probe(contextlib.AbstractContextManager):
    """Base of every probe: attach on enter, detach on exit (always), count firings.

    Subclasses implement ``_attach(unet)`` using ``self._hook(...)`` / ``self._processor(...)``
    so that detaching is generic. ``model`` is a UNet or a pipeline (then the pipeline's
    ``do_classifier_free_guidance`` flag helps detect CFG). ``n_images`` is the number of
    generated images per UNet call (prompts x images per prompt); set it per run with `expect`.
    """

    name = "probe"

    def __init__(self, model, *, n_images: int | None = None, timestep_bins=5,
                 num_train_timesteps: int | None = None):
        self.model = model
        self.pipe = model if hasattr(model, "unet") else None
        self.unet = unet_of(model)
        T = num_train_timesteps or _num_train_timesteps(self.pipe) or NUM_TRAIN_TIMESTEPS
        self.edges = bin_edges(timestep_bins, T)
        self.n_bins = len(self.edges) - 1
        self.n_images = n_images
        self.ctx = StepContext()
        self.fired = 0
        self._handles: list = []
        self._processors: dict[str, tuple[nn.Module, object]] = {}
        self._active = False
        self._device_edges: torch.Tensor | None = None

    # -- lifecycle ---------------------------------------------------------------------------
    def expect(self, n_images: int | None) -> "Probe":
        self.n_images = n_images
        return self

    def __enter__(self):
        if self._active:
            raise ProbeError(f"{self.name} probe is already attached")
        self._active = True
        try:
            self._handles.append(self.unet.register_forward_pre_hook(self._step_hook, with_kwargs=True))
            self._attach(self.unet)
        except BaseException:
            self._detach()
            raise
        return self

    def __exit__(self, exc_type, exc, tb):
        self._detach()
        if exc_type is None and self.fired == 0:
            raise ProbeError(f"{self.name} probe: zero hooks fired -- the UNet did not run inside the "
                             f"`with` block, or its modules no longer match what the probe expects")
        return False

    def _detach(self) -> None:
        for h in reversed(self._handles):
            h.remove()
        self._handles.clear()
        for path, (module, proc) in self._processors.items():
            module.set_processor(proc)
        self._processors.clear()
        self._active = False

    # -- helpers for subclasses --------------------------------------------------------------
    def _hook(self, module: nn.Module, fn, kind: str = "forward", **kw) -> None:
        register = {"forward": module.register_forward_hook,
                    "pre": module.register_forward_pre_hook}[kind]
        self._handles.append(register(fn, **kw))

    def _processor(self, path: str, module: nn.Module, make) -> None:
        """Wrap an attention module's current processor with `make(inner)`; restored on exit."""
        self._processors[path] = (module, module.processor)
        module.set_processor(make(module.processor))

    def _attach(self, unet: nn.Module) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    # -- step context --------------------------------------------------------------------------
    def _step_hook(self, module, args, kwargs):
        sample = args[0] if args else kwargs["sample"]
        t = timestep_of(args, kwargs)
        t = torch.as_tensor(t, device=sample.device).reshape(-1)[:1].float()
        if self._device_edges is None or self._device_edges.device != sample.device:
            self._device_edges = self.edges.to(sample.device)
        # bucketize against the inner edges; clamp keeps t == T-1 (or beyond) in the last bin
        self.ctx.bin = torch.bucketize(t, self._device_edges[1:-1], right=True).clamp_(0, self.n_bins - 1)
        self.ctx.timestep = t
        self.ctx.latent_hw = tuple(sample.shape[-2:])
        cfg_hint = getattr(self.pipe, "do_classifier_free_guidance", None) if self.pipe is not None else None
        try:
            self.ctx.rows, self.ctx.rows_error = conditional_rows(sample.shape[0], self.n_images, cfg_hint), None
        except ProbeError as e:  # only probes that need the conditional rows fail, in `rows()`
            self.ctx.rows, self.ctx.rows_error = None, e
        self.ctx.n_calls += 1
        return None

    def rows(self) -> slice:
        """Conditional rows of the current UNet batch (raises if they cannot be determined)."""
        if self.ctx.rows is None:
            raise self.ctx.rows_error or ProbeError("the UNet has not been called yet")
        return self.ctx.rows

    def bin_table(self) -> list[tuple[int, float, float]]:
        """[(bin, t_lo, t_hi)] of the timestep bins."""
        e = self.edges.tolist()
        return [(k, e[k], e[k + 1]) for k in range(self.n_bins)]


def _num_train_timesteps(pipe) -> int | None:
    sched = getattr(pipe, "scheduler", None)
    return getattr(getattr(sched, "config", None), "num_train_timesteps", None)


@contextlib.contextmanager
def attached(*probes: Probe):
    """Attach several probes at once (they compose); all are detached however the body ends."""
    with contextlib.ExitStack() as stack:
        for p in probes:
            stack.enter_context(p)
        yield probes


def hooks_left(module: nn.Module) -> int:
    """Number of forward (pre-)hooks anywhere in `module` -- 0 after every probe exited."""
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in module.modules())


def processors(unet: nn.Module) -> dict[str, object]:
    """{path: processor object} of every attention module (for restore checks)."""
    return {p: m.processor for p, m in unet.named_modules() if hasattr(m, "set_processor")}

