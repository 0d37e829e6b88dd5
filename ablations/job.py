"""One sweep job: `run(cfg, out_dir) -> dict` (pure of Hydra: `__main__` passes Hydra's output dir).

Steps: resume check (`resume.py`) -> validate the ablation on the base (no compute) -> build the variant under the
protocol -> train (checkpointed) -> denoising loss -> sample with paired seeds -> score -> write the job files of
docs/CONTRACTS.md: `config.yaml` first, `samples.png`, then `result.json` last and atomically, so a
`result.json` with status "ok" means the job is complete (that is what resume trusts).

Every exception (including out-of-memory and non-finite losses or samples) is caught and written as
`status: "failed"` with the error: Hydra skips `on_multirun_end` when one job raises, and a sweep must go on.
"""

from __future__ import annotations

import logging
import shutil
import time
import traceback
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from foundation import sampling
from foundation.io import write_json
from foundation.loading import load_pipeline
from foundation.stats import bootstrap_mean_ci
from foundation.values import plain
from tiny_sd import training

from . import data as jobdata
from . import distributed, protocols, scoring, surgery
from .conditioning import PromptEncoder
from .images import save_grid
from .preflight import check_budget
from .resume import (ATTEMPTS, MAX_ATTEMPTS, RESULT, ablation_spec, claim_checkpoint, config_hash, finished,
                     identity, job_key, start_attempt)

log = logging.getLogger(__name__)


