"""How reliably does tiny_sd draw one prompt? Score it over many noise seeds with the independent evaluator.

    python benchmarks/tiny_sd_prompt.py "a red circle left of a blue square" ["a blue square right of a red circle" ...]
        [--n-seeds 64] [--steps 25] [--cfg 5.0] [--model tiny_sd]

The aggregate bar (`tiny_sd_quality.py`) averages over held-out prompts; a single prompt, such as the README's
example, can sit well above or below that average. Prints, per prompt, the share of seeds with every named object
right (strict scoring), each named object's colour/shape accuracy, exactly-k-objects drawn and, for two-object
prompts, the relation, with 95% Wilson CIs. Random placement satisfies a relation (right order *and* dominant axis,
`shapes._satisfies`) about a quarter of the time, so a relation share near 0.25 x both-right means it is ignored.
"""

from __future__ import annotations

import argparse

from foundation.io import write_json
from foundation.loading import load_pipeline
from foundation.sampling import image_seeds, sample
from metrics.evaluator import load_evaluator
from tiny_sd.prompts import check_prompts

from tiny_sd_quality import fmt_rate, rate  # a sibling script: benchmarks/ is on sys.path when run


def score(pipe, ev, prompt: str, n_seeds: int, steps: int, cfg: float, seed: int = 0) -> dict:
    seeds = image_seeds(seed, n_seeds)
    imgs = sample(pipe, pipe.unet, [prompt] * n_seeds, seeds, sample_steps=steps, guidance_scale=cfg, batch_size=64)
    sc = ev.attribute_scores(imgs, [prompt] * n_seeds)
    res = {"all_right": rate(s["all_correct"] for s in sc), "count_correct": rate(s["count_correct"] for s in sc)}
    for i, o in enumerate(sc[0]["objects"]):
        name = f"{o['colour']} {o['shape']}"
        res[f"{name}: colour"] = rate(s["objects"][i]["colour_ok"] for s in sc)
        res[f"{name}: shape"] = rate(s["objects"][i]["shape_ok"] for s in sc)
    if sc[0]["relation_correct"] is not None:
        res["relation"] = rate(bool(s["relation_correct"]) for s in sc)
    return res


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("prompts", nargs="+")
    ap.add_argument("--n-seeds", type=int, default=64)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--cfg", type=float, default=5.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", default="tiny_sd")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    pipe = load_pipeline(a.model)
    check_prompts(pipe, a.prompts)  # words outside the world's vocabulary fail here, before any sampling
    ev = load_evaluator()
    out = {}
    for p in a.prompts:
        out[p] = score(pipe, ev, p, a.n_seeds, a.steps, a.cfg, a.seed)
        print(f'"{p}" ({a.n_seeds} seeds, {a.steps} DDIM steps, CFG {a.cfg})')
        for k, v in out[p].items():
            print(f"  {k:24s} {fmt_rate(v)}")
    if a.out:
        write_json(a.out, out)
    return out


if __name__ == "__main__":
    main()
