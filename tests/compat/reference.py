"""Reference outputs of the *main* venv for the admitted-version-range stage (`.ci/compat`, `test_compat.py`).

    python tests/compat/reference.py OUT_DIR     # the main venv, before the compat venv runs

Writes into OUT_DIR:
- attention/heatmaps.npz (+ the probe's other files): `python -m probes attention` on ATTENTION_ARGS;
- colours.npz: the images of the COLOUR_PROMPTS (float32 (N, 3, H, W) in [0, 1]) and colours.json: the independent
  evaluator's per-prompt scores of them;
- versions.json: the libraries and interpreter that made them.

The compat venv runs these same functions (test_compat.py imports this file), so both sides run one piece of code
and differ only in the installed libraries.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# one single-object prompt per line of the 6 colours x 4 shapes grid, every colour and shape at least once
COLOUR_PROMPTS = ["a red circle", "a blue square", "a green triangle", "a yellow diamond", "a purple circle",
                  "an orange square", "a red triangle", "a blue diamond"]
COLOUR_SEED = 0      # job seed: image i gets noise seed foundation.sampling.image_seeds(0, 8)[i]
COLOUR_STEPS = 25    # the quality benchmark's sampler settings (benchmarks/tiny_sd_quality.py)
COLOUR_CFG = 5.0
ATTENTION_ARGS = ["prompt=a red circle left of a blue square", "seed=0", "sample_steps=10"]


def versions() -> dict:
    from importlib.metadata import version

    pkgs = ("torch", "diffusers", "transformers", "huggingface_hub", "tokenizers", "accelerate", "safetensors",
            "numpy", "hydra-core", "torchmetrics", "captum")
    out = {}
    for p in pkgs:
        try:
            out[p] = version(p)
        except Exception:  # not installed
            out[p] = None
    return {"python": sys.version.split()[0], "prefix": sys.prefix, **out}


def run_attention(python: str, out: Path, timeout: float = 300) -> Path:
    """`python -m probes attention ATTENTION_ARGS out=OUT` with `python`; returns OUT/heatmaps.npz."""
    out = Path(out)
    p = subprocess.run([python, "-m", "probes", "attention", *ATTENTION_ARGS, f"out={out}"], cwd=ROOT,
                       capture_output=True, text=True, timeout=timeout)
    if p.returncode != 0:
        raise RuntimeError(f"probe CLI failed (exit {p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return out / "heatmaps.npz"


def colour_samples(pipe=None):
    """(images float32 (N, 3, H, W) in [0, 1], evaluator scores per prompt) for COLOUR_PROMPTS on tiny_sd."""
    from ablations import load_pipeline
    from foundation.sampling import image_seeds, sample
    from metrics.evaluator import load_evaluator

    pipe = pipe if pipe is not None else load_pipeline("tiny_sd", device="cpu")
    seeds = image_seeds(COLOUR_SEED, len(COLOUR_PROMPTS))
    images = sample(pipe, pipe.unet, COLOUR_PROMPTS, seeds, sample_steps=COLOUR_STEPS, guidance_scale=COLOUR_CFG,
                    batch_size=len(COLOUR_PROMPTS), progress=False)
    scores = load_evaluator().attribute_scores(images, COLOUR_PROMPTS)
    return images.numpy(), scores


def colour_accuracy(scores) -> float:
    flags = [o["colour_ok"] for s in scores for o in s["objects"]]
    return sum(flags) / len(flags)


def main(argv=None) -> None:
    import numpy as np

    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        raise SystemExit("usage: python tests/compat/reference.py OUT_DIR")
    out = Path(argv[0])
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    run_attention(sys.executable, out / "attention")
    t1 = time.time()
    images, scores = colour_samples()
    np.savez(out / "colours.npz", images=images)
    (out / "colours.json").write_text(json.dumps({"prompts": COLOUR_PROMPTS, "scores": scores,
                                                  "colour_accuracy": colour_accuracy(scores)}, indent=2))
    t2 = time.time()
    v = versions()
    (out / "versions.json").write_text(json.dumps(v, indent=2))
    print(f"reference ({', '.join(f'{k} {v[k]}' for k in ('torch', 'diffusers', 'transformers'))}): "
          f"attention probe {t1 - t0:.1f}s, colour prompts {t2 - t1:.1f}s "
          f"(colour accuracy {colour_accuracy(scores):.3f}) -> {out}")


if __name__ == "__main__":
    main()
