"""Time-embedding effects per ResnetBlock2D: how strongly each block listens to the timestep.

A ResnetBlock2D adds ``time_emb_proj(act(temb))`` (one vector per channel, broadcast over pixels) to
its features right after ``conv1`` (Ho et al. 2020's DDPM ResNet; diffusers `ResnetBlock2D`). Three
views of that injection:

* ``temb_rel_norm`` (passive, recorded while sampling): ||temb broadcast over H x W|| / ||conv1 output||
  = sqrt(HW) ||temb|| / ||h||. Near 0: the block barely hears t; ~1: the timestep rivals the content.
* ``sens_zero`` / ``sens_swap`` (interventions): relative change ||eps' - eps|| / ||eps|| of the noise
  prediction when one block's injected embedding is zeroed, or replaced by the one of another timestep.
* the cosine-similarity matrix of the UNet's time embeddings across timesteps (how distinguishable
  timesteps are to the network at all).
"""

from __future__ import annotations

import pandas as pd
import torch

from .binned import BinnedMeans
from .hooks import Probe, find_sites, get_module


def is_time_conditioned_resnet(module) -> bool:
    return type(module).__name__ == "ResnetBlock2D" and getattr(module, "time_emb_proj", None) is not None


def time_conditioned_resnets(unet) -> dict[str, torch.nn.Module]:
    """{path: ResnetBlock2D} of every ResNet site that adds the time embedding, in forward order."""
    return find_sites(unet, "resnet", "time-conditioned ResnetBlock2D modules",
                      is_time_conditioned_resnet)


