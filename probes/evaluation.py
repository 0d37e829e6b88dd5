"""Heatmap evaluation against ground truth, DAAM-style (Tang et al. 2023, Sec. 3).

A word heatmap in [0, 1] is binarised at tau (0.4 in DAAM) and compared with the word's true region
by IoU; mIoU is the mean over (image, word) pairs with a 95% percentile-bootstrap CI. Ground truth:

* dataset images (shapes world): the exact per-word masks of `Sample.masks_by_word()`; attention is
  recorded while the model denoises the image's noised latent (img2img, strength < 1), the standard
  way to get maps for a real image;
* generated images: objects are flat colours, so `shapes.colour_segmentation` recovers each object's
  region; the colour word and the shape word of object (c, s) both map to the region of colour c.
  Prompts naming two objects of one colour are skipped (their shape words would be ambiguous), and an
  object the model failed to draw (empty region) is counted separately, not scored -- DAAM's
  annotators likewise only segmented objects present in the image.

Breakdowns: word type (colour / shape / size), one resolution at a time, one timestep bin at a time, and the
heatmaps of all layers and steps with DAAM's per-pixel normalisation over the prompt's words
(``compute_global_heat_map(normalize=True)``) beside the plain ones ("all", the headline). "All layers" is DAAM's
set, every cross-attention layer but the mid block's (`CrossAttentionProbe.daam_layers`); "all + mid block" adds it.

Reference rows put a number in context, scored exactly like the heatmaps: a uniform map (the chance floor:
IoU = the object's share of the image) and the true mask itself seen through each recorded attention grid
(area-pooled to h x w, then upsampled DAAM's way: the best any map at that resolution can score; the finest grid's
ceiling is the one for the headline). A low mIoU far below the ceiling is the attention's doing, not the grid's.

Every row also carries a threshold-free score, the AUROC of the heatmap as a pixel classifier of the word's region
(the probability that a random object pixel is hotter than a random background pixel): 0.5 is no localisation, and
below 0.5 the map points *away* from the object -- which IoU at one tau cannot tell from a diffuse map. Per-layer
breakdowns ("layer=<path>") show which layers carry the localisation and which are inverted or noise.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image
from scipy.stats import mannwhitneyu

from foundation import sampling
from foundation.stats import bootstrap_mean_ci
from tiny_sd import shapes

from . import heatmaps as hm
from .attention import CrossAttentionProbe

DEFAULT_TAUS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
NORMALISED = "all, normalize=words"  # DAAM's per-pixel normalisation over the prompt's words, all layers/steps
WITH_MID = "all + mid block"  # DAAM leaves the mid block out ("all"); this adds it back
UNIFORM = "reference: uniform map"  # chance floor
CEILING = "reference: truth at {res}"  # resolution ceiling (format with an attention grid, e.g. 16x16)


def iou(pred: np.ndarray, truth: np.ndarray) -> float:
    """|pred & truth| / |pred | truth| (nan when both are empty)."""
    union = np.logical_or(pred, truth).sum()
    return float(np.logical_and(pred, truth).sum() / union) if union else float("nan")


def precision_recall(pred: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """(|pred & truth| / |pred|, |pred & truth| / |truth|); an empty prediction has precision 0 (as DAAM's
    ``compute_ioa`` gives it, and as IoU scores it), an empty truth has recall nan.

    Precision is DAAM's intersection-over-area of the prediction. The pair says *why* an IoU is low: a blob wider
    than the object keeps recall and loses precision; a misplaced one loses both."""
    inter = np.logical_and(pred, truth).sum()
    n_pred, n_true = pred.sum(), truth.sum()
    return (float(inter / n_pred) if n_pred else 0.0, float(inter / n_true) if n_true else float("nan"))


def bootstrap_ci(values, n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
    """(mean, lo, hi): the percentile bootstrap CI of the mean (`foundation.stats`), 2,000 replicates."""
    return bootstrap_mean_ci(values, n_boot, level, seed)


def word_type(word: str) -> str:
    if word in shapes.COLOURS:
        return "colour"
    if word in shapes.SHAPES:
        return "shape"
    if word in shapes.SIZES:
        return "size"
    return "function"


def generated_truth(image: np.ndarray, prompt: str) -> dict[str, np.ndarray] | None:
    """{word: region} for a generated image from colour segmentation; None if the prompt is ambiguous."""
    objs = shapes.parse_prompt(prompt)
    colours = [c for c, _, _ in objs]
    if None in colours or len(set(colours)) != len(colours):
        return None
    labels = shapes.colour_segmentation(image)
    names = list(shapes.COLOURS)
    truth: dict[str, np.ndarray] = {}
    for colour, shape, size in objs:
        region = labels == names.index(colour)
        for w in (colour, shape, size):
            if w is not None:
                truth[w] = truth[w] | region if w in truth else region
    return truth


def resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if mask.shape == tuple(size):
        return mask
    t = torch.as_tensor(mask, dtype=torch.float32)[None, None]
    return torch.nn.functional.interpolate(t, size=size, mode="nearest")[0, 0].numpy() > 0.5


def auroc(heat: np.ndarray, truth: np.ndarray) -> float:
    """AUROC of `heat` as a per-pixel score for `truth`: the Mann-Whitney U of region vs background pixels over
    n_region * n_background, ties counted half (Hanley & McNeil 1982); nan unless both are non-empty.
    0.5: no localisation; < 0.5: the map avoids the region."""
    truth = np.asarray(truth, dtype=bool)
    if truth.all() or not truth.any():
        return float("nan")
    heat = np.asarray(heat, dtype=np.float32)
    u = mannwhitneyu(heat[truth], heat[~truth], method="asymptotic").statistic
    return float(u / (truth.sum() * (~truth).sum()))


def score(heatmaps: dict[str, np.ndarray], truth: dict[str, np.ndarray], taus) -> list[dict]:
    """Rows (word, word_type, tau, iou, precision, recall, auroc, area, empty_truth) for every word with ground truth
    (auroc and area, the region's share of the image, are one value per word, repeated on its tau rows)."""
    rows = []
    for w, gt in truth.items():
        if w not in heatmaps:
            continue
        heat = heatmaps[w]
        gt = resize_mask(gt, heat.shape)
        roc = auroc(heat, gt)
        for tau in taus:
            pred = heat > tau
            prec, rec = precision_recall(pred, gt)
            rows.append(dict(word=w, word_type=word_type(w), tau=float(tau), empty_truth=not gt.any(),
                             iou=iou(pred, gt) if gt.any() else float("nan"),
                             precision=prec if gt.any() else float("nan"), recall=rec, auroc=roc,
                             area=float(gt.mean())))
    return rows


def truth_through_grid(mask: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """The true mask area-pooled to the attention grid and brought to the image as a word map is (bicubic, min-max)."""
    t = torch.as_tensor(mask, dtype=torch.float32)[None, None]
    pooled = F.adaptive_avg_pool2d(t, grid)[:, 0]
    return hm.normalise(hm.upsample(pooled, mask.shape, clamp=False))[0].numpy()


def reference_heatmaps(truth: dict[str, np.ndarray], grids) -> dict[str, dict[str, np.ndarray]]:
    """{reference name: {word: heatmap}}: the chance floor, and the resolution ceiling at each (h, w) of `grids`."""
    refs = {UNIFORM: {w: np.ones(m.shape, dtype=np.float32) for w, m in truth.items()}}
    for g in grids:
        refs[CEILING.format(res=f"{g[0]}x{g[1]}")] = {w: truth_through_grid(m, g) for w, m in truth.items()}
    return refs


def _breakdowns(probe: CrossAttentionProbe, prompts, size, by_layer: bool, by_bin: bool, references):
    """(name, heatmaps per image) for all layers/steps, each resolution, each layer, each timestep bin, and the
    references."""
    yield "all", probe.word_heatmaps(prompts, size)
    yield WITH_MID, probe.word_heatmaps(prompts, size, mid_block=True)
    yield NORMALISED, probe.word_heatmaps(prompts, size, normalize=True)
    if by_layer:
        for res in dict.fromkeys(probe.resolution(l) for l in probe.layers):
            yield f"resolution={res}", probe.word_heatmaps(prompts, size, resolution=res)
        for layer in probe.layers:
            yield f"layer={layer}", probe.word_heatmaps(prompts, size, layers=[layer])
    if by_bin:
        for b, lo, hi in probe.bin_table():
            if any(float(probe.buffers[l].count[b]) > 0 for l in probe.layers):
                yield f"t_bin={b} ({lo:g}-{hi:g})", probe.word_heatmaps(prompts, size, bins=[b])
    for name in (UNIFORM, *(CEILING.format(res=f"{h}x{w}") for h, w in probe.grids())):
        yield name, [None if r is None else r[name] for r in references]


def evaluate_generated(pipe, prompts: list[str], *, seed: int = 0, sample_steps: int = 25, guidance_scale: float = 7.5,
                       batch_size: int = 8, timestep_bins: int = 5, taus=DEFAULT_TAUS, by_layer=True,
                       by_bin=True) -> pd.DataFrame:
    """IoU rows for heatmaps of generated images vs colour segmentation (one row per image x word x tau)."""
    rows = []
    size = sampling.image_size(pipe)
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start:start + batch_size]
        with CrossAttentionProbe(pipe, n_images=len(chunk), timestep_bins=timestep_bins) as probe:
            images, _ = sampling.generate(pipe, chunk, sampling.image_seeds(seed, len(chunk), start), sample_steps=sample_steps,
                                           guidance_scale=guidance_scale)
        truths = [generated_truth(im, p) for im, p in zip(images, chunk)]
        grids = probe.grids()  # finest first: the first ceiling is the headline's
        refs = [None if t is None else reference_heatmaps(t, grids) for t in truths]
        for name, maps in _breakdowns(probe, chunk, size, by_layer, by_bin, refs):
            for i, (heat, truth) in enumerate(zip(maps, truths)):
                if truth is None:
                    continue
                for r in score(heat, truth, taus):
                    rows.append(dict(source="generated", image_index=start + i, prompt=chunk[i], breakdown=name, **r))
    return pd.DataFrame(rows)


def evaluate_dataset(pipe, n: int, *, seed: int = shapes.HELDOUT_SEED, first: int = 0, strength: float = 0.6,
                     sample_steps: int = 25, guidance_scale: float = 7.5, batch_size: int = 8, timestep_bins: int = 5,
                     taus=DEFAULT_TAUS, by_layer=True, by_bin=True) -> pd.DataFrame:
    """IoU rows for heatmaps recorded while denoising noised dataset images `first`..`first + n - 1` of the split
    `seed` (img2img) vs exact masks."""
    from diffusers import StableDiffusionImg2ImgPipeline

    i2i = StableDiffusionImg2ImgPipeline(**{k: v for k, v in pipe.components.items()
                                            if k in ("vae", "text_encoder", "tokenizer", "unet", "scheduler")},
                                         safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    i2i.set_progress_bar_config(disable=True)
    rows = []
    for start in range(0, n, batch_size):
        idx = list(range(first + start, first + min(n, start + batch_size)))
        images, captions, samples = shapes.batch(seed, idx)
        pil = [Image.fromarray(im) for im in images]
        with CrossAttentionProbe(pipe.unet, n_images=len(idx), timestep_bins=timestep_bins,
                                 tokenizer=pipe.tokenizer) as probe:
            i2i(captions, image=pil, strength=strength, num_inference_steps=sample_steps, guidance_scale=guidance_scale,
                generator=torch.Generator().manual_seed(seed + start), output_type="latent")
        truths = [s.masks_by_word() for s in samples]
        grids = probe.grids()
        refs = [reference_heatmaps(t, grids) for t in truths]
        for name, maps in _breakdowns(probe, captions, images.shape[1:3], by_layer, by_bin, refs):
            for i, (heat, truth) in enumerate(zip(maps, truths)):
                for r in score(heat, truth, taus):
                    rows.append(dict(source="dataset", image_index=start + i, prompt=captions[i], breakdown=name, **r))
    return pd.DataFrame(rows)


def by_area(rows: pd.DataFrame, breakdown: str = "all", tau: float = 0.4, n_bins: int = 4,
            n_boot: int = 2000) -> pd.DataFrame:
    """mIoU (95% CI), precision, recall and AUROC per quantile bin of the word's region area (share of the image), per
    source and word type, for one breakdown and tau. IoU at a fixed tau falls with object size (a map one attention
    cell wide covers a small object and its surround), so comparisons with DAAM's COCO numbers (large objects) need
    this split."""
    sel = rows[(rows["breakdown"] == breakdown) & (rows["tau"] == tau) & rows["iou"].notna()]
    out = []
    for (src, wt), g in sel.groupby(["source", "word_type"], sort=False):
        bins = pd.qcut(g["area"], min(n_bins, g["area"].nunique()), duplicates="drop")
        for interval, b in g.groupby(bins, observed=True):
            m, lo, hi = bootstrap_ci(b["iou"].to_numpy(), n_boot=n_boot)
            out.append(dict(source=src, breakdown=breakdown, word_type=wt, tau=tau, area_lo=float(interval.left),
                            area_hi=float(interval.right), miou=m, ci_lo=lo, ci_hi=hi,
                            precision=float(b["precision"].mean()), recall=float(b["recall"].mean()),
                            auroc=float(b["auroc"].mean()), n=len(b)))
    return pd.DataFrame(out)


def summarise(rows: pd.DataFrame, n_boot: int = 2000) -> pd.DataFrame:
    """mIoU with 95% CI per (source, breakdown, word_type incl. 'all', tau); mean precision and recall of the
    thresholded map; mean AUROC with its CI; n and empty-truth counts."""
    out = []
    typed = pd.concat([rows, rows.assign(word_type="all")])
    for (src, br, wt, tau), g in typed.groupby(["source", "breakdown", "word_type", "tau"], sort=False):
        m, lo, hi = bootstrap_ci(g["iou"].to_numpy(), n_boot=n_boot)
        a, a_lo, a_hi = bootstrap_ci(g["auroc"].to_numpy(), n_boot=n_boot)
        out.append(dict(source=src, breakdown=br, word_type=wt, tau=tau, miou=m, ci_lo=lo, ci_hi=hi,
                        precision=float(g["precision"].mean()), recall=float(g["recall"].mean()),
                        auroc=a, auroc_ci_lo=a_lo, auroc_ci_hi=a_hi,
                        n=int(g["iou"].notna().sum()), n_missing_object=int(g["empty_truth"].sum())))
    return pd.DataFrame(out)
