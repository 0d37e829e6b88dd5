"""One job over several processes (`torchrun` or `accelerate launch`, which both set RANK / WORLD_SIZE, or the
tasks of one submitit job).

The split that keeps the numbers those of one process: the job's sampling batches (fixed composition: batch b is
images [b*B, (b+1)*B) with their per-image seeds) are dealt out round-robin, every rank samples and extracts the
features of its batches, and rank 0 adds all batches in order, computes the metrics and writes the job's files.
Training runs on rank 0 and its weights are broadcast, so every rank samples the same UNet. A failure on any rank
is raised on every rank (no rank waits forever in a collective).
"""

from __future__ import annotations

import datetime
import os

import torch
import torch.distributed as dist


def world() -> tuple[int, int]:
    """(rank, world size) from the launcher's environment; (0, 1) without one. A submitit task of a job with
    several tasks (`hydra/launcher=submitit_slurm hydra.launcher.tasks_per_node=8`) exports torch's variables
    from its SLURM environment first (submitit's TorchDistributedEnvironment)."""
    if "RANK" not in os.environ and os.environ.get("SUBMITIT_EXECUTOR"):
        from submitit import JobEnvironment
        from submitit.helpers import TorchDistributedEnvironment

        if JobEnvironment().num_tasks > 1:
            TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def setup() -> tuple[int, int]:
    """Join the process group once (NCCL on GPUs, else gloo); a long timeout, since rank 0 trains alone."""
    rank, size = world()
    if size > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend, timeout=datetime.timedelta(hours=12))
    return rank, size


def local_device(device: str) -> str:
    """This rank's device: `auto`/`cuda` become cuda:LOCAL_RANK under a multi-process launch with GPUs."""
    _, size = world()
    if size > 1 and torch.cuda.is_available() and str(device) in ("auto", "cuda"):
        return f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
    return device


def batches_of(rank: int, size: int, n_batches: int) -> range:
    return range(rank, n_batches, size)


def gather(obj) -> list:
    """Every rank's `obj`, in rank order, on every rank."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def agree(error: str | None) -> None:
    """Raise on every rank if any rank hit `error` (the first one, naming its rank)."""
    errors = gather(error)
    bad = [(r, e) for r, e in enumerate(errors) if e]
    if bad:
        r, e = bad[0]
        raise RuntimeError(e if len(errors) == 1 else f"rank {r}: {e}")


def broadcast(obj, src: int = 0):
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


@torch.no_grad()
def broadcast_module(module: torch.nn.Module, src: int = 0) -> None:
    """Copy rank `src`'s parameters and buffers into `module` on every rank, in place."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return
    for t in module.state_dict().values():
        dist.broadcast(t, src=src)