def _set_seed(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


def compute(cfg, out_dir: Path, spec: dict) -> dict | None:
    """The work of a job; raises on any failure. Returns the metric part of result.json (None on ranks > 0 of a
    distributed job: rank 0 writes)."""
    check_budget(cfg)  # a bad budget value would otherwise fail only after training (the CLI checks it earlier too)
    rank, world = distributed.setup()
    b, proto, seed = cfg.budget, plain(cfg.protocol), int(cfg.seed)
    pipe = load_pipeline(cfg.model.path, device=distributed.local_device(cfg.model.device), dtype=cfg.model.dtype,
                         download=bool(cfg.model.get("download", False)))
    data = jobdata.check(cfg, pipe)  # data that cannot serve this model: refused before any compute
    base = pipe.unet
    surgery.validate(base, spec, from_scratch=proto["name"] == "scratch")  # fail before any compute
    plan = protocols.training_plan(proto, seed)
    _set_seed(seed)
    unet = protocols.build_variant(base, spec, proto["name"], seed)
    encode = PromptEncoder(pipe, data.resolution)
    history = {"steps": 0, "loss": [], "seconds": 0.0}
    n_train, train_id = 0, None
    if plan["steps"]:
        err = None
        if rank == 0:  # rank 0 trains, the others receive its weights
            try:
                train = jobdata.first(data.train, int(b.train_data))
                n_train, train_id = len(train), train.id
                rows = training.latent_data(pipe.vae, train, resolution=data.resolution,
                                            all_captions=data.all_captions, progress=cfg.progress)
                claim_checkpoint(out_dir / "ckpt", job_key(cfg, spec))
                history = protocols.train(unet, pipe.text_encoder, rows, plan, out_dir / "ckpt",
                                          scheduler_config=pipe.scheduler.config, progress=cfg.progress,
                                          encode=encode)
            except Exception as e:  # noqa: BLE001 - re-raised below, on every rank
                if world == 1:
                    raise
                log.exception("rank 0: training failed")
                err = f"{type(e).__name__}: {e}"
        distributed.agree(err)
        distributed.broadcast_module(unet)

    prompts, prompt_prov = jobdata.prompts(cfg, data, int(b.n_images))
    seeds = sampling.image_seeds(seed, len(prompts))
    bs, n_grid = int(b.sample_batch), int(b.grid_images)
    use_images = scoring.use_image_metrics(cfg)
    # set up before sampling: a primary metric that can never be computed fails now, not after an hour of sampling
    scorer = scoring.scorer(plain(cfg.get("metrics")), data.heldout, unet.device) if use_images else None
    parts, grid, err = [], [], None
    try:
        for bi, imgs in sampling.sample_batches(
                pipe, unet, prompts, seeds, sample_steps=int(b.sample_steps), guidance_scale=float(b.guidance_scale), batch_size=bs,
                resolution=data.resolution, batches=distributed.batches_of(rank, world, sampling.n_batches(len(prompts), bs)),
                progress=cfg.progress):
            if not torch.isfinite(imgs).all():
                raise FloatingPointError("non-finite samples")
            lo = bi * bs
            if lo < n_grid:
                grid.append((bi, imgs[: n_grid - lo]))
            parts.append((bi, scorer.extract(imgs, prompts[lo:lo + len(imgs)]) if scorer else None))
    except Exception as e:  # noqa: BLE001 - re-raised below, on every rank
        if world == 1:
            raise
        log.exception("rank %d: sampling failed", rank)
        err = f"{type(e).__name__}: {e}"
    distributed.agree(err)
    gathered = distributed.gather((parts, grid))
    if rank != 0:
        return None
    parts = sorted((p for ps, _ in gathered for p in ps), key=lambda p: p[0])
    grid = sorted((g for _, gs in gathered for g in gs), key=lambda g: g[0])
    save_grid(torch.cat([g for _, g in grid]), out_dir / "samples.png")

    val = training.latent_data(pipe.vae, jobdata.first(data.heldout, int(b.val_data)), resolution=data.resolution,
                               all_captions=False, progress=cfg.progress)
    dl = scoring.denoising_loss(unet, encode, val, scheduler_config=pipe.scheduler.config)
    if not np.isfinite(dl).all():
        raise FloatingPointError("non-finite denoising loss")
    target = {"v_prediction": "v", "sample": "x0"}.get(pipe.scheduler.config.get("prediction_type", "epsilon"), "eps")
    metrics = {"denoising_loss": float(dl.mean())}
    ci = {"denoising_loss": list(bootstrap_mean_ci(dl, n_boot=1000)[1:])}
    hib = {"denoising_loss": False}
    prov = {"denoising_loss": f"unweighted {target}-MSE, {len(dl)} held-out latents of {data.heldout.id}, fixed "
                              f"t/noise (seed 1234)"}
    generation = {"seeds": f"image i of job seed k: 1000003*k + i (k={seed})", "sampler": type(pipe.scheduler).__name__,
                  "sample_steps": int(b.sample_steps), "guidance_scale": float(b.guidance_scale), "resolution": data.resolution}
    if scorer is not None:
        for _, part in parts:
            scorer.add(part)
        s = scorer.compute(generation)
        metrics.update(s["metrics"]), ci.update(s["ci"]), hib.update(s["higher_is_better"]), prov.update(s["provenance"])
    else:
        prov["image_metrics"] = f"not computed (image_metrics={cfg.image_metrics}; evaluator weights present: " \
                                f"{scoring.image_metrics_available()})"
    prov.update({**generation, "n": len(prompts), "prompts": prompt_prov, "model": str(cfg.model.path),
                 "data": jobdata.describe(data, train_id, n_train, len(dl)), "ranks": world,
                 "device": unet.device.type, "dtype": str(unet.dtype).removeprefix("torch."),
                 "train_steps": history["steps"], "train_batch_size": plan["batch_size"], "train_lr": plan["lr"],
                 "train_data": n_train, "train_precision": protocols.resolve_precision(plan["precision"], unet.device)
                 if plan["steps"] else None, "gradient_checkpointing": plan["gradient_checkpointing"],
                 "min_snr_gamma": plan["min_snr_gamma"]})
    if cfg.data.get("allow_any_model"):
        prov["data"]["allow_any_model"] = True
    if history["loss"]:
        metrics["train_loss_last"] = float(np.mean(history["loss"][-max(1, len(history["loss"]) // 10):]))
        hib["train_loss_last"] = False
    return {"metrics": metrics, "ci": ci, "higher_is_better": hib, "provenance": prov,
            "train": {"steps": history["steps"], "seconds": history["seconds"]},
            "params": sum(p.numel() for p in unet.parameters())}


def run(cfg, out_dir: str | Path) -> dict:
    """Run one job into `out_dir` and return its result record (never raises for a failing variant)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rank, world = distributed.setup()
    main = rank == 0  # only rank 0 of a distributed job writes files
    t0 = time.time()
    record = {"sweep": str(cfg.sweep_name), "variant": str(cfg.variant), "baseline": str(cfg.variant) == str(cfg.baseline),
              "protocol": str(cfg.protocol.name), "seed": int(cfg.seed), "status": "failed", "error": None,
              "metrics": {}, "ci": {}, "higher_is_better": {}, "provenance": {}, "ablation": None, "seconds": 0.0}
    try:
        spec = ablation_spec(cfg)
        record["ablation"] = surgery.resolve(spec)
        done = finished(out_dir, identity(cfg))
    except RuntimeError as e:  # another job's finished result lives here: report, never overwrite it
        log.error("%s", e)
        return {**record, "error": str(e)}
    except Exception as e:  # noqa: BLE001 - an invalid spec is recorded like any failed variant
        done, spec = None, None
        record["error"] = f"{type(e).__name__}: {e}"
    if done is not None:
        log.info("%s seed %s: already finished, skipping (resume)", cfg.variant, cfg.seed)
        return done
    gave_up = False
    try:
        record["config_hash"] = config_hash(cfg)  # in the try: an unusable model.device is a failed job, not a crash
        if spec is None:
            raise ValueError(record["error"])
        gave_up = distributed.broadcast(main and start_attempt(out_dir, job_key(cfg, spec)) > MAX_ATTEMPTS)
        if gave_up:
            # the process running this job died before writing a result, MAX_ATTEMPTS times: a hard crash
            # (segfault, OOM killer) that would otherwise stop every resumed sweep at this same job
            raise RuntimeError(f"the process died {MAX_ATTEMPTS} times while running this job without writing a "
                               f"result (segfault or out-of-memory kill?); recorded as failed and not retried. "
                               f"Delete {out_dir / ATTEMPTS} to try again")
        if main:
            (out_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
        part = compute(cfg, out_dir, spec)
        if not main:
            return {**record, "status": "ok", "error": None, "rank": rank}
        record.update(part)
        record["status"] = "ok"
        if not cfg.keep_checkpoints:
            shutil.rmtree(out_dir / "ckpt", ignore_errors=True)
    except Exception as e:  # noqa: BLE001 - a failed variant is a result (OOM and NaN included), not a crash
        record["error"] = f"{type(e).__name__}: {e}"
        record["traceback"] = traceback.format_exc(limit=8)
        log.error("%s seed %s failed: %s", cfg.variant, cfg.seed, record["error"])
        if torch.cuda.is_available():
            torch.cuda.empty_cache()  # after an OOM, free what the failed variant held before the next job
    record["seconds"] = round(time.time() - t0, 2)
    if not main:
        return {**record, "rank": rank}
    write_json(out_dir / RESULT, record)
    if not gave_up:
        (out_dir / ATTEMPTS).unlink(missing_ok=True)  # kept after a hard crash: later resumes skip the job too
    return record
