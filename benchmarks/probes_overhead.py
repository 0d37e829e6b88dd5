"""Probe overhead, measured side by side in one run (targets: the attention probe <= 1.25x bare sampling on a CPU
and <= 1.10x on a GPU; all probes <= 1.5x).

    OMP_NUM_THREADS=1 python benchmarks/probes_overhead.py            # tiny_sd (or its random twin) on CPU
    python benchmarks/probes_overhead.py --gpu                        # + SD1.5-architecture UNet, 512px fp16

CPU part: 25 DDIM steps, batch 8, CFG 7.5; bare sampling vs the cross-attention probe vs all probes
(attention + timestep + skips) vs a naive probe that stores every attention map (DAAM-style), rounds
interleaved and the median taken so a busy machine slows every variant alike. Memory: bytes held by
the probe after 10 vs 50 steps, ours vs naive.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from probes import CrossAttentionProbe, SkipProbe, TimestepProbe, attached, attention_probs


class NaiveStoreProbe(CrossAttentionProbe):
    """The approach we avoid: keep every attention map of every call (all rows, all heads)."""

    name = "naive"

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.stored: list[torch.Tensor] = []

    @torch.no_grad()
    def _record(self, layer, attn, hidden_states, context, attention_mask, cross):
        self.stored.append(attention_probs(attn, hidden_states, context).clone())
        self.fired += 1

    def memory_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.stored)


def load_tiny():
    if (Path(__file__).resolve().parent.parent / "tiny_sd" / "weights" / "pipeline" / "model_index.json").exists():
        from ablations import load_pipeline

        return load_pipeline("tiny_sd", device="cpu", dtype="float32"), "tiny_sd (trained)"
    from tiny_sd.testing import random_pipeline

    return random_pipeline(0), "tiny_sd random twin (trained weights not present)"


def interleaved_medians(run, variants: dict, rounds: int) -> dict[str, float]:
    """Median wall time of `run()` under each variant's probes, the variants interleaved round by round so that
    drift of the machine (clocks, other load) falls on all of them alike."""
    times = {k: [] for k in variants}
    for _ in range(rounds):
        for name, make in variants.items():
            probes = make()
            t0 = time.perf_counter()
            with attached(*probes):
                run()
            times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def cpu_benchmark(rounds: int, batch: int, steps: int) -> None:
    pipe, what = load_tiny()
    pipe.set_progress_bar_config(disable=True)
    prompts = ["a red circle left of a blue square"] * batch

    def sample(n_steps=steps, prompts=prompts):
        pipe(prompts, num_inference_steps=n_steps, guidance_scale=7.5, output_type="np",
             generator=torch.Generator().manual_seed(0))

    variants = {
        "bare": lambda: [],
        "attention": lambda: [CrossAttentionProbe(pipe, n_images=batch)],
        "attention, unfolded": lambda: [CrossAttentionProbe(pipe, n_images=batch, fold_keys=False)],
        "all probes": lambda: [CrossAttentionProbe(pipe, n_images=batch), TimestepProbe(pipe, n_images=batch),
                               SkipProbe(pipe, n_images=batch)],
        "naive store-every-map": lambda: [NaiveStoreProbe(pipe, n_images=batch)],
    }
    sample(2)  # warm-up
    med = interleaved_medians(sample, variants, rounds)
    print(f"# {what}, CPU, torch threads={torch.get_num_threads()}, {steps} DDIM steps, batch {batch}, CFG 7.5, "
          f"median of {rounds} interleaved rounds")
    for name, t in med.items():
        target = {"attention": " (target <= 1.25)", "all probes": " (target <= 1.5)"}.get(name, "")
        print(f"{name:24s} {t:7.2f} s   ratio vs bare {t / med['bare']:.3f}{target}")

    print("# probe memory (bytes held after sampling), batch 1")
    for cls in (CrossAttentionProbe, NaiveStoreProbe):
        mem = {}
        for n in (10, 50):
            with cls(pipe, n_images=1) as p:
                sample(n, prompts[:1])
            mem[n] = p.memory_bytes()
        print(f"{cls.name:24s} 10 steps {mem[10] / 2**20:8.2f} MiB   50 steps {mem[50] / 2**20:8.2f} MiB   "
              f"ratio 50/10 {mem[50] / mem[10]:.2f}")


def _profile(loop, variants: dict, tag: str) -> None:
    """Where a probe's extra time goes: self CPU and CUDA time per op over one loop, bare vs probed."""
    from torch.profiler import ProfilerActivity, profile

    for name, make in {"bare": lambda: [], **variants}.items():
        with attached(*make()), profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            loop()
        ev = prof.key_averages()
        cpu = sum(e.self_cpu_time_total for e in ev) / 1e3
        cuda = sum(getattr(e, "self_device_time_total", 0) for e in ev) / 1e3
        n = sum(e.count for e in ev)
        print(f"# profile {tag} {name}: {n} op calls, self CPU {cpu:.1f} ms, self CUDA {cuda:.1f} ms")
        if name != "bare":
            print(ev.table(sort_by="self_cpu_time_total", row_limit=12, max_name_column_width=40))


