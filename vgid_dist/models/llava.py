"""LLaVA-1.5 (LlavaForConditionalGeneration): ``USER: <image>\\n... ASSISTANT:`` prompts, fixed image tokens."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from vgid_dist.models.base import EncodedImage, FamilyAdapter, first_tensor

# The official MLLMU-Bench evaluator's wrappers (note the generation variants' spacing, kept as is).
_EVAL_TEMPLATES = {
    ("chat", True): "USER: <image>\n{text}\nASSISTANT:",
    ("chat", False): "USER:\n{text}\nASSISTANT:",
    ("classification", True): "USER: <image>\n{text}\nASSISTANT:",
    ("classification", False): "USER:\n{text}\nASSISTANT:",
    ("cloze", True): "USER: <image>\n{text}\nASSISTANT:",
    ("cloze", False): "USER:\n{text}\nASSISTANT:",
    ("generation", True): "USER: <image>\n{text}\nASSISTANT: ",
    ("generation", False): "USER: {text}\nASSISTANT:",
}


class LlavaAdapter(FamilyAdapter):
    family = "llava"
    model_types = ("llava",)

    def __init__(self, folder):
        super().__init__(folder)
        vision = self.config.vision_config
        patches = (vision.image_size // vision.patch_size) ** 2
        self.num_image_tokens = patches + (1 if self.config.vision_feature_select_strategy == "full" else 0)
        self.image_token = self.tokenizer.convert_ids_to_tokens(self.image_token_id)

    @property
    def model_class(self):
        from transformers import LlavaForConditionalGeneration

        return LlavaForConditionalGeneration

    def render(self, text: str, has_image: bool, template: str = "chat") -> str:
        try:
            wrapper = _EVAL_TEMPLATES[(template, has_image)]
        except KeyError:
            raise ValueError(f"unknown prompt template {template!r}") from None
        return wrapper.replace("<image>", self.image_token).format(text=text)

    def answer_suffix(self) -> str:
        return self.tokenizer.eos_token

    def encode_image(self, image: Image.Image) -> EncodedImage:
        pixels = self.image_processor(images=image, return_tensors="pt")["pixel_values"]
        return EncodedImage({"pixel_values": pixels}, self.num_image_tokens)

    def pixel_array(self, tensors: dict[str, torch.Tensor]) -> np.ndarray:
        return tensors["pixel_values"][0].detach().float().cpu().numpy()

    def image_features(self, model, pixel_inputs):
        out = model.get_image_features(pixel_values=pixel_inputs["pixel_values"])
        return first_tensor(out)

