"""Does the evaluator still read colours and shapes after a pipeline's VAE? (a lower bound on generated-image
difficulty: every generated image passes through the same decoder)

    OMP_NUM_THREADS=1 python benchmarks/metrics_evaluator_robustness.py [--pipeline tiny_sd] [--n 300]

Prints held-out accuracy on real images and on their VAE reconstructions (encode -> latent mean -> decode), and
the mean colour each VAE gives to each world colour (a drift here is the VAE's, and the evaluator should follow it).
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pipeline", default="tiny_sd")
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from ablations import load_pipeline
    from tiny_sd import shapes
    from metrics.evaluator import heldout_accuracy, load_evaluator

    vae = load_pipeline(args.pipeline, device="cpu", dtype=torch.float32).vae
    ev = load_evaluator()
    imgs, caps, samples = shapes.batch(shapes.HELDOUT_SEED, range(args.n))
    x = torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        rec = torch.cat([vae.decode(vae.encode(x[i:i + 50] * 2 - 1).latent_dist.mean).sample
                         for i in range(0, len(x), 50)])
    rec = ((rec + 1) / 2).clamp(0, 1)

    def acc(images):
        det = ev.detect_objects(images)
        c = s = t = 0
        for smp, d in zip(samples, det):
            for k, o in enumerate(smp.objects):
                t += 1
                near = [q for q in d if smp.object_masks[k][int(q.cy), int(q.cx)]]
                c += bool(near) and near[0].colour == o.colour
                s += bool(near) and near[0].shape == o.shape
        scores = ev.attribute_scores(images, caps)
        return {"colour_acc": c / t, "shape_acc": s / t, "all_correct": float(np.mean([a["all_correct"] for a in scores])),
                "clip_evaluator": float(ev.clip_score(images, caps).mean())}

    rec8 = rec.permute(0, 2, 3, 1).numpy() * 255
    drift = {}
    for col in shapes.COLOURS:
        px = [rec8[i][smp.object_masks[k]] for i, smp in enumerate(samples) for k, o in enumerate(smp.objects)
              if o.colour == col]
        if px:
            drift[col] = {"true": list(shapes.COLOURS[col]), "vae": np.median(np.concatenate(px), 0).round().tolist()}
    print(json.dumps({"pipeline": args.pipeline, "n_images": args.n, "real": heldout_accuracy(ev, args.n),
                      "vae_reconstruction": acc(rec), "mae_u8": float((rec - x).abs().mean() * 255),
                      "colour_drift": drift}, indent=2))


if __name__ == "__main__":
    main()
