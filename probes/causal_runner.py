"""`python -m probes causal ...`: items and configurations from the config, the batched runs (`causal`), the tables
and figures written into ``out``. Every value was checked before (`preflight.check_causal`)."""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
import torch
from PIL import Image

from foundation import sampling
from reports import causal_figures
from reports.style import save_figure
from tiny_sd.prompts import is_tiny_sd, object_of_word, word_attribute

from . import causal
from .preflight import causal_prompts


def primary_measure(table: pd.DataFrame, mode: str) -> str:
    """The measure the figures show: the evaluator's attribute where it was read, else the latent measure."""
    order = (["attribute_flip", "attribute_kept"] if mode != "knockout" and mode != "reweight" else ["attribute_kept"])
    order += ["latent_change" if mode in causal.EDITS else "latent_toward_source"]
    have = set(table.loc[table["n"] > 0, "measure"])
    return next(m for m in order if m in have)


def run_causal(cfg, pipe, out: Path) -> dict:
    """causal.csv (configuration x measure: mean, 95% CI, n), samples.csv (per item), causal.png/.pdf (site x bin),
    causal_sites.png/.pdf (per site, every bin), strongest.png/.pdf (images of the strongest patches)."""
    pc = cfg["probe"]
    mode = pc["mode"]
    prompts, counterfactuals = causal_prompts(cfg)
    items = causal.build_items(mode, prompts, counterfactuals=counterfactuals, word=pc.get("word"),
                               other=pc.get("other"), direction=pc["direction"], n_seeds=int(pc["n_seeds"]),
                               seed=int(cfg["seed"]))
    n_bins = int(cfg["timestep_bins"])
    kinds = ["attn2"] if mode in causal.EDITS else list(pc["kinds"])
    sites = causal.select_sites(pipe.unet, kinds, None if pc.get("sites") is None else list(pc["sites"]))
    configs = causal.configurations(sites, n_bins, groups=bool(pc["groups"]), singles=bool(pc["singles"]))
    h, w = sampling.image_size(pipe, cfg.get("height"), cfg.get("width"))
    run = dict(n_bins=n_bins, sample_steps=int(cfg["sample_steps"]), guidance_scale=float(cfg["guidance_scale"]),
               height=h, width=w, seed=int(cfg["seed"]))
    started = time.perf_counter()
    if mode in causal.EDITS:
        z_src, z_rows = None, causal.edit_runs(pipe, items, configs, run, op=mode, factor=float(pc["factor"]),
                                               batch=int(pc["batch"]), tokens=tuple(pc["tokens"]))
    else:
        z_src, z_rows = causal.patch_runs(pipe, items, sites, configs, run, batch=int(pc["batch"]),
                                          cache_items=int(pc["cache_items"]),
                                          restore_noise=float(pc["noise"]) if mode == "restore" else None)
    seconds = time.perf_counter() - started
    evaluator = None
    if is_tiny_sd(pipe):
        from metrics.evaluator import load_evaluator

        evaluator = load_evaluator(pipe.unet.device)
    per_item = causal.samples(mode, items, configs, z_rows, z_src, evaluator=evaluator, pipe=pipe,
                              attribute_of=word_attribute, object_of=object_of_word)
    per_item.to_csv(out / "samples.csv", index=False)
    direction = pc["direction"] if mode == "patch" else ""
    latent_hw = (h // pipe.vae_scale_factor, w // pipe.vae_scale_factor)
    table = causal.table(per_item, configs, sites, causal.bin_bounds(pipe, n_bins), latent_hw, mode=mode,
                         direction=direction)
    table.to_csv(out / "causal.csv", index=False)
    measure = primary_measure(table, mode)
    save_figure(causal_figures.causal_grid(table, measure), out / "causal")
    save_figure(causal_figures.causal_bars(table, measure), out / "causal_sites")
    strongest = _strongest(table, configs, measure, int(pc["top_k"]))
    _images(pipe, items[0], z_src, z_rows, configs, strongest, table, measure, out)

    keys = [causal.row_key(s, k) for s, k in zip(table.site, table.kind)]

    def at(key, t_bin="all"):
        r = table[(pd.Series(keys, index=table.index) == key) & (table.t_bin.astype(str) == t_bin)
                  & (table.measure == measure)]
        return None if r.empty else dict(value=float(r.value.iloc[0]), ci95=[float(r.ci_lo.iloc[0]),
                                                                               float(r.ci_hi.iloc[0])],
                                          n=int(r.n.iloc[0]))

    return dict(probe="causal", mode=mode, direction=direction, measure=measure,
                tokens=list(pc["tokens"]) if mode in ("knockout", "reweight") else None, n_items=len(items),
                n_prompts=len(prompts), n_seeds=int(pc["n_seeds"]), n_sites=len(sites), n_configurations=len(configs),
                unet_rows=len(items) * len(configs) + (len(items) if z_src is not None else 0), sampling_seconds=seconds,
                configurations_per_second=len(items) * len(configs) / seconds, none=at("none"), all=at("all"),
                strongest=[dict(site=configs[r].site, **(at(configs[r].site) or {})) for r in strongest],
                pairs=[[it.source, it.target] for it in items[:: int(pc["n_seeds"])]] if mode == "patch" else None,
                files=sorted(p.name for p in out.iterdir()))


def _strongest(table: pd.DataFrame, configs, measure: str, k: int) -> list[int]:
    """Configuration indices of the k single sites (or groups, without single sites) with the largest mean
    `measure` when every bin is patched."""
    index = {c.site: r for r, c in enumerate(configs) if c.t_bin is None}
    best = causal_figures.every_bin(table, measure).sort_values("value", ascending=False).head(k)
    return [index[causal.row_key(site, kind)] for kind, site in zip(best.kind, best.site)]


def _images(pipe, item, z_src, z_rows, configs, strongest, table, measure, out: Path) -> None:
    """image.png (the target run) and strongest.png/.pdf: target, source, then the strongest patches of item 0."""
    none = next(r for r, c in enumerate(configs) if c.site == "none")
    latents = [z_rows[0, none]] + ([z_src[0]] if z_src is not None else []) + [z_rows[0, r] for r in strongest]
    images = sampling.decode(pipe, torch.stack(latents).to(pipe.vae.device))
    every_bin = table[(table.t_bin.astype(str) == "all") & (table.measure == measure)]
    every_bin.index = [causal.row_key(s, k) for s, k in zip(every_bin.site, every_bin.kind)]
    titles = [f"target: {item.target}" if z_src is not None else f"unedited: {item.source}"]
    titles += [f"source: {item.source}"] if z_src is not None else []
    titles += [f"{every_bin.label[configs[r].site]}: {every_bin.value[configs[r].site]:.2f}" for r in strongest]
    Image.fromarray(images[0]).save(out / "image.png")
    save_figure(causal_figures.patch_images(list(images), titles), out / "strongest")
