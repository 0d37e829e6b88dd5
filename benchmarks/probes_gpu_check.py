"""Probes on a GPU in fp16 and bf16, with the shipped tiny_sd: what the CPU tests check, where they cannot run.

    python benchmarks/probes_gpu_check.py            # needs CUDA; loads tiny_sd/weights/pipeline with plain diffusers
    python benchmarks/probes_gpu_check.py cpu        # the same checks on the CPU (a dry run of the script)

Per dtype: images with the probes attached equal the bare images bit for bit; every buffer lives on the GPU; recorded
cross-attention rows sum to 1 over the tokens; the folded keys are as accurate as recomputing Q and K (against
float64 on the same inputs); processors and hooks are restored; word heatmaps come out finite.
Prints one line per check and exits non-zero when one fails.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import numpy as np
import torch

from probes import CrossAttentionProbe, SkipProbe, TimestepProbe, attached, hooks_left, processors
from probes.attention_maths import attention_probs, folded_keys, folded_probs

PIPE = Path(__file__).resolve().parent.parent / "tiny_sd" / "weights" / "pipeline"
PROMPTS = ["a red circle left of a blue square", "a small green triangle"]


def main(device: str = "cuda") -> int:
    from diffusers import StableDiffusionPipeline

    failed = []

    def check(name: str, ok: bool, detail: str = "") -> None:
        print(f"{'PASS' if ok else 'FAIL'}  {name}{'  ' + detail if detail else ''}")
        if not ok:
            failed.append(name)

    name = torch.cuda.get_device_name() if device == "cuda" else device
    print(f"# {name}, torch {torch.__version__}, tiny_sd from {PIPE}")
    for dtype in (torch.float16, torch.bfloat16):
        tag = str(dtype).removeprefix("torch.")
        pipe = StableDiffusionPipeline.from_pretrained(PIPE, torch_dtype=dtype, safety_checker=None,
                                                       requires_safety_checker=False).to(device)
        pipe.set_progress_bar_config(disable=True)

        def sample():
            return pipe(PROMPTS, num_inference_steps=10, guidance_scale=5.0, output_type="np",
                        generator=torch.Generator(device).manual_seed(0)).images

        before = processors(pipe.unet)
        bare = sample()
        probes = [CrossAttentionProbe(pipe, n_images=len(PROMPTS)), TimestepProbe(pipe, n_images=len(PROMPTS)),
                  SkipProbe(pipe, n_images=len(PROMPTS))]
        with attached(*probes):
            probed = sample()
        att = probes[0]
        check(f"{tag}: images with all probes equal bare images", np.array_equal(bare, probed),
              f"max |diff| {np.abs(bare - probed).max():.2e}")
        devices = {b.total.device.type for b in att.buffers.values()}
        devices |= {t.device.type for p in probes[1:] for t in _tensors(p)}
        check(f"{tag}: every probe buffer on the {device}", devices == {device}, str(sorted(devices)))
        worst = max(float((att.maps(l).sum(-1) - 1).abs().max()) for l in att.layers)
        check(f"{tag}: attention rows sum to 1", worst < 1e-3, f"max |sum - 1| {worst:.1e} over {len(att.layers)} layers")
        plain_err, folded_err = _fold_accuracy(pipe, sample)
        check(f"{tag}: folded keys as accurate as recomputing Q and K", folded_err <= 1.5 * plain_err,
              f"max |p - p_fp64| over attn2 layers: folded {folded_err:.1e}, unfolded {plain_err:.1e}")
        after = processors(pipe.unet)
        check(f"{tag}: processors restored, no hooks left",
              all(before[k] is after[k] for k in before) and hooks_left(pipe.unet) == 0)
        heat = att.word_heatmaps(PROMPTS, (64, 64), tokenizer=pipe.tokenizer)
        finite = all(np.isfinite(m).all() and abs(m.max() - 1) < 1e-3 and abs(m.min()) < 1e-3
                     for h in heat for m in h.values())
        check(f"{tag}: word heatmaps finite, normalised", finite, f"words {sorted(heat[0])}")
        del pipe
        if device == "cuda":
            torch.cuda.empty_cache()
    print("ALL PASS" if not failed else f"{len(failed)} FAILED: {failed}")
    return 1 if failed else 0


def _fold_accuracy(pipe, sample) -> tuple[float, float]:
    """Max error of the unfolded and the folded probabilities against float64 on the inputs every attn2 saw in its
    first call of a sampling run (in fp16/bf16 the two paths round differently; neither is exact)."""
    seen, handles = {}, []

    def keep_first(name):
        def hook(module, args, kwargs):
            seen.setdefault(name, (module, args[0] if args else kwargs["hidden_states"], kwargs["encoder_hidden_states"]))
        return hook

    for name, mod in pipe.unet.named_modules():
        if name.endswith("attn2"):
            handles.append(mod.register_forward_pre_hook(keep_first(name), with_kwargs=True))
    try:
        sample()
    finally:
        for h in handles:
            h.remove()
    plain = folded = 0.0
    with torch.no_grad():
        for attn, x, ctx in seen.values():
            ref = attention_probs(copy.deepcopy(attn).double(), x.double(), ctx.double())
            plain = max(plain, float((attention_probs(attn, x, ctx).double() - ref).abs().max()))
            got = folded_probs(x, *folded_keys(attn, ctx), attn.heads)
            folded = max(folded, float((got.double() - ref).abs().max()))
    return plain, folded


def _tensors(probe) -> list[torch.Tensor]:
    """Every recording tensor a probe holds in its attributes (dicts and lists of tensors included)."""
    out = []
    for k, v in vars(probe).items():
        if k == "edges":  # the bin edges as configured (labels for tables), not a recording buffer
            continue
        vals = v.values() if isinstance(v, dict) else v if isinstance(v, (list, tuple)) else [v]
        out += [t for t in vals if torch.is_tensor(t)]
    return out


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:2]))
