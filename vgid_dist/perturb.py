"""Visual perturbations P(v) that weaken identity cues in the teacher's image (VGID paper, sec. 3.3, A.3.3).

Perturbations are pure functions of (image, seed key): the noise for a sample is drawn from a generator seeded
by the run seed, the sample id and the epoch, so a resumed run and every rank see the same teacher input
without carrying generator state around.

Noise is drawn at the resolution the vision tower sees (``view``: the model's ``FamilyAdapter.processor_input``,
the image resized and cropped as its processor does), not at the source image's size. Drawn at the source
size, the processor's resampling averages neighbouring noise pixels away: uniform noise on a 1024 px image
reached LLaVA-1.5's 336 px tower with a normalised standard deviation of 0.29 instead of 1.08. Drawn on the view, the
processor leaves it as it is, so every teacher sees the same noise statistics whatever the photo's size.
(The authors' released script replaces the processed pixel tensor with uniform [0, 1) values, i.e. after
normalisation; here the noise is in pixel units, before it.)
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import numpy as np
from PIL import Image

from vgid_dist.vocab import PERTURBATIONS


def noise_rng(*key: object) -> np.random.Generator:
    """A generator seeded from an arbitrary key (e.g. seed, sample id, epoch); stable across processes."""
    digest = hashlib.sha256(repr(key).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def perturb_image(image: Image.Image, kind: str, *, sigma: float = 0.5, rng: np.random.Generator,
                  view: Callable[[Image.Image], Image.Image]) -> Image.Image:
    """The perturbed copy of ``image`` (RGB) at the vision tower's input resolution.

    ``view``: the model's processor input view (``FamilyAdapter.processor_input``): ``image`` resized and
    cropped as the processor does; the result has that view's size.

    - ``random_noise``: replaced by uniform random pixels (the paper's default).
    - ``gaussian``: the view plus N(0, (sigma * 255)^2) noise per pixel, clipped to [0, 255].
    - ``white``: replaced by a white image.
    - ``none``: unchanged (the source image itself).
    """
    if kind == "none":
        return image.convert("RGB")
    if kind not in PERTURBATIONS:
        raise ValueError(f"unknown perturbation {kind!r}; expected none or one of {PERTURBATIONS}")
    seen = view(image.convert("RGB"))
    width, height = seen.size
    if kind == "random_noise":
        pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    elif kind == "gaussian":
        base = np.asarray(seen, dtype=np.float32)
        pixels = np.clip(base + rng.normal(0.0, sigma * 255.0, size=base.shape), 0, 255).astype(np.uint8)
    else:  # white
        pixels = np.full((height, width, 3), 255, dtype=np.uint8)
    return Image.fromarray(pixels, mode="RGB")
