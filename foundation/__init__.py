"""The foundation every area (tiny_sd, probes, ablations, metrics, reports) builds on, importing none of them:
statistics (`stats`), files and provenance (`io`), the UNet's text conditioning (`conditioning`) and pipeline facts
(`pipeline`)."""
