"""Teacher noise reaches the vision tower with the same statistics whatever the source image's size: drawn at the
processor's input resolution (LLaVA: resize + centre crop; Qwen2.5-VL: dynamic resolution), for both noise kinds;
the processed pixels can be turned back into the picture the processor saw."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from vgid_dist.models import load_adapter
from vgid_dist.perturb import noise_rng, perturb_image

# Normalised std of uniform 0-255 pixels: sqrt((256^2 - 1) / 12) / 255 / the CLIP std of each channel.
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711])
UNIFORM_STD = np.sqrt((256**2 - 1) / 12) / 255 / CLIP_STD


def gradient_image(width: int, height: int) -> Image.Image:
    x, y = np.meshgrid(np.linspace(0, 1, width), np.linspace(0, 1, height))
    return Image.fromarray((np.stack([x, y, 1 - x * y], -1) * 200 + 20).astype(np.uint8), mode="RGB")


@pytest.fixture(scope="module", params=["llava", "qwen_fixed", "qwen_dynamic"])
def adapter(request, tiny_llava, tiny_qwen):
    if request.param == "llava":
        return load_adapter(tiny_llava)  # 28 x 28 crop
    a = load_adapter(tiny_qwen)
    if request.param == "qwen_dynamic":  # a pixel budget wide enough for the aspect ratio to survive
        a.image_processor.size = {"shortest_edge": 28 * 28 * 4, "longest_edge": 28 * 28 * 16}
    return a


def source_sizes(adapter) -> list[tuple[int, int]]:
    if adapter.family == "llava" or adapter.image_processor.size["shortest_edge"] == adapter.image_processor.size[
            "longest_edge"]:
        return [(64, 64), (1024, 1024)]
    return [(300, 200), (1200, 800)]  # both 112 x 84 at the tower: 12 merged tokens


def processed(adapter, image: Image.Image) -> np.ndarray:
    return adapter.pixel_array(adapter.encode_image(image).tensors)


def test_the_view_is_what_the_processor_sees_and_a_fixed_point(adapter):
    for size in source_sizes(adapter):
        image = gradient_image(*size)
        view = adapter.processor_input(image)
        assert np.array_equal(processed(adapter, view), processed(adapter, image))
        assert adapter.encode_image(view).num_tokens == adapter.encode_image(image).num_tokens
        # Processed pixels turned back into 0-255 pixels give the view back (to rounding).
        back = np.asarray(adapter.viewable(adapter.encode_image(view).tensors), dtype=np.int16)
        assert np.abs(back - np.asarray(view, dtype=np.int16)).max() <= 1


def test_random_noise_std_does_not_depend_on_the_source_size(adapter):
    stds = []
    for size in source_sizes(adapter):
        image = gradient_image(*size)
        draws = [processed(adapter, perturb_image(image, "random_noise", rng=noise_rng(7, key, size),
                                                  view=adapter.processor_input)) for key in range(6)]
        stds.append(np.mean([d.reshape(3, -1).std(axis=1) for d in draws], axis=0))
        assert perturb_image(image, "random_noise", rng=noise_rng(0), view=adapter.processor_input).size == \
            adapter.processor_input(image).size
    small, large = stds
    assert np.allclose(small, large, rtol=0.05), (small, large)
    assert np.allclose(small, UNIFORM_STD, rtol=0.05), (small, UNIFORM_STD)


def test_gaussian_noise_std_does_not_depend_on_the_source_size(adapter):
    sigma = 0.1  # small enough that clipping at 0 and 255 does not bite on the gradient image
    stds = []
    for size in source_sizes(adapter):
        image = gradient_image(*size)
        clean = processed(adapter, adapter.processor_input(image))
        diffs = [processed(adapter, perturb_image(image, "gaussian", sigma=sigma, rng=noise_rng(3, key, size),
                                                  view=adapter.processor_input)) - clean for key in range(6)]
        stds.append(np.mean([d.reshape(3, -1).std(axis=1) for d in diffs], axis=0))
    small, large = stds
    assert np.allclose(small, large, rtol=0.05), (small, large)
    assert np.allclose(small, sigma / CLIP_STD, rtol=0.05), (small, sigma / CLIP_STD)


def test_noise_is_a_function_of_the_seed_key(adapter):
    image = gradient_image(*source_sizes(adapter)[0])
    a, b, c = (np.asarray(perturb_image(image, "random_noise", rng=noise_rng(*key), view=adapter.processor_input))
               for key in ((1, "s", 0), (1, "s", 0), (1, "s", 1)))
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert perturb_image(image, "none", rng=noise_rng(0), view=adapter.processor_input).size == image.size
    with pytest.raises(ValueError, match="unknown perturbation 'blur'"):
        perturb_image(image, "blur", rng=noise_rng(0), view=adapter.processor_input)
