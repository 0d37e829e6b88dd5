"""What identifies a sweep job and what its resume trusts (docs/ablations.md, "A job").

A job's identity (sweep, variant, seed, protocol, resolved ablation and `config_hash`) is compared with a stored
`result.json` before anything runs; its key stamps the training checkpoint and the start counter
(`attempts.json`) that gives up on a job whose process keeps dying.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from foundation import loading
from foundation.io import write_json
from foundation.values import plain

from . import surgery

log = logging.getLogger(__name__)
RESULT = "result.json"
ATTEMPTS = "attempts.json"
MAX_ATTEMPTS = 2  # a job whose process died this often (segfault, OOM killer) is recorded as failed, not retried


def ablation_spec(cfg) -> dict:
    """The job's ablation: `variants[variant]` in a sweep, else the `ablation` group node."""
    variants = plain(cfg.get("variants")) or {}
    if variants:
        if cfg.variant not in variants:
            raise ValueError(f"unknown variant {cfg.variant!r}; valid: {', '.join(variants)}")
        return dict(variants[cfg.variant])
    return dict(plain(cfg.ablation))


def precision(cfg) -> dict:
    """The resolved device type and dtype the job runs in ("auto" resolved, so auto and float32 on a CPU agree)."""
    dev = loading.resolve_device(cfg.model.device)
    return {"device": dev.type, "dtype": str(loading.resolve_dtype(cfg.model.dtype, dev)).removeprefix("torch.")}


def config_hash(cfg) -> str:
    """Short hash of everything besides the ablation that moves a job's numbers: the resolved protocol, budget,
    metrics config, data and prompts, model path, device type and dtype. The sweep directory is named by
    `budget.name`/`model.name` only, so without this a re-run with `budget.finetune_steps=10`, another `model.path`
    or `model.dtype=bfloat16` would return the old results. The device index is left out: cuda:0 and cuda:1 compute
    the same numbers."""
    moving = {k: plain(cfg.get(k)) for k in ("protocol", "budget", "metrics", "image_metrics", "data", "prompts")}
    moving["model"] = str(cfg.model.path)
    moving.update(precision(cfg))
    return hashlib.sha256(json.dumps(moving, sort_keys=True, default=str).encode()).hexdigest()[:16]


def identity(cfg) -> dict:
    """What makes a job this job: compared on resume, so a reused directory never returns a stale result."""
    return {"sweep": str(cfg.sweep_name), "variant": str(cfg.variant), "seed": int(cfg.seed),
            "protocol": str(cfg.protocol.name), "ablation": surgery.resolve(ablation_spec(cfg)),
            "config_hash": config_hash(cfg)}


def job_key(cfg, spec: dict) -> str:
    """This job's configuration in one string: stamps its training checkpoint and its start counter."""
    return config_hash(cfg) + json.dumps(surgery.resolve(spec), sort_keys=True)


def finished(out_dir: Path, ident: dict) -> dict | None:
    """The stored result if this exact job already finished with status ok."""
    p = out_dir / RESULT
    if not p.exists():
        return None
    try:
        rec = json.loads(p.read_text())
    except (OSError, ValueError):
        return None
    differ = [k for k, v in ident.items() if rec.get(k) != v]
    if rec.get("status") == "ok" and differ:
        what = ("the same job under another configuration (protocol, budget, metrics, model path, device type or "
                "dtype)" if differ == ["config_hash"]
                else f"another job's result ({ {k: rec.get(k) for k in ident} })")
        raise RuntimeError(f"{p} holds {what}; it is kept. Use a new hydra.sweep.dir (or give variants unique "
                           f"names) to compute this one")
    return rec if rec.get("status") == "ok" else None


def claim_checkpoint(ckpt_dir: Path, key: str) -> None:
    """Resume training only from a checkpoint written by this exact job configuration.

    A checkpoint left by another configuration (a changed budget, say) is moved aside to `ckpt.stale-N`, never
    loaded and never deleted; the directory is then stamped with this job's key.
    """
    stamp = ckpt_dir / "job_key.txt"
    if ckpt_dir.exists() and (not stamp.exists() or stamp.read_text() != key):
        n = 0
        while ckpt_dir.with_name(f"ckpt.stale-{n}").exists():
            n += 1
        ckpt_dir.rename(ckpt_dir.with_name(f"ckpt.stale-{n}"))
        log.warning("%s came from another job configuration: moved to ckpt.stale-%d, training from the start",
                    ckpt_dir, n)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    stamp.write_text(key)


def start_attempt(out_dir: Path, key: str) -> int:
    """Count the starts of this job configuration; a finished job (ok or failed) removes the file."""
    p = out_dir / ATTEMPTS
    try:
        rec = json.loads(p.read_text()) if p.exists() else {}
    except ValueError:
        rec = {}
    n = int(rec.get("attempts", 0)) + 1 if rec.get("key") == key else 1
    write_json(p, {"key": key, "attempts": n})
    return n
