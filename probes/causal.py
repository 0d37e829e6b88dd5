"""Causal localisation: which UNet site, at which timestep bin, carries a word (`python -m probes causal`).

Modes (Basu et al. ICLR 2024 for SD; Meng et al. 2022's causal tracing; Prompt-to-Prompt, Hertz et al. 2022):

- ``patch``: a prompt and a counterfactual differing in one word, sampled from the same noise. *Denoising*
  patching runs the counterfactual and copies the prompt's activations in (is the site sufficient to carry the
  word?); *noising* runs the prompt and copies the counterfactual's in (is it necessary?). Either way the
  copied-from run is the source, and effects are measured toward it.
- ``restore``: the source is the clean prompt, the target the same prompt with the word's token embeddings
  corrupted by noise (`text_noise`); one site restored at a time.
- ``knockout`` / ``reweight`` / ``swap``: the word's cross-attention edited (`interventions`) at one attn2 layer
  (or all) and one timestep bin (or all), measured against the unedited run.

Every (site or group, timestep bin or all bins) is one *configuration*, and a pipeline call samples many of them as
batch rows over one cached source run (`patching`). Configurations always include "none" (the target run itself,
effect 0 by construction) and "all" (every selected site, every bin: the source itself for patching, effect 1, when
the selection covers the path to the output, e.g. every attn2 output on SD 1.x or every kind together).
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch
from tqdm.auto import tqdm

from foundation import sampling, sites as sitemap
from foundation.sites import Site

from . import effects
from .hooks import attached, bin_edges, _num_train_timesteps
from .interventions import TokenEdit, swap_order
from .patching import PATCHABLE, Patcher, SourceCache, site_key, site_label
from .text_noise import corrupted
from .attention_maths import token_spans
from .words import word_positions, word_tokens

MODES = ("patch", "restore", "knockout", "reweight", "swap")
EDITS = ("knockout", "reweight", "swap")
DIRECTIONS = ("denoising", "noising")


@dataclass(frozen=True)
class Item:
    """One sample: the source prompt (activations copied from; the prompt itself for edits), the target prompt
    (run and patched), the image seed, the position of the studied word in the source, and (swap) its partner's."""

    source: str
    target: str
    seed: int
    index: int
    partner: int | None = None

    @property
    def word(self) -> str:
        return self.source.split()[self.index]


@dataclass(frozen=True)
class Config:
    """One patch or edit configuration: a site key or group name, a timestep bin (None: all), the site keys it
    touches."""

    site: str
    t_bin: int | None
    members: tuple[str, ...]


def differing_word(prompt: str, other: str) -> int:
    """Position of the one word in which two prompts differ; ValueError otherwise (patching compares like with
    like: same length, one word changed)."""
    a, b = prompt.lower().split(), other.lower().split()
    diff = [k for k, (x, y) in enumerate(zip(a, b)) if x != y]
    if len(a) != len(b) or len(diff) != 1:
        where = f"{len(a)} vs {len(b)} words" if len(a) != len(b) else f"words {[a[k] for k in diff]} -> {[b[k] for k in diff]}"
        raise ValueError(f"prompt {prompt!r} and counterfactual {other!r} must differ in exactly one word ({where})")
    return diff[0]


def select_sites(unet, kinds, names=None) -> list[Site]:
    """Patchable sites of `kinds` in forward order, or those named in `names` (short name, path or kind:path)."""
    bad = [k for k in kinds if k not in PATCHABLE]
    if bad:
        raise ValueError(f"kinds {bad} cannot be patched; patchable kinds: {', '.join(PATCHABLE)}")
    pool = [s for s in sitemap.sites(unet) if s.kind in kinds]
    if names is None:
        return pool
    by_name = {}
    for s in pool:
        for n in (s.short, s.path, site_key(s), site_label(s)):
            by_name.setdefault(n, []).append(s)
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise ValueError(f"unknown sites {unknown} for kinds {list(kinds)}; valid: {', '.join(site_key(s) for s in pool)}")
    chosen = {site_key(s) for n in names for s in by_name[n]}
    return [s for s in pool if site_key(s) in chosen]


