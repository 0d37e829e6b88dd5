"""An independent evaluator for the shapes world: image features, image-text similarity, object attributes.

Why a separate model: scoring tiny_sd with its own conditioner (a CLIP ViT trained on the same pairs) would
let the generator grade itself. This evaluator is trained separately, with a different seed (`SEED`), and a
different image architecture (small CNNs rather than a ViT). It provides

* ``image_features``: a global CNN embedding (the penultimate layer of the contrastive image tower), the
  feature space of "FD/KID (evaluator)" -- the shapes-world analogue of Inception pool3 features for FID;
* ``text_features`` / ``clip_score``: a CLIP-style contrastive pair (Radford et al. 2021) with its own tiny
  word-level text transformer over the shapes vocabulary; ``clip_score`` is the raw cosine (CLIPScore,
  Hessel et al. 2021, without the 100x / 2.5x rescaling);
* ``detect_objects`` / ``attribute_scores``: foreground = pixels far from the known background colour,
  connected components (scipy.ndimage), each component cropped and classified by a small CNN into colour (6)
  and shape (4). The crop classifier is trained on *augmented* real crops (noise, blur, colour jitter, scale)
  so that it transfers to the soft, noisy edges of generated images.

Modules: `networks` (the towers and the crop classifier), `detection` (components, crops, the scoring rule),
`model` (`ShapesEvaluator`, `load_evaluator`, config), `augment`, `training` (`train`, `heldout_accuracy`) and
`__main__` (``python -m metrics.evaluator --train`` rebuilds the shipped weights in ``tiny_sd/weights/evaluator``:
fp16 safetensors, config and a training record with seed, config and git revision; ``--eval`` prints held-out
accuracy).
"""

from .augment import augment
from .detection import DetectedObject, crop_component, foreground_components, relation_holds, score_prompt
from .model import DEFAULT_CONFIG, SEED, WEIGHTS_DIR, ShapesEvaluator, load_evaluator
from .networks import COLOURS, SHAPES, CropClassifier, EvaluatorNet, tokenize, to_model_size
from .training import heldout_accuracy, object_crops, train

__all__ = [
    "COLOURS", "CropClassifier", "DEFAULT_CONFIG", "DetectedObject", "EvaluatorNet", "SEED", "SHAPES",
    "ShapesEvaluator", "WEIGHTS_DIR", "augment", "crop_component", "foreground_components", "heldout_accuracy",
    "load_evaluator", "object_crops", "relation_holds", "score_prompt", "tokenize", "to_model_size", "train",
]
