"""How much of the second object reaches the text encoder's word states (the README's binding diagnosis).

    python benchmarks/text_word_states.py [--model tiny_sd|DIR ...]

For "a red circle left of a blue square" it prints, per word position, the cosine similarity of the word's
mean-centred state with the same position in two edited captions: the *last* shape swapped ("... a blue circle")
and the *first* object swapped ("a green triangle ..."). A state that encodes its own word changes when that word
changes (low cosine under the last-shape swap); a contrastive CLIP, which trains only its pooled end-of-text state,
leaves the second object's shape word nearly unchanged. Centring uses the mean state over 400 held-out two-object
captions, so the shared offset of every state does not inflate the cosines.

It also prints how much the *tail* (end-of-text token and padding) depends on the prompt: the RMS distance of the
tail states of those 400 captions from the empty prompt's states at the same positions, relative to the RMS of the
empty prompt's. A causal encoder's tail summarises the whole caption (large); a tail near 0 would carry no prompt,
so the UNet would have to read each object from its own words.
"""

from __future__ import annotations

import argparse

import torch

from ablations import load_pipeline
from tiny_sd import shapes

CAPTION = "a red circle left of a blue square"
EDITS = {"last shape swapped": "a red circle left of a blue circle",
         "first object swapped": "a green triangle left of a blue square"}


def _ids(tok, captions, device):
    return tok(captions, padding="max_length", max_length=tok.model_max_length, truncation=True,
               return_tensors="pt").input_ids.to(device)


@torch.no_grad()
def word_state_cosines(pipe, n_reference: int = 400) -> dict[str, list[tuple[str, float]]]:
    """{edit: [(word, cosine)]} for the words of CAPTION in order ("a" occurs twice, so not a dict)."""
    tok, te = pipe.tokenizer, pipe.text_encoder

    def states(captions):
        return te(_ids(tok, captions, te.device))[0].float()

    ref = states([shapes.sample(shapes.HELDOUT_SEED, i, 2).caption for i in range(n_reference)])
    mean = ref.reshape(-1, ref.shape[-1]).mean(0)
    base = states([CAPTION])[0] - mean
    words = CAPTION.split()
    out = {}
    for name, edited in EDITS.items():
        h = states([edited])[0] - mean
        # position 0 is the start token
        out[name] = [(w, float(torch.cosine_similarity(base[i + 1], h[i + 1], dim=0))) for i, w in enumerate(words)]
    return out


@torch.no_grad()
def tail_residual(pipe, n_reference: int = 400) -> float:
    """RMS of (tail state - empty prompt's state at that position) / RMS of the empty prompt's states."""
    tok, te = pipe.tokenizer, pipe.text_encoder
    ids = _ids(tok, [shapes.sample(shapes.HELDOUT_SEED, i, 2).caption for i in range(n_reference)], te.device)
    null = te(_ids(tok, [""], te.device))[0].float()
    tail = (ids == tok.eos_token_id).long().cumsum(1) > 0  # the end-of-text token and the padding after it
    diff = (te(ids)[0].float() - null)[tail]
    return float(diff.pow(2).sum(-1).mean().sqrt() / null[0, 1:].pow(2).sum(-1).mean().sqrt())


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", nargs="+", default=["tiny_sd"], help="tiny_sd and/or pipeline folders to compare")
    a = ap.parse_args(argv)
    res = {}
    for m in a.model:
        pipe = load_pipeline(m, device="cpu", dtype="float32")
        res[m] = {**word_state_cosines(pipe), "tail_residual": tail_residual(pipe)}
        print(f"{m}: cosine of mean-centred word states of \"{CAPTION}\" with an edited caption")
        for name, cos in res[m].items():
            if name != "tail_residual":
                print(f"  {name:22s} " + "  ".join(f"{w} {c:.3f}" for w, c in cos))
        print(f"  tail (end-of-text + padding) distance from the empty prompt's, relative RMS: "
              f"{res[m]['tail_residual']:.3f}")
    return res


if __name__ == "__main__":
    main()
