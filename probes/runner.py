"""`run(cfg) -> dict`: the pure body of `python -m probes <probe> ...` (no Hydra in here).

Every runner writes its files into ``cfg.out`` and returns a dict of what it wrote and measured, so
tests and notebooks can call it with a plain OmegaConf/dict config and a pipeline of their own.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from foundation import sampling
from foundation.loading import load_pipeline
from reports import explorer
from tiny_sd import shapes

from . import evaluation, figures, inputs, preflight
from .attention import CrossAttentionProbe
from .attention_grids import heatmap_side
from .attribution import skip_attribution, token_attributions
from .causal_runner import run_causal
from .explorer_maps import explorer_maps
from .hooks import attached
from .preflight import prompts_of
from .skips import SkipProbe, contributions
from .timestep import TimestepProbe, cosine_matrix, sensitivity, time_embeddings


def _get(cfg, key, default=None):
    v = cfg.get(key, default) if hasattr(cfg, "get") else getattr(cfg, key, default)
    return default if v is None else v


def load(cfg):
    m = cfg["model"]
    pipe = load_pipeline(m["path"], device=m.get("device"), dtype=m.get("dtype"), download=bool(m.get("download", False)))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run(cfg, pipe=None) -> dict:
    """Dispatch on ``cfg.probe.name``: attention | timestep | skips | attribution | evaluate. Every value is checked
    before anything is sampled (`probes.preflight`: ValueError naming the option)."""
    name = cfg["probe"]["name"]
    fn = {"attention": run_attention, "timestep": run_timestep, "skips": run_skips,
          "attribution": run_attribution, "evaluate": run_evaluate, "causal": run_causal}.get(name)
    if pipe is None:
        pipe = preflight.check(cfg, load)
    else:
        preflight.check_values(cfg)
        preflight.check_model(cfg, pipe)
    out = Path(cfg["out"])
    out.mkdir(parents=True, exist_ok=True)
    result = fn(cfg, pipe, out)
    (out / "result.json").write_text(json.dumps(result, indent=2, default=str))
    return result


def _files(out: Path) -> list[str]:
    """The run's files so far, which its explorer page links to."""
    return sorted(p.name for p in out.iterdir() if p.name != explorer.PAGE)


def _sample(cfg, pipe, prompts, probes):
    h, w = sampling.image_size(pipe, _get(cfg, "height"), _get(cfg, "width"))
    for p in probes:
        p.expect(len(prompts))
    with attached(*probes):
        images, latents = sampling.generate(pipe, prompts, sampling.image_seeds(int(cfg["seed"]), len(prompts)),
                                            sample_steps=int(cfg["sample_steps"]),
                                            guidance_scale=float(cfg["guidance_scale"]), height=h, width=w)
    for i, im in enumerate(images):
        Image.fromarray(im).save(Path(cfg["out"]) / ("image.png" if i == 0 else f"image_{i}.png"))
    return images, latents, (h, w)


