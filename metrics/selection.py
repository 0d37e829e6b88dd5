"""Which metrics a scorer produces and which one is the headline (primary), known from its parts before any image:
a primary that can never be computed is a config error found before sampling, not after."""

from __future__ import annotations

# per-image metrics: name -> higher is better
PER_IMAGE = {"clip_evaluator": True, "colour_acc": True, "shape_acc": True, "object_acc": True,
             "all_correct": True, "count_correct": True, "relation_acc": True, "clip_score": True,
             "clip_score_x100": True}


def distance_names(extractor: str) -> tuple[str, str]:
    """(FD name, KID name) in an extractor's feature space: the evaluator's, or Inception's (FID proper)."""
    return ("fd_evaluator", "kid_evaluator") if extractor == "evaluator" else ("fid", "kid_inception")


def producible_metrics(extractors, *, kid: bool, evaluator: bool, clip: bool) -> set[str]:
    """Metric names a scorer with these parts can produce, known before any image (the naming of `compute`).

    Floors are left out (they also need enough reference images); the evaluator's per-image metrics are
    included although prompts outside its vocabulary drop them at run time.
    """
    out = set()
    for name in extractors:
        fd, kid_name = distance_names(name)
        out |= {fd, kid_name, f"{kid_name}_std"} if kid else {fd}
    if evaluator:
        out |= {k for k in PER_IMAGE if not k.startswith("clip_score")}
    if clip:
        out |= {"clip_score", "clip_score_x100"}
    return out


def choose_primary(primary: str, fallback: str, producible: set[str], fid_status: str) -> str:
    """`primary` when it can be computed, else `fallback`; a ValueError naming both when neither can."""
    if primary in producible:
        return primary
    if fallback in producible:
        return fallback
    raise ValueError(f"metrics.primary={primary!r} cannot be computed (FID: {fid_status}) and neither can its "
                     f"fallback metrics.fid.fallback={fallback!r} (e.g. the evaluator is disabled); this scorer can "
                     f"compute {sorted(producible) or 'nothing'}: enable what the fallback needs or set "
                     f"metrics.primary / metrics.fid.fallback to one of those")
