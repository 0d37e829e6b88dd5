"""The real-vs-real floor: FD/KID of disjoint real sets of the generated N, taken after the reference images of the
same source, each against the reference statistics (where a generator that matched the data would score).

One draw is noisy at small N, so the floor is the mean over ``floor_draws`` draws with a Student-t CI over them and
every draw's value in the provenance: a generated FD is at the floor when it sits inside that spread, not below
one number.
"""

from __future__ import annotations

from foundation.stats import t_interval

from .frechet import frechet_distance_from_moments
from .kid import kid_subsets
from .reference import reference_stats


def real_floor(source, extractor, n: int, rstats, cfg: dict, fd_name: str, kid_name: str, *, kid_device=None,
               progress: bool = False) -> tuple[dict, dict, dict, list[str]]:
    """({name: floor}, {name: [lo, hi]}, cache info, notes) at `n` generated images against the reference `rstats`
    of `extractor` (`cfg`: the metrics config); no floor, and a note, when `source` is too short for one draw."""
    start, want = cfg["reference"]["n"], max(1, int(cfg.get("floor_draws", 1)))
    draws = min(want, (len(source) - start) // n) if n else 0
    if draws < 1:
        return {}, {}, {}, [f"{fd_name}_floor skipped: {source.id} has {len(source)} images, the floor needs "
                            f"{start + n} (reference {start} + generated {n})"]
    notes = []
    if draws < want:
        notes.append(f"{fd_name}_floor over {draws} draws, not {want}: {source.id} has {len(source)} images")
    fds, kids, cached = [], [], []
    ref_features = rstats.features.float() if rstats.keep else None  # kept in float16: converted once, not per draw
    for k in range(draws):
        fstats, finfo = reference_stats(source, extractor, n, start=start + k * n, resolution=cfg["resolution"],
                                        resize=cfg["resize"], cache_dir=cfg["cache_dir"],
                                        batch_size=cfg["batch_size"], keep="float32", progress=progress)
        cached.append(finfo["from_cache"])
        fds.append(frechet_distance_from_moments(fstats.mean, fstats.cov, rstats.mean, rstats.cov))
        if rstats.keep:
            kids.append(float(kid_subsets(fstats.features, ref_features, cfg["kid"]["subsets"],
                                          cfg["kid"]["subset_size"], cfg["uncertainty"]["seed"], kid_device).mean()))
    info = {"floor_from_cache": all(cached),
            "floor_draws": {"n": n, "draws": draws, "first_image": start, fd_name: fds, kid_name: kids or None}}
    floors, ci = {}, {}
    for name, values in ((f"{fd_name}_floor", fds), (f"{kid_name}_floor", kids)):
        if values:
            m, lo, hi = t_interval(values, cfg["uncertainty"]["level"])
            floors[name] = m
            if len(values) > 1:
                ci[name] = [lo, hi]
    return floors, ci, info, notes
