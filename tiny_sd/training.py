"""The denoiser training loop of tiny_sd, shared by the foundation's training and the ablation protocols.

DDPM epsilon-prediction loss (Ho et al. 2020, Eq. 14) on VAE latents, with
- caption dropout (p = 0.1) to the empty prompt, which is what classifier-free guidance needs
  (Ho & Salimans 2022);
- Min-SNR-gamma loss weighting (Hang et al. 2023), w_t = min(SNR_t, gamma) / SNR_t for epsilon
  prediction: it balances the timesteps and converges ~3x faster, which matters on a 2-core CPU;
- an EMA of the weights (decay 0.999) used for sampling;
- periodic checkpoints (model, EMA, optimizer, RNG, loss history) written atomically, and resume;
- optionally (`text_lr`) the text encoder fine-tuned jointly with the denoiser, as GLIDE trains its text
  transformer with the diffusion loss (Nichol et al. 2022, Sec. 4). A tiny contrastive CLIP pools only its
  end-of-text state, so nothing trains its per-word states: in the contrastive conditioner the state of "square" in
  "a red circle left of a blue square" has cosine 0.986 (mean-centred) with that of "circle" in
  "... a blue circle" -- the second object's shape barely reaches the UNet. The denoising loss does train them.
- optionally (`null_tail`, with `text_lr`) a conditioner whose end-of-text and padding states carry no prompt:
  the UNet is trained on states whose tail (end-of-text token onwards) is the empty prompt's, and the text encoder
  is pulled there by an MSE term (weight `null_tail`), so the shipped standard CLIPTextModel gives the same states
  in any diffusers pipeline. Why: a causal text encoder's tail summarises the whole prompt, and a tiny UNet that
  reads the content from there attends to the words themselves with ~4 % of its attention, spread over the image --
  the word heatmaps the probes show then say little (Toker et al. 2025, "Padding Tone", analyse how T2I models use
  padding tokens). Measured on tiny_sd it did not localise the maps and cost sample quality in a 3,500-step run
  (docs/probes.md); the shipped weights do not use it.
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

from . import shapes

CACHE_DIR = Path.home() / ".cache" / "unet_lab"


@dataclass
class LatentData:
    """Training set in latent space: scaled latents and token ids of the captions."""

    latents: torch.Tensor  # (N, 4, h, w), already multiplied by the VAE scaling factor
    input_ids: torch.Tensor  # (N, tokenizer.model_max_length) int64
    captions: list[str]

    def __len__(self) -> int:
        return len(self.latents)


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


@torch.no_grad()
def encode_shapes(pipe, n: int, seed: int = shapes.TRAIN_SEED, batch_size: int = 256,
                  cache: bool = True, progress: bool = True) -> LatentData:
    """Encode n shapes-world samples with the pipeline's VAE (posterior mean), cached on disk.

    Only latents and captions are cached (keyed by the VAE's weights); token ids are made with the pipeline's
    tokenizer on every call, so a tokenizer with another context length never reads stale ids.
    """
    vae, tokenizer = pipe.vae, pipe.tokenizer
    key = f"shapes_{seed}_{n}_{_module_hash(vae)}"
    path = CACHE_DIR / "latents" / f"{key}.pt"
    if cache and path.exists():
        d = torch.load(path)
        return LatentData(d["latents"], tokenize(tokenizer, d["captions"]), d["captions"])
    device = next(vae.parameters()).device
    dtype = next(vae.parameters()).dtype
    lats, caps = [], []
    for start in tqdm(range(0, n, batch_size), desc="encode shapes", disable=not progress):
        imgs, c, _ = shapes.batch(seed, range(start, min(n, start + batch_size)))
        x = images_to_tensor(imgs).to(device, dtype)
        lats.append(vae.encode(x).latent_dist.mean.float().cpu() * vae.config.scaling_factor)
        caps += c
    data = LatentData(torch.cat(lats), tokenize(tokenizer, caps), caps)
    if cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save({"latents": data.latents, "captions": caps}, tmp)
        tmp.replace(path)
    return data


def min_snr_weight(alphas_cumprod: torch.Tensor, t: torch.Tensor, gamma: float | None) -> torch.Tensor:
    """Min-SNR-gamma weight for the epsilon loss (Hang et al. 2023, Eq. 5): min(SNR, gamma) / SNR."""
    if gamma is None:
        return torch.ones_like(t, dtype=torch.float32)
    a = alphas_cumprod[t]
    snr = a / (1 - a)
    return torch.clamp(snr, max=gamma) / snr


def lr_factor(step: int, steps: int, warmup: int, final_ratio: float | None) -> float:
    """Multiplier of the base learning rate: linear warm-up, then constant or cosine down to `final_ratio`."""
    if step < warmup:
        return (step + 1) / max(1, warmup)
    if final_ratio is None:
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, steps - warmup))
    return final_ratio + (1 - final_ratio) * 0.5 * (1 + np.cos(np.pi * progress))


def _save_atomic(obj, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    tmp.replace(path)


def train_unet(unet, text_encoder, data: LatentData, *, steps: int, batch_size: int = 64, lr: float = 3e-4,
               seed: int = 0, cfg_dropout: float = 0.1, ckpt_dir: str | Path | None = None,
               ckpt_every: int = 250, ema_decay: float | None = 0.999, progress: bool = True,
               min_snr_gamma: float | None = 5.0, warmup: int = 100, uncond_ids: torch.Tensor | None = None,
               scheduler_config: dict | None = None, on_step=None, lr_final: float | None = None,
               text_lr: float | None = None, null_tail: float | None = None) -> dict:
    """Train `unet` in place for `steps` optimizer steps (resuming from `ckpt_dir` if a checkpoint is there).

    `uncond_ids` are the token ids of the empty prompt (caption dropout target); by default the
    ids of the end-of-text padding with a start token, i.e. what `tokenizer("")` gives.
    `on_step(dict)` receives {"step", "loss"} after each step (k-diffusion-style progress callback).
    The learning rate warms up linearly over `warmup` steps, then stays at `lr` or, with `lr_final`, follows a
    cosine from `lr` down to `lr_final` at `steps` (Loshchilov & Hutter 2017), which is how a long run ends.
    With `text_lr`, `text_encoder` is trained too (in place, same schedule scaled to `text_lr`, its own EMA);
    otherwise it stays frozen, which is what the ablation protocols need. `null_tail` (needs `text_lr`): see the
    module docstring; the UNet and the text encoder are then gradient-clipped apart, so the tail term's early large
    gradients cannot shrink the UNet's steps.
    """
    from diffusers import DDPMScheduler

    from .arch import scheduler_config as default_sched

    device = next(unet.parameters()).device
    sched = DDPMScheduler.from_config(scheduler_config or default_sched())  # ignores DDIM-only keys
    alphas_cumprod = sched.alphas_cumprod.to(device)
    train_text = bool(text_lr)
    if null_tail and not train_text:
        raise ValueError("null_tail trains the text encoder's tail states: it needs text_lr")
    text_encoder = text_encoder.to(device).eval().requires_grad_(train_text)
    if uncond_ids is None:
        uncond_ids = data.input_ids[0].clone()
        uncond_ids[1:] = int(uncond_ids[-1])
    uncond_ids = uncond_ids.to(device)
    eos_id = int(uncond_ids[-1])  # the padding id; tiny_sd's tokenizer (like SD 1.x's) pads with end-of-text

    unet.train()
    groups = [{"params": list(unet.parameters()), "lr": lr}]
    if train_text:
        groups.append({"params": list(text_encoder.parameters()), "lr": text_lr})
    opt = torch.optim.AdamW(groups, lr=lr, weight_decay=0.01)
    final_ratio = lr_final / lr if lr_final is not None else None
    lr_sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, steps, warmup, final_ratio))
    ema = copy.deepcopy(unet).eval().requires_grad_(False) if ema_decay else None
    # the sampler pairs the EMA UNet with the text states it was averaged against, so the text encoder gets one too
    text_ema = copy.deepcopy(text_encoder).requires_grad_(False) if ema_decay and train_text else None
    averaged = [(avg, model) for avg, model in ((ema, unet), (text_ema, text_encoder)) if avg is not None]
    params = [p for g in groups for p in g["params"]]
    # clipped together, except under null_tail, where the tail term's gradients must not shrink the UNet's
    clip_sets = [g["params"] for g in groups] if null_tail else [params]
    gen = torch.Generator().manual_seed(seed)
    step, losses, seconds, tail_losses = 0, [], 0.0, []

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
        step, losses, seconds = st["step"], st["losses"], st.get("seconds", 0.0)
        tail_losses = st.get("tail_losses", [])

    def checkpoint():
        ckpt_path.parent.mkdir(parents=True, exist_ok=True)
        _save_atomic({"unet": unet.state_dict(), "opt": opt.state_dict(), "lr_sched": lr_sched.state_dict(),
                      "ema": ema.state_dict() if ema is not None else None, "gen": gen.get_state(),
                      "step": step, "losses": losses, "seconds": seconds, "tail_losses": tail_losses,
                      **({"text_encoder": text_encoder.state_dict(),
                          "text_ema": text_ema.state_dict() if text_ema is not None else None} if train_text else {})},
                     ckpt_path)

    bar = tqdm(total=steps, initial=step, desc="train unet", disable=not progress, dynamic_ncols=True)
    while step < steps:
        t0 = time.time()
        idx = torch.randint(0, len(data), (batch_size,), generator=gen)
        x0 = data.latents[idx].to(device)
        ids = data.input_ids[idx].to(device)
        drop = torch.rand(batch_size, generator=gen).to(device) < cfg_dropout
        ids = torch.where(drop[:, None], uncond_ids[None], ids)
        noise = torch.randn(x0.shape, generator=gen).to(device)
        t = torch.randint(0, sched.config.num_train_timesteps, (batch_size,), generator=gen).to(device)
        with torch.set_grad_enabled(train_text):
            cond = text_encoder(ids)[0]
        tail_loss = None
        if null_tail:
            null = text_encoder(uncond_ids[None])[0]
            tail = null_tail_mask(ids, eos_id)[..., None]
            tail_loss = ((cond - null.detach()).pow(2) * tail).sum() / (tail.sum() * cond.shape[-1]).clamp_min(1)
            cond = torch.where(tail, null.expand_as(cond), cond)
        xt = sched.add_noise(x0, noise, t)
        pred = unet(xt, t, cond).sample
        w = min_snr_weight(alphas_cumprod, t, min_snr_gamma)
        loss = (w * F.mse_loss(pred.float(), noise.float(), reduction="none").mean(dim=(1, 2, 3))).mean()
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite training loss at step {step}")
        opt.zero_grad(set_to_none=True)
        (loss + null_tail * tail_loss if tail_loss is not None else loss).backward()
        for ps in clip_sets:
            torch.nn.utils.clip_grad_norm_(ps, 1.0)
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
        if tail_loss is not None:
            tail_losses.append(float(tail_loss.detach()))
        seconds += time.time() - t0
        bar.update(1)
        bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}",
                        **({"tail": f"{np.mean(tail_losses[-50:]):.4f}"} if tail_losses else {}))
        if on_step is not None:
            on_step({"step": step, "loss": losses[-1]})
        if ckpt_path and (step % ckpt_every == 0 or step == steps):
            checkpoint()
    bar.close()
    for avg, model in averaged:
        model.load_state_dict(avg.state_dict())
    unet.eval()
    text_encoder.eval().requires_grad_(False)
    return {"steps": step, "loss": losses, "seconds": seconds, "tail_loss": tail_losses}


def null_tail_mask(ids: torch.Tensor, eos_id: int) -> torch.Tensor:
    """(B, T) bool: the end-of-text token and everything after it (the padding) in each row of token ids."""
    is_eos = ids == eos_id
    return is_eos.long().cumsum(1) > 0


def write_record(path: Path, **record) -> None:
    """Provenance next to shipped weights: config, seed, git revision, timings."""
    import subprocess

    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).parent, timeout=10).stdout.strip()
    except Exception:  # noqa: BLE001 - provenance is best effort outside a git checkout
        rev = ""
    record.setdefault("git_revision", rev)
    record.setdefault("torch", torch.__version__)
    path.write_text(json.dumps(record, indent=2, default=str))
