"""The foundation every area (tiny_sd, probes, ablations, metrics, reports) builds on, importing none of them:
statistics (`stats`) and files and provenance (`io`)."""
