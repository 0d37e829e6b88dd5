"""The denoiser training loop, shared by tiny_sd's own training and the ablation protocols, and the latent data.

DDPM loss (Ho et al. 2020, Eq. 14) on VAE latents, with the target the scheduler names (epsilon, v, x0), and
- caption dropout (p = 0.1) to the empty prompt, which classifier-free guidance needs (Ho & Salimans 2022);
- Min-SNR-gamma loss weighting (Hang et al. 2023), which balances the timesteps and converges faster;
- an EMA of the weights used for sampling; periodic atomic checkpoints (model, EMA, optimizer, RNG, loss history)
  and resume;
- optionally (`text_lr`) the text encoder trained jointly with the denoising loss, as GLIDE trains its text
  transformer (Nichol et al. 2022, Sec. 4): a contrastive CLIP trains only its pooled end-of-text state, the
  denoising loss trains the per-word states the cross-attention reads;
- optionally autocast (bf16/fp16) with float32 master weights, and frozen conditioning from caption strings
  (`encode`), which the ablation jobs use for every pipeline, SDXL included.
"""

from __future__ import annotations

import copy
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from foundation.io import atomic_path, git_revision, torch_save, write_json

from . import arch, shapes

CACHE_DIR = Path.home() / ".cache" / "unet_lab"


@dataclass
class LatentData:
    """A training or held-out set in latent space: scaled latents (one per image) and one row per caption.

    `latents` is a tensor or a memory-mapped `LatentArray` (so 30K+ latents never sit in RAM); `image_index[r]` is
    the latent of caption row r (several captions per image, as COCO has), None when rows and images coincide;
    `input_ids` are the captions' token ids, or None when the job conditions from the caption strings (an SDXL
    pipeline has two tokenizers).
    """

    latents: torch.Tensor  # (N_images, 4, h, w), already multiplied by the VAE scaling factor
    input_ids: torch.Tensor | None  # (N_rows, tokenizer.model_max_length) int64
    captions: list[str]  # one per row
    image_index: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.captions)

    def latent_batch(self, rows) -> torch.Tensor:
        """Float32 latents of caption rows `rows` (an index tensor, list or slice)."""
        if isinstance(rows, slice):
            rows = torch.arange(len(self))[rows]
        rows = torch.as_tensor(rows)
        images = rows if self.image_index is None else self.image_index[rows]
        return torch.as_tensor(self.latents[images]).float()


class LatentArray:
    """Read-only (N, C, h, w) float32 latents memory-mapped from a .npy file; indexing returns torch tensors."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._a = np.load(self.path, mmap_mode="r")
        self.shape = torch.Size(self._a.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, idx) -> torch.Tensor:
        if torch.is_tensor(idx):
            idx = idx.numpy()
        return torch.from_numpy(np.array(self._a[idx], dtype=np.float32))


def tokenize(tokenizer, captions: list[str]) -> torch.Tensor:
    return tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length,
                     truncation=True, return_tensors="pt").input_ids


def images_to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> float (B, 3, H, W) in [-1, 1], the range the VAE works in."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def _module_hash(module: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in sorted(module.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def vae_hash(vae: torch.nn.Module) -> str:
    return _module_hash(vae)


@torch.no_grad()
def encode_latents(vae, source, *, resolution: int | None = None, batch_size: int = 32,
                   cache_dir: str | Path | None = None, progress: bool = True) -> tuple[LatentArray, list[list[str]]]:
    """VAE posterior-mean latents (times the scaling factor) of every image of `source` at `resolution`, encoded
    once per (source.id, resolution, VAE weights) and cached as a memory-mapped .npy; returns them and every
    image's captions. `source` is any image–caption source of `metrics.data` (len, id, load, captions_of)."""
    root = Path(cache_dir).expanduser() if cache_dir else CACHE_DIR / "latents"
    key = {"source": source.id, "resolution": resolution, "vae": vae_hash(vae), "latent": "posterior mean",
           "scaling_factor": float(vae.config.scaling_factor), "version": 2}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    path, meta = root / f"{digest}.npy", root / f"{digest}.json"
    if path.is_file() and meta.is_file():
        return LatentArray(path), json.loads(meta.read_text())["captions"]
    root.mkdir(parents=True, exist_ok=True)
    device, dtype = next(vae.parameters()).device, next(vae.parameters()).dtype
    n = len(source)
    with atomic_path(path) as tmp:
        out = None
        for start in tqdm(range(0, n, batch_size), desc="encode latents", disable=not progress, dynamic_ncols=True):
            imgs, _ = source.load(start, min(n, start + batch_size), resolution)
            z = vae.encode((imgs * 2 - 1).to(device, dtype)).latent_dist.mean.float().cpu() * vae.config.scaling_factor
            if out is None:  # written in place: the whole set never sits in RAM
                out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n, *z.shape[1:]))
            out[start:start + len(z)] = z.numpy()
        out.flush()
        del out
    caps = [source.captions_of(i) for i in range(n)]
    write_json(meta, {"key": key, "captions": caps})
    return LatentArray(path), caps