def run_attention(cfg, pipe, out: Path) -> dict:
    """image.png, heatmaps.npz (first prompt; heatmaps_<i>.npz for others), heatmaps.png/.pdf, maps.csv,
    explorer.html (first image)."""
    pc = cfg["probe"]
    prompts = prompts_of(cfg)
    refine = _get(pc, "refine", 0)
    self_attention = list(_get(pc, "self_attention", []))
    if refine:  # record the self-attention on the heatmaps' own grid, which propagation needs
        h, _ = sampling.image_size(pipe, _get(cfg, "height"), _get(cfg, "width"))
        self_attention.append(heatmap_side(pipe.unet, h // pipe.vae_scale_factor))
    probe = CrossAttentionProbe(pipe, timestep_bins=int(cfg["timestep_bins"]), self_attention=self_attention,
                                mean_heads=bool(_get(pc, "mean_heads", False)))
    images, _, size = _sample(cfg, pipe, prompts, [probe])
    heat = probe.word_heatmaps(prompts, size, refine=int(refine))
    for i, h in enumerate(heat):
        np.savez(out / ("heatmaps.npz" if i == 0 else f"heatmaps_{i}.npz"), **h)
    figures.attention(images[0], heat[0], out / "heatmaps", title=prompts[0])
    maps = probe.table(prompts)
    maps.to_csv(out / "maps.csv", index=False)
    figures.attention_breakdown(maps[maps["image_index"] == 0], out / "maps")
    probe.head_entropy().to_csv(out / "heads.csv", index=False)
    probe.token_mass(prompts).to_csv(out / "token_mass.csv", index=False)
    for layer in probe.self_buffers:
        np.save(out / f"self_attention_{layer}.npy", probe.self_attention_maps(layer).cpu().numpy())
    explorer.attention_page(explorer_maps(probe, prompts[0], pipe.tokenizer), images[0], out / explorer.PAGE,
                            _files(out))
    return dict(probe="attention", prompts=prompts, words=list(heat[0]), layers=probe.layers, refine=int(refine),
                files=sorted(p.name for p in out.iterdir()), probe_memory_bytes=probe.memory_bytes())


def _analysis_grid(cfg, pipe, prompts, probe_cls, **kw):
    """Sample, then re-noise the final latent at a grid of timesteps (one bin per grid timestep)."""
    T = pipe.scheduler.config.num_train_timesteps
    grid = inputs.timestep_grid(pipe, int(cfg["probe"]["n_timesteps"]))
    images, latents, size = _sample(cfg, pipe, prompts, [])
    cond = inputs.conditioning(pipe, prompts, *size)
    gen = torch.Generator(device="cpu").manual_seed(int(cfg["seed"]) + 1)
    noise = torch.randn(latents.shape, generator=gen).to(latents.device, latents.dtype)
    probe = probe_cls(pipe.unet, n_images=len(prompts), timestep_bins=inputs.grid_edges(grid, T), **kw)
    edges_order = sorted(grid)
    return images, latents, cond, noise, grid, probe, (lambda b: edges_order[b])


def run_timestep(cfg, pipe, out: Path) -> dict:
    """timestep.csv (temb_rel_norm, sens_zero, sens_swap), temb_cosine.csv, timestep.png/.pdf, temb_cosine.png,
    explorer.html."""
    prompts = prompts_of(cfg)
    shift = int(cfg["probe"]["swap_shift"])
    T = pipe.scheduler.config.num_train_timesteps
    images, x0, cond, noise, grid, probe, t_of = _analysis_grid(cfg, pipe, prompts, TimestepProbe)
    frames = []
    for t in grid:
        x_t = inputs.noised(pipe, x0, noise, t)
        with probe, torch.no_grad():
            pipe.unet(x_t, t, **cond)
        frames.append(sensitivity(pipe.unet, x_t, t, cond, t_swap=(t + shift) % T,
                                  batch=int(_get(cfg["probe"], "batch", 1))))
    table = pd.concat([probe.table(t_of), *frames], ignore_index=True)
    table.to_csv(out / "timestep.csv", index=False)
    figures.timestep(table, out / "timestep")
    cos = cosine_matrix(time_embeddings(pipe.unet, grid)).cpu().numpy()
    pd.DataFrame([dict(t_i=a, t_j=b, cosine=float(cos[i, j])) for i, a in enumerate(grid)
                  for j, b in enumerate(grid)]).to_csv(out / "temb_cosine.csv", index=False)
    figures.cosine(cos, grid, out / "temb_cosine")
    explorer.table_page(table, "timestep", out / explorer.PAGE, _files(out), prompt=prompts[0])
    return dict(probe="timestep", prompts=prompts, timesteps=grid, blocks=probe.stats.keys(),
                files=sorted(p.name for p in out.iterdir()))


def run_skips(cfg, pipe, out: Path) -> dict:
    """skips.csv (norm_ratio, hf_skip, hf_backbone, delta_zero/mean/scale), skips.png/.pdf, explorer.html."""
    pc = cfg["probe"]
    prompts = prompts_of(cfg)
    images, x0, cond, noise, grid, probe, t_of = _analysis_grid(cfg, pipe, prompts, SkipProbe,
                                                                cutoff=float(pc["cutoff"]))
    frames = []
    for t in grid:
        x_t = inputs.noised(pipe, x0, noise, t)
        with probe, torch.no_grad():
            pipe.unet(x_t, t, **cond)
        frames.append(contributions(pipe.unet, x_t, t, cond, scale=float(pc["scale"]),
                                    batch=int(_get(pc, "batch", 1))))
    table = pd.concat([probe.table(t_of), *frames], ignore_index=True)
    table.to_csv(out / "skips.csv", index=False)
    figures.skips(table, out / "skips")
    explorer.table_page(table, "skips", out / explorer.PAGE, _files(out), prompt=prompts[0])
    return dict(probe="skips", prompts=prompts, timesteps=grid, skips=probe.stats.keys(),
                files=sorted(p.name for p in out.iterdir()))


def run_attribution(cfg, pipe, out: Path) -> dict:
    """attributions.csv (per word) + attribution.png/.pdf beside the attention heatmaps of the prompt."""
    pc = cfg["probe"]
    prompts = prompts_of(cfg)[:1]
    probe = CrossAttentionProbe(pipe, timestep_bins=int(cfg["timestep_bins"]))
    images, x0, size = _sample(cfg, pipe, prompts, [probe])
    heat = probe.word_heatmaps(prompts, size)[0]
    t = int(pc["timestep"])
    gen = torch.Generator(device="cpu").manual_seed(int(cfg["seed"]) + 1)
    x_t = inputs.noised(pipe, x0, torch.randn(x0.shape, generator=gen).to(x0.device, x0.dtype), t)
    tokens, delta = token_attributions(pipe, prompts[0], x_t, t, n_steps=int(pc["n_steps"]))
    tokens.to_csv(out / "attributions.csv", index=False)
    name, smap = skip_attribution(pipe, x_t, t, inputs.conditioning(pipe, prompts, *size), _get(pc, "skip"), size)
    np.savez(out / "skip_attribution.npz", **{name: smap})
    figures.attribution(images[0], {**heat, f"skip x grad: {name}": smap}, tokens,
                        out / "attribution")
    return dict(probe="attribution", prompt=prompts[0], timestep=t, ig_delta=delta, skip=name,
                files=sorted(p.name for p in out.iterdir()))


def run_evaluate(cfg, pipe, out: Path) -> dict:
    """iou.csv (image x word x tau x breakdown), miou.csv (mIoU, precision, recall, AUROC, 95% CIs), miou_by_area.csv
    (headline and the resolution ceilings by object-area quartile), iou_tau.png/.pdf, iou_layers.png/.pdf."""
    pc = cfg["probe"]
    taus = [float(t) for t in pc["taus"]]
    kw = dict(sample_steps=int(cfg["sample_steps"]), guidance_scale=float(cfg["guidance_scale"]), batch_size=int(pc["batch_size"]),
              timestep_bins=int(cfg["timestep_bins"]), taus=taus)
    frames = []
    first = int(_get(pc, "offset", 0))
    if int(pc["n_generated"]) > 0:
        prompts = [shapes.sample(shapes.HELDOUT_SEED, i).caption for i in range(first, first + int(pc["n_generated"]))]
        frames.append(evaluation.evaluate_generated(pipe, prompts, seed=int(cfg["seed"]), **kw))
    if int(pc["n_dataset"]) > 0:
        frames.append(evaluation.evaluate_dataset(pipe, int(pc["n_dataset"]), first=first,
                                                  strength=float(pc["strength"]), **kw))
    rows = pd.concat(frames, ignore_index=True)
    rows.to_csv(out / "iou.csv", index=False)
    summary = evaluation.summarise(rows)
    summary.to_csv(out / "miou.csv", index=False)
    figures.iou_sweep(summary, out / "iou_tau")
    figures.iou_layers(summary, out / "iou_layers")
    # the headline per object-size quartile, beside what the true mask scores through each attention grid in the
    # same quartile: tells a grid-limited quartile from an attention-limited one
    ceilings = [b for b in rows["breakdown"].unique() if b.startswith(evaluation.CEILING.format(res=""))]
    areas = pd.concat([evaluation.by_area(rows, breakdown=b) for b in ("all", *ceilings)], ignore_index=True)
    areas.to_csv(out / "miou_by_area.csv", index=False)
    head_area = areas[areas["breakdown"] == "all"]
    def headline(breakdown):
        at = summary[(summary["breakdown"] == breakdown) & (summary["tau"] == 0.4)]
        return {f"{r.source}/{r.word_type}": dict(miou=r.miou, ci95=[r.ci_lo, r.ci_hi], precision=r.precision,
                                                  recall=r.recall, auroc=r.auroc, n=r.n,
                                                  n_missing_object=r.n_missing_object) for r in at.itertuples()}

    breakdowns = summary["breakdown"].unique()
    references = [b for b in breakdowns if b.startswith("reference:")]
    return dict(probe="evaluate", miou_tau_0_4=headline("all"),
                miou_tau_0_4_normalize_words=headline(evaluation.NORMALISED),
                references_tau_0_4={b: headline(b) for b in references},
                layers_tau_0_4={b.removeprefix("layer="): headline(b) for b in breakdowns if b.startswith("layer=")},
                miou_tau_0_4_by_area=head_area.drop(columns=["breakdown", "tau"]).to_dict("records"),
                references_tau_0_4_by_area=areas.drop(index=head_area.index, columns="tau").to_dict("records"),
                files=sorted(p.name for p in out.iterdir()))


def summary(result: dict, out) -> list[str]:
    """A few lines for the terminal: what was written where, and the run's headline numbers (result.json has all)."""
    name = result["probe"]
    files = result.get("files", [])
    lines = [f"{name}: wrote {len(files)} files to {out} (result.json lists everything)"]
    if name == "attention":
        lines.append(f"  {len(result['prompts'])} prompt(s), {len(result['layers'])} cross-attention layers; "
                     f"heatmaps.npz words: {', '.join(result['words'])}")
    elif name in ("timestep", "skips"):
        what = result.get("blocks") if name == "timestep" else result.get("skips")
        lines.append(f"  {len(what)} {'resnet blocks' if name == 'timestep' else 'skips'} x "
                     f"{len(result['timesteps'])} timesteps -> {name}.csv, {name}.png")
    elif name == "attribution":
        lines.append(f"  integrated gradients at t={result['timestep']} (completeness gap {result['ig_delta']:.3g});"
                     f" skip {result['skip']}")
    elif name == "causal":
        fmt = lambda r: "n/a" if not r else f"{r['value']:.3f} [{r['ci95'][0]:.3f}, {r['ci95'][1]:.3f}] (n={r['n']})"  # noqa: E731
        lines.append(f"  {result['mode']}: {result['n_configurations']} configurations x {result['n_items']} items "
                     f"({result['configurations_per_second']:.1f}/s) -> causal.csv, causal.png")
        lines.append(f"  {result['measure']}: every site {fmt(result['all'])}, none {fmt(result['none'])}; strongest: "
                     + ", ".join(s["site"] for s in result["strongest"][:3]))
    elif name == "evaluate":
        for key, r in result["miou_tau_0_4"].items():
            lo, hi = r["ci95"]
            lines.append(f"  mIoU at tau 0.4, {key}: {r['miou']:.3f} [{lo:.3f}, {hi:.3f}] "
                         f"(AUROC {r['auroc']:.3f}, n={r['n']})")
    return lines
