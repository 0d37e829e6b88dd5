"""The procedural "shapes" world: captioned 64x64 images with per-word ground-truth masks.

Every sample is a pure function of ``(seed, index)`` -- no files, no global state -- so any
sample can be regenerated anywhere, and the train / held-out split is simply a different seed
(``TRAIN_SEED`` vs ``HELDOUT_SEED``).

A scene holds 1-3 flat-coloured, non-overlapping objects on a plain background. Captions come
from templates; two-object captions state a spatial relation that is true of the image
("a red circle left of a blue square"). Each caption word that names an object (its colour
word, its shape word and, when present, its size word) maps to that object's binary mask;
function words ("a", "of", "and", relations) have no mask.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

IMAGE_SIZE = 64
BACKGROUND = (235, 235, 235)
# Well separated in RGB and all far from the background, so colour segmentation of generated
# images is a nearest-prototype lookup (see `colour_segmentation`).
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 200, 30),
    "purple": (140, 60, 190),
    "orange": (245, 130, 20),
}
SHAPES = ("circle", "square", "triangle", "diamond")
SIZES = {"small": (6.5, 8.5), "large": (10.5, 12.5)}  # object "radius" range in pixels
RELATIONS = ("left of", "right of", "above", "below")
FUNCTION_WORDS = ("a", "an", "and", "of", "left", "right", "above", "below")

TRAIN_SEED = 0
HELDOUT_SEED = 1

# Mixture of scene types in the training distribution.
N_OBJECTS_P = (0.4, 0.45, 0.15)
P_SIZE_WORD = 0.25


def vocabulary() -> list[str]:
    """Every word a caption can contain, in a stable order."""
    return sorted(set(COLOURS) | set(SHAPES) | set(SIZES) | set(FUNCTION_WORDS))


@dataclass
class ShapeObject:
    colour: str
    shape: str
    size: str
    cx: float
    cy: float
    r: float

    @property
    def label(self) -> str:
        return f"{self.colour} {self.shape}"


@dataclass
class Sample:
    """One scene: image (H, W, 3) uint8, caption, objects and per-word masks."""

    image: np.ndarray
    caption: str
    objects: list[ShapeObject]
    relation: str | None
    # (word, object index or None) for every caption word, in caption order.
    word_objects: list[tuple[str, int | None]] = field(default_factory=list)
    object_masks: np.ndarray | None = None  # (n_objects, H, W) bool

    @property
    def words(self) -> list[str]:
        return [w for w, _ in self.word_objects]

    def word_mask(self, i: int) -> np.ndarray | None:
        """Mask of the i-th caption word, or None for a function word."""
        obj = self.word_objects[i][1]
        return None if obj is None else self.object_masks[obj]

    def masks_by_word(self) -> dict[str, np.ndarray]:
        """{word: mask} for object words; a word naming several objects gets their union."""
        out: dict[str, np.ndarray] = {}
        for word, obj in self.word_objects:
            if obj is not None:
                m = self.object_masks[obj]
                out[word] = out[word] | m if word in out else m.copy()
        return out


# ---------------------------------------------------------------------------------------------
# geometry: pure functions from object parameters to masks

def shape_mask(shape: str, cx: float, cy: float, r: float, size: int = IMAGE_SIZE) -> np.ndarray:
    """Binary mask of one shape centred at (cx, cy) with half-extent r, sampled at pixel centres."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    dx, dy = x - cx, y - cy
    if shape == "circle":
        return dx * dx + dy * dy <= r * r
    if shape == "square":
        s = r * 0.9  # equal area-ish with the circle, so size words mean the same thing
        return (np.abs(dx) <= s) & (np.abs(dy) <= s)
    if shape == "diamond":
        return np.abs(dx) + np.abs(dy) <= r * 1.25
    if shape == "triangle":
        # upward isosceles triangle inscribed in the box [cx-r, cx+r] x [cy-r, cy+r]
        t = (dy + r) / (2 * r)  # 0 at the apex, 1 at the base
        return (t >= 0) & (t <= 1) & (np.abs(dx) <= t * r * 1.1)
    raise ValueError(f"unknown shape {shape!r}; choose from {SHAPES}")