def latent_data(vae, source, tokenizer=None, *, resolution: int | None = None, all_captions: bool = False,
                cache_dir: str | Path | None = None, progress: bool = True) -> LatentData:
    """`LatentData` of a source: one row per image (its first caption) or, with `all_captions`, one row per
    caption; token ids with `tokenizer` when given (made on every call, never cached: another tokenizer never
    reads stale ids)."""
    lat, caps = encode_latents(vae, source, resolution=resolution, cache_dir=cache_dir, progress=progress)
    if all_captions:
        index = torch.tensor([i for i, cs in enumerate(caps) for _ in cs], dtype=torch.long)
        rows = [c for cs in caps for c in cs]
    else:
        index, rows = None, [cs[0] for cs in caps]
    return LatentData(lat, tokenize(tokenizer, rows) if tokenizer is not None else None, rows, index)


def encode_shapes(pipe, n: int, seed: int = shapes.TRAIN_SEED, cache: bool = True,
                  progress: bool = True) -> LatentData:
    """n shapes-world samples of split `seed` through the pipeline's VAE (tiny_sd's own training set); without
    `cache`, encoded into a throw-away directory."""
    import tempfile

    from metrics.data import ShapesSource, Subset

    return latent_data(pipe.vae, Subset(ShapesSource(seed), range(n), f"first {n}"), pipe.tokenizer,
                       cache_dir=None if cache else tempfile.mkdtemp(prefix="latents_"), progress=progress)


PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def prediction_target(sched, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """What the UNet regresses under the scheduler's `prediction_type`: the noise (Ho et al. 2020), the velocity
    v = sqrt(a) eps - sqrt(1 - a) x0 (Salimans & Ho 2022, Sec. 4; SD 2.x 768-v) or the clean latent."""
    kind = sched.config.get("prediction_type", "epsilon")
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return sched.get_velocity(x0, noise, t)
    if kind == "sample":
        return x0
    raise ValueError(f"unknown prediction_type {kind!r}; supported: {', '.join(PREDICTION_TYPES)}")


def min_snr_weight(alphas_cumprod: torch.Tensor, t: torch.Tensor, gamma: float | None,
                   prediction_type: str = "epsilon") -> torch.Tensor:
    """Min-SNR-gamma loss weight (Hang et al. 2023, Sec. 3.4 and 4.2): min(SNR, gamma) over SNR for the epsilon
    loss, over SNR + 1 for the v loss, and min(SNR, gamma) itself for the x0 loss."""
    if gamma is None:
        return torch.ones_like(t, dtype=torch.float32)
    a = alphas_cumprod[t]
    snr = a / (1 - a)
    clipped = torch.clamp(snr, max=gamma)
    return {"epsilon": clipped / snr, "v_prediction": clipped / (snr + 1), "sample": clipped}[prediction_type]


AMP_DTYPES = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}


def lr_factor(step: int, steps: int, warmup: int, final_ratio: float | None) -> float:
    """Multiplier of the base learning rate: linear warm-up, then constant or cosine down to `final_ratio`."""
    if step < warmup:
        return (step + 1) / max(1, warmup)
    if final_ratio is None:
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, steps - warmup))
    return final_ratio + (1 - final_ratio) * 0.5 * (1 + np.cos(np.pi * progress))


@dataclass(frozen=True)
class TrainConfig:
    """The recipe of one `train_unet` run: every number that moves the trained weights."""

    steps: int  # optimizer steps in total (a resumed run continues to this many)
    batch_size: int = 64
    lr: float = 3e-4  # peak AdamW learning rate of the UNet
    lr_final: float | None = None  # None: constant after warm-up; else cosine decay to it (Loshchilov & Hutter 2017)
    warmup: int = 100  # steps of linear learning-rate warm-up
    seed: int = 0  # seeds the batches, caption dropout, noise and timesteps
    cfg_dropout: float = 0.1  # caption dropout to the empty prompt for classifier-free guidance (Ho & Salimans 2022)
    ema_decay: float | None = 0.999  # decay of the weights' exponential moving average, sampled from; None: off
    min_snr_gamma: float | None = 5.0  # Min-SNR-gamma loss weighting (Hang et al. 2023); None: unweighted
    ckpt_every: int = 250  # steps between checkpoints (when `ckpt_dir` is given)
    text_lr: float | None = None  # None: text encoder frozen; else trained jointly at it (Nichol et al. 2022)
    precision: str = "float32"  # autocast dtype of the forward pass: float32, bfloat16 or float16