def configurations(sites: list[Site], n_bins: int, groups: bool = True, singles: bool = True) -> list[Config]:
    """none; with `singles` every site x (each bin, all bins); with `groups` every kind's sites together, every
    level's cross-attention together and all sites, each x (each bin, all bins)."""
    if not (groups or singles):
        raise ValueError("configurations: nothing to patch (groups and singles both off)")
    bins = [*range(n_bins), None] if n_bins > 1 else [None]  # one bin is all bins
    out = [Config("none", None, ())]
    if singles:
        out += [Config(site_key(s), b, (site_key(s),)) for s in sites for b in bins]
    if groups:
        kinds = dict.fromkeys(s.kind for s in sites)
        sets = {f"kind:{k}": [site_key(s) for s in sites if s.kind == k] for k in kinds}
        for lv in sorted({s.level for s in sites if s.kind == "attn2"}):
            sets[f"level:{lv}"] = [site_key(s) for s in sites if s.kind == "attn2" and s.level == lv]
        every = [site_key(s) for s in sites]
        sets = {n: k for n, k in sets.items() if k != every}  # a group that is every site is reported as "all"
        sets["all"] = every
        out += [Config(name, b, tuple(keys)) for name, keys in sets.items() for b in bins]
    return out


def plan(configs: list[Config], n_bins: int) -> dict[str, torch.Tensor]:
    """{site key: (n_bins, len(configs)) bool}: where each configuration (a batch row) takes the patch."""
    keys = dict.fromkeys(k for c in configs for k in c.members)
    out = {k: torch.zeros(n_bins, len(configs), dtype=torch.bool) for k in keys}
    for r, c in enumerate(configs):
        for k in c.members:
            out[k][slice(None) if c.t_bin is None else c.t_bin, r] = True
    return out


def _sample(pipe, probes, prompts, seeds, run) -> torch.Tensor:
    for p in probes:
        p.expect(len(prompts))
    with attached(*probes):
        z = sampling.denoise(pipe, prompts, seeds, sample_steps=run["sample_steps"], guidance_scale=run["guidance_scale"],
                             height=run["height"], width=run["width"], output_type="latent")
    return z.float().cpu()


def _columns(full: dict[str, torch.Tensor], cols: torch.Tensor) -> dict[str, torch.Tensor]:
    """The plan of one pipeline call: the rows' columns of every site that any of them patches."""
    return {k: v[:, cols] for k, v in full.items() if bool(v[:, cols].any())}


def _calls(n_rows: int, batch: int):
    return [range(i, min(i + batch, n_rows)) for i in range(0, n_rows, batch)]


def patch_runs(pipe, items: list[Item], sites: list[Site], configs: list[Config], run: dict, *, batch: int,
               cache_items: int = 8, restore_noise: float | None = None, progress: bool = True):
    """Final latents of the source runs (n_items, C, h, w) and of every (item, configuration) row
    (n_items, n_configs, C, h, w). Sources are sampled and cached `cache_items` at a time; their patched rows
    follow in pipeline calls of `batch` rows. `restore_noise`: the target is the source prompt with the word's
    embeddings corrupted by that many standard deviations (restore mode)."""
    n_bins = run["n_bins"]
    full = plan(configs, n_bins)
    z_src, z_rows = [], []
    total = sum(len(_calls(len(items[i:i + cache_items]) * len(configs), batch))
                for i in range(0, len(items), cache_items))
    bar = tqdm(total=total, desc="patch", disable=not progress, dynamic_ncols=True)
    for start in range(0, len(items), cache_items):
        chunk = items[start:start + cache_items]
        cache = SourceCache(pipe, sites, timestep_bins=n_bins)
        z_src.append(_sample(pipe, [cache], [it.source for it in chunk], [it.seed for it in chunk], run))
        rows = [(i, r) for i in range(len(chunk)) for r in range(len(configs))]
        out = []
        for call in _calls(len(rows), batch):
            sel = [rows[j] for j in call]
            cols = torch.tensor([r for _, r in sel])
            sub = _columns(full, cols)
            probes = [Patcher(pipe, cache, sub, [i for i, _ in sel], timestep_bins=n_bins)] if sub else []
            prompts, seeds = [chunk[i].target for i, _ in sel], [chunk[i].seed for i, _ in sel]
            if restore_noise is None:
                out.append(_sample(pipe, probes, prompts, seeds, run))
            else:
                with corrupted(pipe, {chunk[i].source: chunk[i].index for i, _ in sel}, run["seed"], restore_noise):
                    out.append(_sample(pipe, probes, prompts, seeds, run))
            bar.update()
        z_rows.append(torch.cat(out).view(len(chunk), len(configs), *out[0].shape[1:]))
        del cache
    bar.close()
    return torch.cat(z_src), torch.cat(z_rows)