def rel_norm(temb: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """Per-sample ||temb broadcast over the feature map|| / ||features||: (B, C), (B, C, H, W) -> (B,)."""
    hw = features.shape[-2] * features.shape[-1]
    return temb.float().flatten(1).norm(dim=1) * hw ** 0.5 / features.float().flatten(1).norm(dim=1).clamp_min(1e-12)


def relative_change(new: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Per-sample ||new - ref|| / ||ref|| (the sensitivity measure of every intervention here)."""
    d = (new.float() - ref.float()).flatten(1).norm(dim=1)
    return d / ref.float().flatten(1).norm(dim=1).clamp_min(1e-12)


def cosine_matrix(emb: torch.Tensor) -> torch.Tensor:
    """(n, d) embeddings -> (n, n) cosine similarities."""
    e = torch.nn.functional.normalize(emb.float().flatten(1), dim=1)
    return e @ e.T


class TimestepProbe(Probe):
    """Record ``temb_rel_norm`` per ResnetBlock2D and timestep bin, on the device, while sampling."""

    name = "timestep"

    def __init__(self, model, **kw):
        super().__init__(model, **kw)
        self.stats = BinnedMeans()
        self._features: dict[str, torch.Tensor] = {}

    def _attach(self, unet):
        self.blocks = time_conditioned_resnets(unet)
        for path, block in self.blocks.items():
            # conv1 runs before time_emb_proj inside ResnetBlock2D.forward: remember its output's norm
            self._hook(block.conv1, lambda m, a, out, p=path: self._features.__setitem__(p, out))
            self._hook(block.time_emb_proj, lambda m, a, out, p=path: self._record(p, out))

    def reset(self):
        self.stats.clear()
        self.fired = 0

    @torch.no_grad()
    def _record(self, path: str, temb: torch.Tensor) -> None:
        rows = self.ctx.rows if self.ctx.rows is not None else slice(None)
        h = self._features.pop(path)
        if temb.shape[0] != h.shape[0]:  # temb may be shared across a batch of 1
            temb = temb.expand(h.shape[0], -1)
        r = rel_norm(temb[rows], h[rows]).mean()
        self.stats.add(path, r, self.ctx.bin, self.n_bins)
        self.fired += 1

    def table(self, timestep_of_bin=None) -> pd.DataFrame:
        """Rows of `timestep.csv` (block, timestep, metric=temb_rel_norm, value), one per visited bin.

        `timestep_of_bin` maps a bin to the timestep written (default: the bin's centre).
        """
        return pd.DataFrame([dict(block=path, timestep=t, metric="temb_rel_norm", value=float(mean[0]))
                             for path, t, mean in self.stats.means(self.bin_table(), timestep_of_bin)])


class TembIntervention(Probe):
    """Replace one block's injected time embedding: ``mode`` "zero" or "swap" (with `value`)."""

    name = "temb-intervention"

    def __init__(self, model, block: str, mode: str, value: torch.Tensor | None = None, **kw):
        super().__init__(model, **kw)
        if mode not in ("zero", "swap"):
            raise ValueError(f"mode must be 'zero' or 'swap', got {mode!r}")
        if mode == "swap" and value is None:
            raise ValueError("swap needs the replacement embedding (value=)")
        self.block, self.mode, self.value = block, mode, value

    def _attach(self, unet):
        block = get_module(unet, self.block)
        if not is_time_conditioned_resnet(block):
            raise ValueError(f"{self.block!r} is not a time-conditioned ResnetBlock2D")
        self._hook(block.time_emb_proj, self._replace)

    def _replace(self, module, args, out):
        self.fired += 1
        return torch.zeros_like(out) if self.mode == "zero" else self.value.to(out.dtype).expand_as(out)


class _Capture(Probe):
    """Capture every block's injected time embedding during one forward (for swaps)."""

    name = "temb-capture"

    def __init__(self, model, blocks, **kw):
        super().__init__(model, **kw)
        self.blocks, self.out = blocks, {}

    def _attach(self, unet):
        for p in self.blocks:
            self._hook(get_module(unet, p).time_emb_proj, lambda m, a, o, p=p: self._keep(p, o))

    def _keep(self, p, o):
        self.out[p] = o.detach()
        self.fired += 1


@torch.no_grad()
def time_embeddings(unet, timesteps, device=None) -> torch.Tensor:
    """The UNet's own time embedding MLP output for each timestep: (n, d)."""
    device = device or next(unet.parameters()).device
    t = torch.as_tensor(list(timesteps), device=device)
    t_emb = unet.time_proj(t).to(next(unet.time_embedding.parameters()).dtype)
    return unet.time_embedding(t_emb)


def repeat_batch(x, k: int):
    """`x` (a tensor, or a dict/list/tuple of them, as UNet keyword arguments are) with every tensor's batch repeated
    k times, copies stacked: rows [j*B, (j+1)*B) of the result are copy j."""
    if k == 1:
        return x
    if torch.is_tensor(x):
        return x.repeat(k, *([1] * (x.ndim - 1))) if x.ndim else x
    if isinstance(x, dict):
        return {key: repeat_batch(v, k) for key, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(repeat_batch(v, k) for v in x)
    return x


class RowEdits(Probe):
    """Several interventions in one UNet call: copy j of a k-times repeated batch (rows [j*n, (j+1)*n)) gets
    `edits[j]`, or nothing where it is None. Subclasses attach the hooks that apply them (`batched_changes`)."""

    def __init__(self, model, edits, n_rows: int, **kw):
        super().__init__(model, **kw)
        self.edits, self.n_rows = list(edits), int(n_rows)


class _TembRows(RowEdits):
    """Time-embedding interventions by rows: each edit a (block, mode, value) as `TembIntervention` takes them."""

    name = "temb-interventions"

    def _attach(self, unet):
        per_block: dict[str, list] = {}
        for j, edit in enumerate(self.edits):
            if edit is not None:
                b, mode, value = edit
                per_block.setdefault(b, []).append((j, mode, value))
        for b, items in per_block.items():
            block = get_module(unet, b)
            if not is_time_conditioned_resnet(block):
                raise ValueError(f"{b!r} is not a time-conditioned ResnetBlock2D")
            self._hook(block.time_emb_proj, lambda m, a, out, items=items: self._replace(items, out))

    def _replace(self, items, out):
        self.fired += 1
        out = out.clone()
        for j, mode, value in items:
            rows = slice(j * self.n_rows, (j + 1) * self.n_rows)
            out[rows] = 0 if mode == "zero" else value.to(out.dtype).expand_as(out[rows])
        return out


def batched_changes(unet, x_t: torch.Tensor, t, cond: dict, edits: list, probe_cls, batch: int) -> list[torch.Tensor]:
    """relative_change(eps_j, eps).mean() of every intervention j of `edits`, `batch` of them per UNet call: the
    batch is repeated 1 + batch times, copy 0 left alone (the reference eps, computed in the same call) and copy j
    intervened by `probe_cls(unet, [None, *chunk], n_rows=B)`. One call reads the weights once for all of them,
    which is what the UNet costs at small latents. Another batch size picks other kernels, so the numbers agree with
    one call per intervention up to float rounding (|d| <= ~1e-6 in fp32); with the reference in the same call, an
    intervention that changes nothing still gives exactly 0."""
    n = x_t.shape[0]
    out = []
    for start in range(0, len(edits), batch):
        chunk = edits[start:start + batch]
        k = len(chunk) + 1
        with probe_cls(unet, [None, *chunk], n_rows=n):
            eps = unet(repeat_batch(x_t, k), t, **repeat_batch(cond, k)).sample
        out += [relative_change(eps[j * n:(j + 1) * n], eps[:n]).mean() for j in range(1, k)]
    return out


@torch.no_grad()
def sensitivity(unet, x_t: torch.Tensor, t: int, cond: dict, t_swap: int, blocks=None, batch: int = 1) -> pd.DataFrame:
    """sens_zero / sens_swap for every block at timestep t (rows of `timestep.csv`).

    ``batch`` > 1 runs that many interventions per UNet call (`batched_changes`): fewer, larger calls, several times
    faster where the UNet is bound by reading its weights (small latents, CPU; benchmarks/real_architectures.py),
    equal to the default up to float rounding. The default, 1, is one call per intervention."""
    blocks = list(blocks or time_conditioned_resnets(unet))
    if not (isinstance(batch, int) and batch >= 1):
        raise ValueError(f"batch={batch!r}: interventions per UNet call, an integer >= 1")
    ref = unet(x_t, t, **cond).sample if batch == 1 else None  # batched: the reference is copy 0 of each call
    with _Capture(unet, blocks) as cap:
        unet(x_t, t_swap, **cond)
    edits = [(b, mode, value) for b in blocks for mode, value in (("zero", None), ("swap", cap.out[b]))]
    if batch == 1:
        changes = []
        for b, mode, value in edits:
            with TembIntervention(unet, b, mode, value):
                eps = unet(x_t, t, **cond).sample
            changes.append(relative_change(eps, ref).mean())
    else:
        changes = batched_changes(unet, x_t, t, cond, edits, _TembRows, batch)
    host = torch.stack(changes).cpu().tolist()  # one device sync for the whole sweep
    return pd.DataFrame([dict(block=b, timestep=int(t), metric=f"sens_{m}", value=v)
                         for (b, m, _), v in zip(edits, host)])