def train_unet(unet, text_encoder, data: LatentData, config: TrainConfig, *, ckpt_dir: str | Path | None = None,
               uncond_ids: torch.Tensor | None = None, scheduler_config: dict | None = None, encode=None,
               on_step=None, progress: bool = True) -> dict:
    """Train `unet` in place for `config.steps` optimizer steps (resuming from `ckpt_dir` if a checkpoint is there).

    `uncond_ids` are the token ids of the empty prompt (caption dropout target); by default the
    ids of the end-of-text padding with a start token, i.e. what `tokenizer("")` gives.
    `on_step(dict)` receives {"step", "loss"} after each step (k-diffusion-style progress callback).
    The learning rate warms up linearly over `warmup` steps, then stays at `lr` or, with `lr_final`, follows a
    cosine from `lr` down to `lr_final` at `steps` (Loshchilov & Hutter 2017), which is how a long run ends.
    With `text_lr`, `text_encoder` is trained too (in place, same schedule scaled to `text_lr`, its own EMA);
    otherwise it stays frozen, which is what the ablation protocols need.
    `encode(captions) -> (states, added_cond_kwargs or None)` conditions from caption strings with frozen encoders
    (dropped captions become ""; SDXL's pooled embeddings and time ids come back as added_cond_kwargs) instead of
    `text_encoder(input_ids)`. `precision` "bfloat16"/"float16" runs the forward pass under autocast with the
    float32 weights as master copy (float16 with a gradient scaler). The target and the Min-SNR weight follow the
    scheduler's `prediction_type` (epsilon, v_prediction, sample).
    """
    from diffusers import DDPMScheduler

    steps, batch_size, lr, ema_decay = config.steps, config.batch_size, config.lr, config.ema_decay
    device = next(unet.parameters()).device
    sched = DDPMScheduler.from_config(scheduler_config or arch.scheduler_config())  # ignores DDIM-only keys
    alphas_cumprod = sched.alphas_cumprod.to(device)
    kind = sched.config.get("prediction_type", "epsilon")
    if kind not in PREDICTION_TYPES:
        raise ValueError(f"unknown prediction_type {kind!r}; supported: {', '.join(PREDICTION_TYPES)}")
    if config.precision not in AMP_DTYPES:
        raise ValueError(f"precision must be one of {', '.join(AMP_DTYPES)}, got {config.precision!r}")
    amp_dtype = AMP_DTYPES[config.precision]
    scaler = torch.amp.GradScaler(device.type) if amp_dtype == torch.float16 else None
    train_text = bool(config.text_lr)
    if encode is not None and train_text:
        raise ValueError("encode conditions with frozen encoders: it cannot be combined with text_lr")
    text_encoder = text_encoder.to(device).eval().requires_grad_(train_text)
    if uncond_ids is None and data.input_ids is not None:
        uncond_ids = data.input_ids[0].clone()
        uncond_ids[1:] = int(uncond_ids[-1])
    uncond_ids = uncond_ids.to(device) if uncond_ids is not None else None

    unet.train()
    groups = [{"params": list(unet.parameters()), "lr": lr}]
    if train_text:
        groups.append({"params": list(text_encoder.parameters()), "lr": config.text_lr})
    opt = torch.optim.AdamW(groups, lr=lr, weight_decay=0.01)
    final_ratio = config.lr_final / lr if config.lr_final is not None else None
    lr_sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, steps, config.warmup, final_ratio))
    ema = copy.deepcopy(unet).eval().requires_grad_(False) if ema_decay else None
    # the sampler pairs the EMA UNet with the text states it was averaged against, so the text encoder gets one too
    text_ema = copy.deepcopy(text_encoder).requires_grad_(False) if ema_decay and train_text else None
    averaged = [(avg, model) for avg, model in ((ema, unet), (text_ema, text_encoder)) if avg is not None]
    params = [p for g in groups for p in g["params"]]  # clipped together
    gen = torch.Generator().manual_seed(config.seed)
    step, losses, seconds = 0, [], 0.0

    ckpt_path = Path(ckpt_dir) / "train_state.pt" if ckpt_dir else None
    if ckpt_path and ckpt_path.exists():
        st = torch.load(ckpt_path, weights_only=False)
        unet.load_state_dict(st["unet"])
        opt.load_state_dict(st["opt"])
        lr_sched.load_state_dict(st["lr_sched"])
        if ema is not None and st.get("ema") is not None:
            ema.load_state_dict(st["ema"])
        if train_text:
            text_encoder.load_state_dict(st["text_encoder"])
            if text_ema is not None:
                text_ema.load_state_dict(st["text_ema"])
        gen.set_state(st["gen"])
        if scaler is not None and st.get("scaler"):
            scaler.load_state_dict(st["scaler"])
        step, losses, seconds = st["step"], st["losses"], st.get("seconds", 0.0)

    def checkpoint():
        ckpt_path.parent.mkdir(parents=True, exist_ok=True)
        torch_save({"unet": unet.state_dict(), "opt": opt.state_dict(), "lr_sched": lr_sched.state_dict(),
                      "ema": ema.state_dict() if ema is not None else None, "gen": gen.get_state(),
                      "scaler": scaler.state_dict() if scaler is not None else None,
                      "step": step, "losses": losses, "seconds": seconds,
                      **({"text_encoder": text_encoder.state_dict(),
                          "text_ema": text_ema.state_dict() if text_ema is not None else None} if train_text else {})},
                     ckpt_path)

    bar = tqdm(total=steps, initial=step, desc="train unet", disable=not progress, dynamic_ncols=True)
    while step < steps:
        t0 = time.time()
        idx = torch.randint(0, len(data), (batch_size,), generator=gen)
        x0 = data.latent_batch(idx).to(device)
        drop = torch.rand(batch_size, generator=gen).to(device) < config.cfg_dropout
        noise = torch.randn(x0.shape, generator=gen).to(device)
        t = torch.randint(0, sched.config.num_train_timesteps, (batch_size,), generator=gen).to(device)
        added = None
        if encode is not None:
            with torch.no_grad():
                cond, added = encode(["" if d else data.captions[i] for i, d in zip(idx.tolist(), drop.tolist())])
            cond = cond.to(device)
            added = {k: v.to(device) for k, v in added.items()} if added else None
        else:
            ids = torch.where(drop[:, None], uncond_ids[None], data.input_ids[idx].to(device))
            with torch.set_grad_enabled(train_text):
                cond = text_encoder(ids)[0]
        xt = sched.add_noise(x0, noise, t)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            pred = unet(xt, t, cond, added_cond_kwargs=added).sample
        w = min_snr_weight(alphas_cumprod, t, config.min_snr_gamma, kind)
        target = prediction_target(sched, x0, noise, t)
        loss = (w * F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))).mean()
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite training loss at step {step}")
        opt.zero_grad(set_to_none=True)
        (scaler.scale(loss) if scaler is not None else loss).backward()
        if scaler is not None:
            scaler.unscale_(opt)  # clip the true gradients
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()
        lr_sched.step()
        with torch.no_grad():
            for avg, model in averaged:
                for pe, p in zip(avg.parameters(), model.parameters()):
                    pe.lerp_(p.detach(), 1 - ema_decay)
                # buffers (BatchNorm's running statistics) are copied, not averaged (timm's ModelEmaV3 default):
                # otherwise the final load below would put the statistics from before training back
                for be, b in zip(avg.buffers(), model.buffers()):
                    be.copy_(b)
        step += 1
        losses.append(float(loss.detach()))
        seconds += time.time() - t0
        bar.update(1)
        bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
        if on_step is not None:
            on_step({"step": step, "loss": losses[-1]})
        if ckpt_path and (step % config.ckpt_every == 0 or step == steps):
            checkpoint()
    bar.close()
    for avg, model in averaged:
        model.load_state_dict(avg.state_dict())
    unet.eval()
    text_encoder.eval().requires_grad_(False)
    return {"steps": step, "loss": losses, "seconds": seconds}


def write_record(path: Path, **record) -> None:
    """Provenance next to shipped weights: config, seed, git revision, timings."""
    record.setdefault("git_revision", git_revision(Path(__file__).parent))
    record.setdefault("torch", torch.__version__)
    path.write_text(json.dumps(record, indent=2, default=str))
