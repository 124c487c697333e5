"""Visual perturbations P(v) that weaken identity cues in the teacher's image (VGID paper, sec. 3.3, A.3.3).

Perturbations are pure functions of (image, seed key): the noise for a sample is drawn from a generator seeded
by the run seed, the sample id and the epoch, so a resumed run and every rank see the same teacher input
without carrying generator state around.
"""

from __future__ import annotations

import hashlib
from typing import Literal

import numpy as np
from PIL import Image

Perturbation = Literal["random_noise", "gaussian", "white", "none"]
PERTURBATIONS = ("random_noise", "gaussian", "white", "none")


def noise_rng(*key: object) -> np.random.Generator:
    """A generator seeded from an arbitrary key (e.g. seed, sample id, epoch); stable across processes."""
    digest = hashlib.sha256(repr(key).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def perturb_image(image: Image.Image, kind: str, *, sigma: float = 0.5, rng: np.random.Generator) -> Image.Image:
    """Return the perturbed copy of ``image`` (RGB, same size).

    - ``random_noise``: replaced by uniform random pixels (the paper's default).
    - ``gaussian``: additive N(0, (sigma * 255)^2) noise per pixel, clipped to [0, 255].
    - ``white``: replaced by a white image.
    - ``none``: unchanged (the ICU-T ablation).
    """
    image = image.convert("RGB")
    width, height = image.size
    if kind == "random_noise":
        pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    elif kind == "gaussian":
        base = np.asarray(image, dtype=np.float32)
        pixels = np.clip(base + rng.normal(0.0, sigma * 255.0, size=base.shape), 0, 255).astype(np.uint8)
    elif kind == "white":
        pixels = np.full((height, width, 3), 255, dtype=np.uint8)
    elif kind == "none":
        return image
    else:
        raise ValueError(f"unknown perturbation {kind!r}; expected one of {PERTURBATIONS}")
    return Image.fromarray(pixels, mode="RGB")