TOKEN_PARTS = ("word", "later_words", "end", "padding")


def edited_positions(tokenizer, prompt: str, index: int, parts=("word",)) -> tuple[int, ...]:
    """Token positions a knockout or reweight edits: the word's own tokens, and optionally the later words' tokens,
    the end token and the padding. CLIP's text encoder is causal, so every later position has seen the word and
    can carry it (on tiny_sd the colour is carried there, not by its own token: docs/results.md).
    """
    bad = [p for p in parts if p not in TOKEN_PARTS]
    if bad or not parts:
        raise ValueError(f"tokens={list(parts)}: a non-empty list from {', '.join(TOKEN_PARTS)}")
    spans = token_spans(tokenizer, prompt, tokenizer.model_max_length)
    words = [wt for wt in word_tokens(tokenizer, prompt) if not wt.truncated]
    pos = set()
    for wt in words:
        if (wt.index == index and "word" in parts) or (wt.index > index and "later_words" in parts):
            pos.update(wt.tokens)
    for part in ("end", "padding"):
        if part in parts:
            pos.update(spans[(part, "")])
    return tuple(sorted(pos))


def edit_runs(pipe, items: list[Item], configs: list[Config], run: dict, *, op: str, factor: float = 1.0,
              batch: int, tokens=("word",), progress: bool = True) -> torch.Tensor:
    """Final latents (n_items, n_configs, C, h, w) with the word's cross-attention edited as each configuration
    says (its members are attn2 site keys); knockout and reweight edit the `tokens` parts (`edited_positions`)."""
    n_bins = run["n_bins"]
    full = plan(configs, n_bins)
    rows = [(i, r) for i in range(len(items)) for r in range(len(configs))]
    n_keys = pipe.tokenizer.model_max_length
    out = []
    for call in tqdm(_calls(len(rows), batch), desc=op, disable=not progress, dynamic_ncols=True):
        sel = [rows[j] for j in call]
        cols = torch.tensor([r for _, r in sel])
        sub = {k.split(":", 1)[1]: v for k, v in _columns(full, cols).items()}  # attn2 keys -> module paths
        probes = []
        if sub:
            keys, order = [], []
            for i, _ in sel:
                it = items[i]
                mask = torch.zeros(n_keys, dtype=torch.bool)
                if op == "swap":
                    order.append(swap_order(n_keys, word_positions(pipe.tokenizer, it.source, it.index),
                                            word_positions(pipe.tokenizer, it.source, it.partner)))
                else:
                    mask[list(edited_positions(pipe.tokenizer, it.source, it.index, tokens))] = True
                keys.append(mask)
            probes = [TokenEdit(pipe, op, sub, keys=torch.stack(keys), order=torch.stack(order) if order else None,
                                factor=factor, timestep_bins=n_bins)]
        out.append(_sample(pipe, probes, [items[i].source for i, _ in sel], [items[i].seed for i, _ in sel], run))
    z = torch.cat(out)
    return z.view(len(items), len(configs), *z.shape[1:])


def empty_bins(pipe, sample_steps: int, n_bins: int) -> list[int]:
    """Timestep bins that no UNet call of a `sample_steps` run falls in (on a copy of the pipeline's scheduler)."""
    sched = type(pipe.scheduler).from_config(pipe.scheduler.config)
    sched.set_timesteps(sample_steps)
    edges = bin_edges(n_bins, _num_train_timesteps(pipe) or 1000)
    hit = torch.bucketize(sched.timesteps.float(), edges[1:-1], right=True).clamp(0, n_bins - 1)
    return sorted(set(range(n_bins)) - set(hit.tolist()))


