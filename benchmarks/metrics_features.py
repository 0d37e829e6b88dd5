"""Benchmark: features + FD/KID for 2,000 shapes-size (64x64) images on CPU, and the share spent extracting features.

    OMP_NUM_THREADS=1 python benchmarks/metrics_features.py [--n 2000] [--threads 1] [--inception PATH]

Stands in for "generated" images with held-out real images (the cost does not depend on content). Reports the
evaluator feature space always, and Inception-v3 (2048-d at 299 px) when a weights file is given. Reference
statistics are computed cold (into a temporary cache) and then read back warm, to show the cache's effect.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--inception", default=None, help="Inception weights file (random weights are fine for timing)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from metrics import FeatureStats, frechet_distance_from_moments, kid_subsets, reference_stats
    from metrics.data import ShapesSource
    from metrics.extractors import EvaluatorExtractor
    from tiny_sd import shapes

    t = time.perf_counter()
    imgs, _, _ = shapes.batch(shapes.HELDOUT_SEED, range(100_000, 100_000 + args.n))
    x = torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 255
    t_data = time.perf_counter() - t
    extractors = {"evaluator": EvaluatorExtractor()}
    if args.inception:
        from metrics import InceptionExtractor

        extractors["inception"] = InceptionExtractor(args.inception)
    print(f"n={args.n} images 64x64, torch threads={args.threads}, image synthesis {t_data:.2f}s (not counted)")
    for name, ext in extractors.items():
        with tempfile.TemporaryDirectory() as cache:
            src = ShapesSource()
            t = time.perf_counter()
            rstats, _ = reference_stats(src, ext, args.n, cache_dir=cache, batch_size=250)
            t_ref_cold = time.perf_counter() - t
            t = time.perf_counter()
            rstats, info = reference_stats(src, ext, args.n, cache_dir=cache)
            t_ref_warm = time.perf_counter() - t
            assert info["from_cache"]
        t = time.perf_counter()
        gen = FeatureStats(ext.dim, keep="float32")
        for i in range(0, args.n, 250):
            gen.update(ext(x[i:i + 250]))
        t_feat = time.perf_counter() - t
        t = time.perf_counter()
        fd = frechet_distance_from_moments(gen.mean, gen.cov, rstats.mean, rstats.cov)
        t_fd = time.perf_counter() - t
        t = time.perf_counter()
        kid = kid_subsets(gen.features, rstats.features.float(), subsets=100, subset_size=1000)
        t_kid = time.perf_counter() - t
        total = t_feat + t_fd + t_kid
        print(f"[{ext.name}] d={ext.dim}")
        print(f"  generated features     {t_feat:8.2f}s  ({args.n / t_feat:7.0f} img/s)")
        print(f"  FD (eigh, float64)     {t_fd:8.3f}s   FD={fd:.4f}")
        print(f"  KID (100 x {min(1000, args.n):4d})       {t_kid:8.2f}s   KID={np.mean(kid):.5f}")
        print(f"  total                  {total:8.2f}s   feature extraction share {100 * t_feat / total:5.1f}%")
        print(f"  reference stats cold   {t_ref_cold:8.2f}s   warm (cache) {t_ref_warm:.3f}s")


if __name__ == "__main__":
    main()
