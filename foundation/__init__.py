"""The foundation every area (tiny_sd, metrics, probes, ablations, reports) builds on, importing none of them: model
loading and verification (`loading`, `checkpoints`), the UNet site map (`sites`, `skips`), seeded sampling
(`sampling`), text conditioning (`conditioning`), prompt checks (`prompts`), pipeline facts (`pipeline`),
statistics (`stats`), files and provenance (`io`), config values (`values`), the CLIs' one-line errors (`cli`) and
a resumable training loop (`training`)."""