def bin_bounds(pipe, n_bins: int) -> list[tuple[float, float]]:
    e = bin_edges(n_bins, _num_train_timesteps(pipe) or 1000).tolist()
    return [(e[b], e[b + 1]) for b in range(n_bins)]


def build_items(mode: str, prompts: list[str], *, counterfactuals: list[str] | None = None, word: str | None = None,
                other: str | None = None, direction: str = "denoising", n_seeds: int = 1, seed: int = 0) -> list[Item]:
    """The items of a run: every prompt (pair) x `n_seeds` image seeds (`sampling.image_seed` of the run seed and
    the item's index, so two runs with the same seed sample the same noise). ValueError on words not in a prompt
    or pairs that do not differ in one word."""
    out = []
    for p_i, prompt in enumerate(prompts):
        partner = None
        if mode == "patch":
            cf = counterfactuals[p_i]
            index = differing_word(prompt, cf)
            source, target = (prompt, cf) if direction == "denoising" else (cf, prompt)
        else:
            source = target = prompt
            words = prompt.lower().split()
            if word is None and counterfactuals:  # generated pairs: the changed word, wherever it repeats
                index = differing_word(prompt, counterfactuals[p_i])
            else:
                index = _only(words, word, "word", prompt)
            if mode == "swap":
                if other is None or str(other).lower() == words[index]:
                    raise ValueError(f"mode=swap needs other= a second word of the prompt {prompt!r} (words {words}), "
                                     f"got {other!r}")
                partner = _only(words, other, "other", prompt)
        for s in range(n_seeds):
            out.append(Item(source, target, sampling.image_seed(seed, p_i * n_seeds + s), index, partner))
    return out


def _only(words: list[str], word, name: str, prompt: str) -> int:
    """Position of `word` in the prompt's words; ValueError when absent or repeated (which occurrence is meant?)."""
    w = None if word is None else str(word).lower()
    if w not in words:
        raise ValueError(f"{name}={word!r} is not in the prompt {prompt!r}; its words are {words}")
    if words.count(w) > 1:
        raise ValueError(f"{name}={word!r} occurs {words.count(w)} times in {prompt!r}: give a prompt where it occurs once")
    return words.index(w)


def verdicts(evaluator, pipe, latents: torch.Tensor, prompts: list[str], batch: int = 256) -> list[dict]:
    """The evaluator's `attribute_scores` of the decoded latents against `prompts`."""
    out = []
    for i in range(0, len(latents), batch):
        images = torch.from_numpy(sampling.decode(pipe, latents[i:i + batch].to(pipe.vae.device))).permute(0, 3, 1, 2)
        out += evaluator.attribute_scores(images.float() / 255, prompts[i:i + batch])
    return out


def swapped(prompt: str, a: int, b: int) -> str:
    words = prompt.split()
    words[a], words[b] = words[b], words[a]
    return " ".join(words)


def samples(mode: str, items: list[Item], configs: list[Config], z_rows: torch.Tensor, z_src: torch.Tensor | None,
            evaluator=None, pipe=None, attribute_of=None, object_of=None) -> pd.DataFrame:
    """Per (item, configuration, measure) one value (NaN where the item does not count for that measure).

    latent_toward_source (patch, restore) or latent_change (edits) on every checkpoint; with an evaluator and a
    word whose attribute it reads: attribute_flip (the image has the source's object, colour and shape; swap: the
    partner's attribute on the word's object), attribute_kept (edits: the prompt's attribute alone still reads). An item counts for an attribute measure when the
    unpatched runs read as they should: the source reads its attribute, the target reads its own (patch) or lost it
    (restore); for edits the unedited run reads the prompt's attribute."""
    none = next(r for r, c in enumerate(configs) if c.site == "none")
    n_items, n_cfg = z_rows.shape[:2]
    rows = []
    for i in range(n_items):
        if mode in EDITS:
            vals = effects.relative_change(z_rows[i], z_rows[i, none].expand_as(z_rows[i]))
            rows += [(i, r, "latent_change", float(v)) for r, v in enumerate(vals)]
        else:
            vals = effects.toward(z_rows[i], z_rows[i, none].expand_as(z_rows[i]), z_src[i].expand_as(z_rows[i]))
            rows += [(i, r, "latent_toward_source", float(v)) for r, v in enumerate(vals)]
    if evaluator is not None:
        rows += _attribute_samples(mode, items, z_rows, z_src, evaluator, pipe, attribute_of, object_of, none)
    return pd.DataFrame(rows, columns=["item", "config", "measure", "value"])


