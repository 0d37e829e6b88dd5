"""Rebuild every shipped tiny_sd weight from scratch: `python -m tiny_sd.train` (stages resume).

Stages, each checkpointed under ``--work`` and resumable after an interruption:
  tokenizer -> clip (contrastive tiny CLIPModel; its text tower becomes the conditioner)
            -> vae (AutoencoderKL, 64x64x3 <-> 16x16x4)
            -> unet (DDPM on latents, caption dropout for CFG; see training.py)
            -> export (one StableDiffusionPipeline folder, fp16 safetensors, + train_record.json)
            -> evaluator (`python -m metrics.evaluator --train`: trained apart from the conditioner, with
               another seed and another image architecture, so it judges tiny_sd without sharing its biases)
A run that outlives a session resumes from --work; on a new machine, `--stages unet,export --warm-start`
continues from the shipped UNet.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from foundation.training import fit

from . import arch, shapes, training
from . import tokenizer as tok

PACKAGE_DIR = Path(__file__).parent
PIPELINE_DIR = PACKAGE_DIR / "weights" / "pipeline"

DEFAULTS = dict(
    seed=1234,
    clip_steps=400, clip_batch=128, clip_lr=1e-3,
    vae_steps=2500, vae_batch=16, vae_lr=1e-3, vae_kl=1e-6,
    unet_steps=6000, unet_batch=64, unet_lr=5e-4, unet_data=40000, unet_lr_final=-1.0, text_lr=-1.0,
)  # unet_lr_final < 0: constant learning rate after warm-up; >= 0: cosine decay to it.
# text_lr > 0: fine-tune the conditioner jointly with the UNet at that peak rate (GLIDE-style, see training.py)


def _sample_stream(seed: int, offset: int, n: int):
    imgs, caps, _ = shapes.batch(seed, range(offset, offset + n))
    return imgs, caps


# ---------------------------------------------------------------------------------------------
# CLIP: text tower = the conditioner, trained with the symmetric InfoNCE loss (Radford et al. 2021)

def clip_loss(img_emb: torch.Tensor, txt_emb: torch.Tensor, scale: torch.Tensor, same: torch.Tensor) -> torch.Tensor:
    """Symmetric contrastive loss with soft targets: identical captions in a batch are all positives
    (the shapes world repeats captions, and treating duplicates as negatives would be wrong)."""
    logits = scale * F.normalize(img_emb, dim=-1) @ F.normalize(txt_emb, dim=-1).T
    target = same / same.sum(1, keepdim=True)
    return 0.5 * (torch.sum(-target * logits.log_softmax(1), 1).mean()
                  + torch.sum(-target * logits.log_softmax(0).T, 1).mean())


def train_clip(work: Path, tokenizer, cfg: dict):
    from transformers import CLIPConfig, CLIPModel

    ccfg = CLIPConfig(text_config=arch.clip_text_config(len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id),
                      vision_config=arch.clip_vision_config(), projection_dim=64)
    torch.manual_seed(cfg["seed"])
    model = CLIPModel(ccfg)
    B = cfg["clip_batch"]

    def loss_at(step: int) -> torch.Tensor:
        imgs, caps = _sample_stream(shapes.TRAIN_SEED, 10_000_000 + step * B, B)
        same = torch.tensor([[a == b for b in caps] for a in caps], dtype=torch.float32)
        out = model(input_ids=training.tokenize(tokenizer, caps), pixel_values=training.images_to_tensor(imgs))
        return clip_loss(out.image_embeds, out.text_embeds, model.logit_scale.exp().clamp(max=100), same)

    step = fit(model, cfg["clip_steps"], loss_at, lr=cfg["clip_lr"], weight_decay=0.1, ckpt=work / "clip" / "state.pt",
               desc="train clip")
    model.eval()
    # retrieval accuracy on held-out data: does the text tower tell captions apart?
    with torch.no_grad():
        imgs, caps = _sample_stream(shapes.HELDOUT_SEED, 0, 512)
        out = model(input_ids=training.tokenize(tokenizer, caps), pixel_values=training.images_to_tensor(imgs))
        sim = out.logits_per_image
        same = torch.tensor([[a == b for b in caps] for a in caps])
        acc = same[torch.arange(512), sim.argmax(1)].float().mean().item()
    return model, {"clip_heldout_top1": acc, "clip_steps": step}


# ---------------------------------------------------------------------------------------------
# VAE

def object_colour_accuracy(images: np.ndarray, samples) -> float:
    """Share of objects whose median colour (over the mask's interior) is nearest their true colour.

    Pixel-level agreement is dominated by background; this is the number that says whether a
    reconstructed "purple circle" is still purple.
    """
    from scipy.ndimage import binary_erosion

    protos = np.array(list(shapes.COLOURS.values()), np.float32)
    names = list(shapes.COLOURS)
    hits = []
    for img, s in zip(images, samples):
        for o, m in zip(s.objects, s.object_masks):
            inner = binary_erosion(m, iterations=2)
            c = np.median(img[inner if inner.any() else m].astype(np.float32), axis=0)
            hits.append(names[int(np.linalg.norm(protos - c, axis=1).argmin())] == o.colour)
    return float(np.mean(hits))


def train_vae(work: Path, cfg: dict):
    torch.manual_seed(cfg["seed"] + 1)
    vae = arch.build_vae()
    B = cfg["vae_batch"]

    def loss_at(step: int) -> torch.Tensor:
        imgs, _ = _sample_stream(shapes.TRAIN_SEED, 20_000_000 + step * B, B)
        x = training.images_to_tensor(imgs)
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.sample()).sample
        # L1 + L2 reconstruction keeps flat colours and sharp edges; a tiny KL keeps the latent
        # well-behaved for diffusion (Rombach et al. 2022, "KL-reg." autoencoder).
        return F.l1_loss(rec, x) + F.mse_loss(rec, x) + cfg["vae_kl"] * post.kl().mean()

    step = fit(vae, cfg["vae_steps"], loss_at, lr=cfg["vae_lr"], weight_decay=0.0, ckpt=work / "vae" / "state.pt",
               desc="train vae")
    vae.eval()
    with torch.no_grad():
        imgs, _ = _sample_stream(shapes.HELDOUT_SEED, 0, 256)
        x = training.images_to_tensor(imgs)
        z = vae.encode(x).latent_dist.mean
        rec = vae.decode(z).sample
        # scaling factor so latents have unit variance, as SD's 0.18215 (Rombach et al. 2022, Sec. 4.3.2)
        scale = float(1.0 / z.std())
        rec_u8 = ((rec.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
        seg_acc = float(np.mean([(shapes.colour_segmentation(r) == shapes.colour_segmentation(i)).mean()
                                 for r, i in zip(rec_u8, imgs)]))
        obj_acc = object_colour_accuracy(rec_u8, shapes.batch(shapes.HELDOUT_SEED, range(256))[2])
        mae = float((rec - x).abs().mean() * 127.5)
    vae.register_to_config(scaling_factor=scale)
    return vae, {"vae_scaling_factor": scale, "vae_heldout_mae_u8": mae, "vae_heldout_segmentation_acc": seg_acc,
                 "vae_heldout_object_colour_acc": obj_acc,
                 "vae_steps": step}


# ---------------------------------------------------------------------------------------------
# UNet + export

def assemble(tokenizer, text_encoder, vae, unet):
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    return StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=DDIMScheduler(**arch.scheduler_config()), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)


def unet_history(rec: dict) -> list[str]:
    """The exported UNet's training stages, oldest first: the warm-start source's stages plus this run's."""
    before = rec.get("unet_steps_before_warm_start", 0)
    history = rec.get("unet_history_before") or ([f"steps 0-{before}: not recorded"] if before else [])
    c, steps = rec["config"], rec.get("unet_steps", 0)
    lr = (f"cosine {c['unet_lr']:g} -> {c['unet_lr_final']:g}" if c["unet_lr_final"] >= 0
          else f"constant LR {c['unet_lr']:g} after warm-up")
    text = f", text encoder trained jointly (peak LR {c['text_lr']:g})" if c.get("text_lr", -1) > 0 else ""
    entry = (f"steps {before}-{before + steps}: {tok.MODEL_MAX_LENGTH}-token context, "
             f"{c['unet_data']:,} training images, {'warm start, ' if rec.get('warm_started_from') else ''}{lr}"
             f"{text}"
             f"{', EMA snapshot of a run still in progress' if rec.get('unet_snapshot') else ''}")
    return [*history, entry]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default="runs/tiny_sd", help="checkpoint directory (resume reads it)")
    p.add_argument("--out", default=str(PIPELINE_DIR), help="where the pipeline folder is written")
    p.add_argument("--stages", default="tokenizer,clip,vae,unet,export,evaluator")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    p.add_argument("--warm-start", action="store_true",
                   help="start the UNet from the shipped weights when no checkpoint is in --work (resume across machines)")
    for k, v in DEFAULTS.items():
        p.add_argument(f"--{k.replace('_', '-')}", type=type(v), default=v)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = {k: getattr(args, k) for k in DEFAULTS}
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    stages = args.stages.split(",")
    record_path = work / "record.json"

    trains = any(st in stages for st in ("clip", "vae", "unet"))

    def update_record(**kv):
        # re-read first: stages may run as separate processes sharing one work dir
        rec = json.loads(record_path.read_text()) if record_path.exists() else {}
        rec.update(kv)
        if trains or "config" not in rec:  # an export-only run must not replace the training run's config
            rec["config"] = cfg
        record_path.write_text(json.dumps(rec, indent=2))
        return rec

    tok_dir = tok.build_files(work / "tokenizer")
    tokenizer = tok.load(tok_dir)

    def done(name, model_obj):
        model_obj.save_pretrained(work / f"{name}_final")

    if "clip" in stages:
        t = time.time()
        model, info = train_clip(work, tokenizer, cfg)
        done("clip", model)
        update_record(**info, clip_seconds=time.time() - t)
    if "vae" in stages:
        t = time.time()
        vae, info = train_vae(work, cfg)
        done("vae", vae)
        update_record(**info, vae_seconds=time.time() - t)
    if "unet" in stages or "export" in stages:
        from diffusers import AutoencoderKL
        from transformers import CLIPModel, CLIPTextModel

        if (work / "clip_final").exists() or not args.warm_start:
            clip = CLIPModel.from_pretrained(work / "clip_final")
            text_encoder = CLIPTextModel(clip.config.text_config)
            # transformers 5 nests a CLIPTextModel in CLIPModel; 4.x nests its inner transformer
            target = getattr(text_encoder, "text_model", text_encoder)
            target.load_state_dict(clip.text_model.state_dict())
        else:  # warm start on a new machine: the conditioner the shipped UNet was trained with
            text_encoder = CLIPTextModel.from_pretrained(Path(args.out) / "text_encoder", torch_dtype=torch.float32)
        text_encoder.eval()
        if (work / "vae_final").exists() or not args.warm_start:
            vae = AutoencoderKL.from_pretrained(work / "vae_final").eval()
        else:
            vae = AutoencoderKL.from_pretrained(Path(args.out) / "vae", torch_dtype=torch.float32).eval()
        torch.manual_seed(cfg["seed"] + 2)
        unet = arch.build_unet()
        if args.warm_start and not (work / "unet" / "train_state.pt").exists():
            # a new machine/session: continue from the shipped weights rather than from zero
            from diffusers import UNet2DConditionModel

            unet.load_state_dict(UNet2DConditionModel.from_pretrained(Path(args.out) / "unet").float().state_dict())
            shipped = json.loads((Path(args.out) / "train_record.json").read_text())
            if not record_path.exists():  # carry the CLIP/VAE provenance of the shipped weights forward
                update_record(**{k: v for k, v in shipped.items() if k.startswith(("clip_", "vae_"))})
            update_record(warm_started_from=os.path.relpath(Path(args.out) / "unet"),
                          unet_history_before=shipped.get("unet_history", []),
                          unet_steps_before_warm_start=shipped.get("unet_total_steps", shipped.get("unet_steps", 0)),
                          unet_seconds_before_warm_start=shipped.get("unet_total_seconds",
                                                                     shipped.get("unet_seconds", 0.0)))
        if "unet" in stages:
            pipe = assemble(tokenizer, text_encoder, vae, unet)
            data = training.encode_shapes(pipe, cfg["unet_data"], shapes.TRAIN_SEED)
            config = training.TrainConfig(steps=cfg["unet_steps"], batch_size=cfg["unet_batch"], lr=cfg["unet_lr"],
                                          seed=cfg["seed"],
                                          lr_final=cfg["unet_lr_final"] if cfg["unet_lr_final"] >= 0 else None,
                                          text_lr=cfg["text_lr"] if cfg["text_lr"] > 0 else None)
            res = training.train_unet(unet, text_encoder, data, config, ckpt_dir=work / "unet")
            unet.save_pretrained(work / "unet_final")
            if cfg["text_lr"] > 0:
                text_encoder.save_pretrained(work / "text_encoder_final")
            update_record(unet_steps=res["steps"], unet_seconds=res["seconds"],
                          unet_final_loss=float(np.mean(res["loss"][-200:])),
                          unet_command=" ".join(["python -m tiny_sd.train", shlex.join(argv or sys.argv[1:])]))
        if "export" in stages:
            from diffusers import UNet2DConditionModel

            from foundation.checkpoints import save_pipeline

            if (work / "unet_final" / "config.json").exists():
                unet = UNet2DConditionModel.from_pretrained(work / "unet_final")
                if (work / "text_encoder_final" / "config.json").exists():  # fine-tuned with this UNet
                    text_encoder = CLIPTextModel.from_pretrained(work / "text_encoder_final").eval()
                update_record(unet_snapshot=False)
            else:  # snapshot of a run still in progress: the EMA weights of its last checkpoint
                st = torch.load(work / "unet" / "train_state.pt", weights_only=False)
                unet.load_state_dict(st["ema"] if st.get("ema") is not None else st["unet"])
                if "text_encoder" in st:  # the conditioner is part of the snapshot when it was trained too
                    text_encoder.load_state_dict(st["text_ema"] if st.get("text_ema") is not None
                                                 else st["text_encoder"])
                update_record(unet_steps=st["step"], unet_seconds=st["seconds"], unet_snapshot=True,
                              unet_final_loss=float(np.mean(st["losses"][-200:])))
            rec = update_record()
            update_record(unet_total_steps=rec.get("unet_steps_before_warm_start", 0) + rec.get("unet_steps", 0),
                          unet_total_seconds=rec.get("unet_seconds_before_warm_start", 0) + rec.get("unet_seconds", 0),
                          unet_history=unet_history(rec),
                          tokenizer_model_max_length=tok.MODEL_MAX_LENGTH)
            pipe = assemble(tokenizer, text_encoder, vae, unet)
            out = Path(args.out)
            save_pipeline(pipe.to(torch.float16), out)  # text encoder keys under text_model., as SD's
            # fp16 on disk, but the text encoder's config must not say so: transformers 5 loads in the config's
            # dtype while diffusers loads the UNet/VAE in fp32, so a plain `from_pretrained` would mix Half and Float
            te_cfg = out / "text_encoder" / "config.json"
            te_cfg.write_text(te_cfg.read_text().replace('"dtype": "float16"', '"dtype": "float32"'))
            # transformers 5 saves only tokenizer.json; keep CLIP's vocab.json + merges.txt too, so the folder
            # loads with any CLIPTokenizer (slow or fast, transformers 4 or 5) as SD checkpoints do
            for f in ("vocab.json", "merges.txt", "special_tokens_map.json"):
                shutil.copy(tok_dir / f, out / "tokenizer" / f)
            training.write_record(out / "train_record.json", **update_record())
    if "evaluator" in stages:
        from metrics.evaluator.__main__ import main as evaluator_main

        evaluator_main(["--train", "--threads", str(args.threads or 1)])
    print(record_path.read_text())


if __name__ == "__main__":
    main()
