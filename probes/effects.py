"""The causal probes' measures, as small pure functions of final latents and of the evaluator's verdicts.

Model-agnostic (any checkpoint): how far a patched run's final latent z moved from the target run's z_t toward the
source run's z_s, the projection <z - z_t, z_s - z_t> / |z_s - z_t|^2 (1: the source's output, 0: unmoved; the
"fraction of the logit difference recovered" of activation patching, Heimersheim & Nanda 2024), and the relative
change |z - z_ref| / |z_ref| of an edited run. tiny_sd: whether the evaluator reads an attribute (an object's colour
or shape, the relation) off the image, the ground truth the localisation is checked on.
"""

from __future__ import annotations

import torch

from foundation.stats import bootstrap_mean_ci, finite, wilson_interval


def toward(z: torch.Tensor, z_from: torch.Tensor, z_to: torch.Tensor) -> torch.Tensor:
    """(N,) projection of each row's move z - z_from onto z_to - z_from, in units of |z_to - z_from|."""
    d = (z_to - z_from).flatten(1).double()
    return ((z - z_from).flatten(1).double() * d).sum(1) / (d * d).sum(1).clamp_min(1e-30)


def relative_change(z: torch.Tensor, z_ref: torch.Tensor) -> torch.Tensor:
    """(N,) |z - z_ref| / |z_ref| per row."""
    return (z - z_ref).flatten(1).double().norm(dim=1) / z_ref.flatten(1).double().norm(dim=1).clamp_min(1e-30)


def reads(verdict: dict, attribute: str, obj: int | None, whole: bool = True) -> bool:
    """Whether an `attribute_scores` verdict, scored against the prompt that carries the expected attribute, has it.
    `whole`: the object is found with both its colour and its shape (the source's object, not the attribute on
    another object of the scene); else the attribute alone (the evaluator's colour or shape accuracy). A relation
    holds between both found objects."""
    if attribute == "relation":
        return bool(verdict["relation_correct"])
    o = verdict["objects"][obj]
    return bool(o["found"] if whole else o[f"{attribute}_ok"])


def summarise(values, binary: bool) -> dict:
    """Mean and 95% CI over items: Wilson's score interval for a fraction (exact-coverage-friendly at 0 and 1,
    where a bootstrap collapses), the percentile bootstrap of the mean otherwise."""
    v = finite(values)
    if binary:
        lo, hi = wilson_interval(int(v.sum()), v.size)
        return dict(value=float(v.mean()) if v.size else float("nan"), ci_lo=lo, ci_hi=hi, ci_method="wilson", n=v.size)
    mean, lo, hi = bootstrap_mean_ci(v)
    return dict(value=mean, ci_lo=lo, ci_hi=hi, ci_method="bootstrap", n=v.size)