def _attribute_samples(mode, items, z_rows, z_src, evaluator, pipe, attribute_of, object_of, none) -> list:
    n_items, n_cfg = z_rows.shape[:2]
    attrs = [attribute_of(it.word) for it in items]
    if not any(attrs):
        return []
    flat = z_rows.flatten(0, 1)
    expect = [(swapped(it.source, it.index, it.partner) if mode == "swap" else it.source) for it in items]
    rows = []
    v_expect = verdicts(evaluator, pipe, flat, [expect[i] for i in range(n_items) for _ in range(n_cfg)])
    v_own = verdicts(evaluator, pipe, flat, [items[i].source for i in range(n_items) for _ in range(n_cfg)])         if mode == "swap" else v_expect
    v_target = None
    if mode == "patch":
        v_target = verdicts(evaluator, pipe, z_rows[:, none], [it.target for it in items])
    v_src = verdicts(evaluator, pipe, z_src, [it.source for it in items]) if z_src is not None else None
    for i, it in enumerate(items):
        attr = attrs[i]
        if attr is None:
            continue
        obj = object_of(it.source, it.index)
        at = lambda v, r: effects.reads(v[i * n_cfg + r], attr, obj)  # noqa: E731
        if mode in EDITS:
            valid = effects.reads(v_own[i * n_cfg + none], attr, obj, whole=False)
        elif mode == "patch":
            valid = effects.reads(v_src[i], attr, obj) and effects.reads(v_target[i], attr, obj)
        else:  # restore: the clean run reads the word, the corrupted one does not
            valid = effects.reads(v_src[i], attr, obj) and not at(v_expect, none)
        for r in range(n_cfg):
            if mode != "knockout" and mode != "reweight":
                rows.append((i, r, "attribute_flip", float(at(v_expect, r)) if valid else float("nan")))
            if mode in EDITS:  # the attribute alone: a knocked-out colour word, does the colour survive?
                kept = effects.reads(v_own[i * n_cfg + r], attr, obj, whole=False)
                rows.append((i, r, "attribute_kept", float(kept) if valid else float("nan")))
    return rows


def row_key(site: str, kind: str) -> str:
    """The configuration name of a causal.csv row (its `site` is the module path for single sites)."""
    return site if site in ("none", "all") or site.startswith(("kind:", "level:")) else f"{kind}:{site}"


def table(samples_: pd.DataFrame, configs: list[Config], sites: list[Site], bounds: list[tuple[float, float]],
          latent_hw: tuple[int, int], **columns) -> pd.DataFrame:
    """causal.csv: one row per configuration x measure with its mean, 95% CI (method named) and n, and where the
    configuration sits (site path, label, kind, level, resolution, timestep bin and its range)."""
    by_key = {site_key(s): s for s in sites}
    t_max = bounds[-1][1]
    out = []
    for (r, measure), g in samples_.groupby(["config", "measure"], sort=True):
        c = configs[r]
        s = by_key.get(c.site)
        if s is not None:
            where = dict(site=s.path, label=site_label(s), kind=s.kind, level=s.level)
        elif c.site.startswith("kind:"):
            where = dict(site=c.site, label=f"all {c.site[5:]}", kind=c.site[5:], level=None)
        elif c.site.startswith("level:"):
            lv = int(c.site[6:])
            where = dict(site=c.site, label=f"x-attn level {lv}", kind="attn2", level=lv)
        else:
            where = dict(site=c.site, label=c.site, kind="", level=None)
        lv = where["level"]
        res = None if lv is None else "x".join(str(sitemap.side(n, lv)) for n in latent_hw)
        lo, hi = (0.0, t_max) if c.t_bin is None else bounds[c.t_bin]
        stat = effects.summarise(g["value"].tolist(), binary=measure.startswith("attribute"))
        out.append({**columns, **where, "resolution": res, "t_bin": "all" if c.t_bin is None else c.t_bin,
                    "t_lo": lo, "t_hi": hi, "measure": measure, **stat})
    return pd.DataFrame(out)
