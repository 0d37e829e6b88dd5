"""Probes: context-managed hook points on a diffusers UNet (or pipeline).

    from probes import CrossAttentionProbe, TimestepProbe, SkipProbe, attached
    with attached(CrossAttentionProbe(pipe, n_images=len(prompts)), SkipProbe(pipe, n_images=len(prompts))) as (att, sk):
        pipe(prompts)
    att.word_heatmaps(prompts, (64, 64)); att.table(prompts); sk.table()

See docs/probes.md. CLI: `python -m probes attention prompt="..." seed=0 out=DIR`.
"""

from .attention import CrossAttentionProbe
from .attention_maths import attention_probs
from .hooks import Probe, ProbeError, attached, hooks_left, processors
from .skips import Skip, SkipIntervention, SkipProbe, skip_pairs
from .timestep import TembIntervention, TimestepProbe
from .words import resolve_word, word_index, word_tokens

__all__ = ["CrossAttentionProbe", "TimestepProbe", "SkipProbe", "SkipIntervention", "TembIntervention", "Skip",
           "skip_pairs", "Probe", "ProbeError", "attached", "hooks_left", "processors", "attention_probs",
           "resolve_word", "word_index", "word_tokens"]