def sd15_unet(sample_size: int = 64):
    """SD1.5's UNet architecture with random weights (no download): 4 levels, 320-1280 channels, 16 attn2."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=sample_size, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=(320, 640, 1280, 1280), down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, cross_attention_dim=768,
        attention_head_dim=8).eval()


def op_counts(calls: int = 12, latent: int = 16) -> None:
    """Operator calls the attention probe adds per cross-attention layer and UNet call, on the SD1.5-architecture
    UNet (CPU, fp32, CFG batch 2): the device-independent half of the GPU overhead. There the UNet and the probe are
    bound by the host dispatching ops (self CPU 816 ms vs self CUDA 315 ms per probed loop on an H200), so ops added
    per layer call predict the GPU ratio where no GPU is lent; `--gpu` measures it."""
    from torch.profiler import ProfilerActivity, profile

    unet = sd15_unet(latent)
    x, ctx = torch.randn(2, 4, latent, latent), torch.randn(2, 77, 768)
    ts = torch.linspace(999, 0, calls).long()

    @torch.no_grad()
    def loop():
        for t in ts:
            unet(x, t, encoder_hidden_states=ctx)

    loop()
    counts = {}
    for name, make in {"bare": lambda: [], "attention": lambda: [CrossAttentionProbe(unet, n_images=1)],
                       "attention, unfolded": lambda: [CrossAttentionProbe(unet, n_images=1, fold_keys=False)]}.items():
        with attached(*make()) as probes, profile(activities=[ProfilerActivity.CPU]) as prof:
            loop()
        counts[name] = sum(e.count for e in prof.key_averages())
    n_layers = len(probes[0].layers)  # the last variant's probe
    print(f"# SD1.5-architecture UNet (random init), CPU fp32, latent {latent}x{latent}, CFG batch 2, {calls} UNet calls, "
          f"{n_layers} cross-attention layers; torch.profiler operator calls (incl. views), the GPU's host-side cost")
    for name in ("attention", "attention, unfolded"):
        extra = (counts[name] - counts["bare"]) / (calls * n_layers)
        print(f"{name:24s} {counts[name]:7d} op calls vs bare {counts['bare']}: +{extra:.1f} per layer call "
              f"({counts[name] / counts['bare']:.3f}x)")


def gpu_benchmark(rounds: int, steps: int, profile: bool = False) -> None:
    """SD1.5-architecture UNet, random init from its config, 512px (64x64 latent): the UNet calls of a 25-step
    sampling loop, bare vs with the attention probe vs with all probes, interleaved; CFG batch 2 in fp16 and bf16,
    and CFG batch 8 in fp16."""
    base = sd15_unet(64)
    print(f"# SD1.5-architecture UNet (random init), 512px, {torch.cuda.get_device_name()}, {steps} UNet calls per "
          f"loop, median of {rounds} interleaved rounds")
    for dtype, n_img in ((torch.float16, 1), (torch.bfloat16, 1), (torch.float16, 4)):
        # one image (CFG batch 2: the UNet is launch-bound there, the probe's per-layer launches weigh most) and
        # four (CFG batch 8, as the CPU benchmark's batch)
        unet = base.to("cuda", dtype)
        x = torch.randn(2 * n_img, 4, 64, 64, device="cuda", dtype=dtype)
        ctx = torch.randn(2 * n_img, 77, 768, device="cuda", dtype=dtype)
        ts = torch.linspace(999, 0, steps, device="cuda").long()

        @torch.no_grad()
        def loop():
            for t in ts:
                unet(x, t, encoder_hidden_states=ctx)
            torch.cuda.synchronize()

        variants = {"bare": lambda: [], "attention": lambda: [CrossAttentionProbe(unet, n_images=n_img)],
                    "attention, unfolded": lambda: [CrossAttentionProbe(unet, n_images=n_img, fold_keys=False)],
                    "all probes": lambda: [CrossAttentionProbe(unet, n_images=n_img),
                                           TimestepProbe(unet, n_images=n_img), SkipProbe(unet, n_images=n_img)]}
        loop()
        med = interleaved_medians(loop, variants, rounds)
        with CrossAttentionProbe(unet, n_images=n_img) as p:
            loop()
        devices = {b.total.device.type for b in p.buffers.values()}
        if profile:
            _profile(loop, {k: v for k, v in variants.items() if k != "bare"}, str(dtype))
        print(f"{str(dtype).removeprefix('torch.'):9s} batch {2 * n_img} bare {med['bare']:.3f} s | attention "
              f"{med['attention']:.3f} s, "
              f"ratio {med['attention'] / med['bare']:.3f} (target <= 1.10; unfolded "
              f"{med['attention, unfolded'] / med['bare']:.3f}) | all probes {med['all probes']:.3f} s, "
              f"ratio {med['all probes'] / med['bare']:.3f} | attention buffers {p.memory_bytes() / 2**20:.1f} MiB "
              f"on {sorted(devices)}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--gpu", action="store_true", help="also (or only, with --no-cpu) the SD1.5 GPU benchmark")
    ap.add_argument("--no-cpu", action="store_true")
    ap.add_argument("--profile", action="store_true", help="with --gpu: torch.profiler tables of the probed loops")
    a = ap.parse_args()
    if not a.no_cpu:
        cpu_benchmark(a.rounds, a.batch, a.steps)
        op_counts()
    if a.gpu:
        gpu_benchmark(a.rounds, a.steps, a.profile)