def render(objects: list[ShapeObject], size: int = IMAGE_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """Image (H, W, 3) uint8 and object masks (n, H, W) bool for non-overlapping objects."""
    img = np.empty((size, size, 3), np.uint8)
    img[:] = BACKGROUND
    masks = np.stack([shape_mask(o.shape, o.cx, o.cy, o.r, size) for o in objects])
    for o, m in zip(objects, masks):
        img[m] = COLOURS[o.colour]
    return img, masks


# ---------------------------------------------------------------------------------------------
# scene sampling

def _satisfies(rel: str, a: ShapeObject, b: ShapeObject, margin: float = 4.0) -> bool:
    """Is `a <rel> b` true, with a margin so the relation is visually unambiguous?"""
    if rel == "left of":
        return a.cx + margin < b.cx and abs(a.cx - b.cx) > abs(a.cy - b.cy)
    if rel == "right of":
        return a.cx > b.cx + margin and abs(a.cx - b.cx) > abs(a.cy - b.cy)
    if rel == "above":
        return a.cy + margin < b.cy and abs(a.cy - b.cy) > abs(a.cx - b.cx)
    if rel == "below":
        return a.cy > b.cy + margin and abs(a.cy - b.cy) > abs(a.cx - b.cx)
    raise ValueError(rel)


# half-extent of each shape's bounding box in units of r (see `shape_mask`)
EXTENT = {"circle": 1.0, "square": 0.9, "diamond": 1.25, "triangle": 1.1}


def _apart(a: ShapeObject, b: ShapeObject, gap: float = 3.0) -> bool:
    # keep bounding boxes separated (Chebyshev distance) so masks never overlap or touch
    return max(abs(a.cx - b.cx), abs(a.cy - b.cy)) > EXTENT[a.shape] * a.r + EXTENT[b.shape] * b.r + gap


def _random_object(rng: np.random.Generator, colour: str, shape: str, size: str | None = None) -> ShapeObject:
    size = size or str(rng.choice(list(SIZES)))
    lo, hi = SIZES[size]
    r = float(rng.uniform(lo, hi))
    pad = EXTENT[shape] * r + 1
    cx, cy = rng.uniform(pad, IMAGE_SIZE - pad, size=2)
    return ShapeObject(colour, shape, size, float(cx), float(cy), r)


def _distinct_pairs(rng: np.random.Generator, n: int) -> list[tuple[str, str]]:
    """n (colour, shape) pairs, all different, so every caption phrase names one object."""
    pairs: list[tuple[str, str]] = []
    while len(pairs) < n:
        p = (str(rng.choice(list(COLOURS))), str(rng.choice(SHAPES)))
        if p not in pairs:
            pairs.append(p)
    return pairs


def _article(next_word: str) -> str:
    return "an" if next_word[0] in "aeiou" else "a"


def _phrase(o: ShapeObject, with_size: bool) -> list[str]:
    words = ([o.size] if with_size else []) + [o.colour, o.shape]
    return [_article(words[0])] + words


def sample_scene(rng: np.random.Generator, n_objects: int, relation: str | None = None,
                 pairs: list[tuple[str, str]] | None = None, with_size: bool | None = None,
                 sizes: list[str] | None = None) -> Sample:
    """Draw one scene. `relation` applies to two-object scenes (random when None); `sizes` fixes each object's
    size class (random when None)."""
    if n_objects not in (1, 2, 3):
        raise ValueError(f"n_objects must be 1, 2 or 3, got {n_objects}")
    pairs = pairs or _distinct_pairs(rng, n_objects)
    if with_size is None:
        with_size = bool(rng.random() < P_SIZE_WORD)
    if n_objects == 2 and relation is None:
        relation = str(rng.choice(RELATIONS))
    for attempt in range(2000):
        # crowded scenes may not fit large objects: after many tries, draw them small
        objs = [_random_object(rng, c, s, sizes[k] if sizes else "small" if attempt >= 500 else None)
                for k, (c, s) in enumerate(pairs)]
        if not all(_apart(a, b) for i, a in enumerate(objs) for b in objs[i + 1:]):
            continue
        if n_objects == 2 and not _satisfies(relation, objs[0], objs[1]):
            continue
        break
    else:  # pragma: no cover - placement always succeeds well before this in practice
        raise RuntimeError("could not place objects")
    image, masks = render(objs)

    # caption words with the object each one names
    word_objects: list[tuple[str, int | None]] = []

    def add_phrase(k: int) -> None:
        for w in _phrase(objs[k], with_size):
            word_objects.append((w, None if w in ("a", "an") else k))

    add_phrase(0)
    if n_objects == 2:
        word_objects += [(w, None) for w in relation.split()]
        add_phrase(1)
    elif n_objects == 3:
        word_objects.append(("and", None))
        add_phrase(1)
        word_objects.append(("and", None))
        add_phrase(2)
    caption = " ".join(w for w, _ in word_objects)
    return Sample(image, caption, objs, relation if n_objects == 2 else None, word_objects, masks)


def sample(seed: int, index: int, n_objects: int | None = None) -> Sample:
    """The `index`-th sample of the split `seed`: a pure function of its arguments."""
    rng = np.random.default_rng([int(seed), int(index), 0 if n_objects is None else int(n_objects)])
    if n_objects is None:
        n_objects = int(rng.choice([1, 2, 3], p=N_OBJECTS_P))
    return sample_scene(rng, n_objects)


def redraw(s: Sample, rng: np.random.Generator) -> Sample:
    """The same caption drawn again: new positions, new sizes where the caption names none (a stated size is kept).

    Real images of the *same prompts* as a reference set, for a real-vs-real floor that measures placement and
    unstated-size variation only, as generated images of those prompts do (not the gap between two prompt sets)."""
    stated = any(w in SIZES for w in s.words)
    new = sample_scene(rng, len(s.objects), s.relation, [(o.colour, o.shape) for o in s.objects], stated,
                       [o.size for o in s.objects] if stated else None)
    if new.caption != s.caption:  # pragma: no cover - the caption is a function of what is passed
        raise AssertionError(f"redraw changed the caption: {s.caption!r} -> {new.caption!r}")
    return new


def batch(seed: int, indices, n_objects: int | None = None) -> tuple[np.ndarray, list[str], list[Sample]]:
    """Images (B, H, W, 3) uint8, captions, and the samples themselves."""
    samples = [sample(seed, int(i), n_objects) for i in indices]
    return np.stack([s.image for s in samples]), [s.caption for s in samples], samples


# ---------------------------------------------------------------------------------------------
# prompts and colour segmentation (for generated images, whose objects are flat colours)

def parse_prompt(prompt: str) -> list[tuple[str, str, str | None]]:
    """Objects named in a world prompt: [(colour, shape, size or None)], in order.

    Raises ValueError naming the offending words when the prompt leaves the vocabulary.
    """
    words = prompt.lower().replace(",", " ").split()
    unknown = sorted({w for w in words if w not in vocabulary()})
    if unknown:
        raise ValueError(f"words {unknown} are not in the shapes-world vocabulary: {vocabulary()}")
    objs, size, colour = [], None, None
    for w in words:
        if w in SIZES:
            size = w
        elif w in COLOURS:
            colour = w
        elif w in SHAPES:
            objs.append((colour, w, size))
            size = colour = None
    return objs


def prompt_relation(prompt: str) -> str | None:
    p = " " + " ".join(prompt.lower().split()) + " "
    for rel in RELATIONS:
        if f" {rel} " in p:
            return rel
    return None


def colour_segmentation(image: np.ndarray, max_dist: float = 90.0) -> np.ndarray:
    """Label map (H, W) int: -1 background, k = index into COLOURS of the nearest prototype.

    Pixels far from every prototype (distance > max_dist) and pixels nearest the background are -1.
    """
    protos = np.array([BACKGROUND] + list(COLOURS.values()), np.float32)
    d = np.linalg.norm(image[..., None, :].astype(np.float32) - protos, axis=-1)  # (H, W, 1+C)
    lab = d.argmin(-1) - 1
    lab[d.min(-1) > max_dist] = -1
    return lab
