"""Qwen2.5-VL (Qwen2_5_VLForConditionalGeneration): chat template prompts, image tokens from the grid."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from vgid_dist.models.base import EncodedImage, FamilyAdapter, first_tensor


class Qwen25VLAdapter(FamilyAdapter):
    family = "qwen2_5_vl"
    model_types = ("qwen2_5_vl",)
    add_special_tokens = False  # the chat template already carries every special token

    def __init__(self, folder):
        super().__init__(folder)
        self.merge = int(self.config.vision_config.spatial_merge_size)

    @property
    def model_class(self):
        from transformers import Qwen2_5_VLForConditionalGeneration

        return Qwen2_5_VLForConditionalGeneration

    def render(self, text: str, has_image: bool, template: str = "chat") -> str:
        # Every task is asked through the chat template; the task body carries the official instructions.
        if template not in ("chat", "classification", "cloze", "generation"):
            raise ValueError(f"unknown prompt template {template!r}")
        content = ([{"type": "image"}] if has_image else []) + [{"type": "text", "text": text}]
        return self.tokenizer.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                                  add_generation_prompt=True)

    def answer_suffix(self) -> str:
        return "<|im_end|>"

    def answer_text(self, prompt: str, answer: str, close: bool = True) -> str:
        return f"{answer}{self.answer_suffix() if close else ''}"

    def encode_image(self, image: Image.Image) -> EncodedImage:
        out = self.image_processor(images=image, return_tensors="pt")
        grid = out["image_grid_thw"]
        tokens = int(grid.prod()) // (self.merge**2)
        return EncodedImage({"pixel_values": out["pixel_values"], "image_grid_thw": grid}, tokens)

    def pixel_array(self, tensors: dict[str, torch.Tensor]) -> np.ndarray:
        """Undo the processor's patch layout: [gh*gw, C*T*P*P] patches (grouped by merge windows, the frame
        repeated T times) -> [C, gh*P, gw*P], first frame."""
        patches = tensors["pixel_values"].detach().float().cpu().numpy()
        _, gh, gw = (int(v) for v in tensors["image_grid_thw"].reshape(-1, 3)[0])
        m = self.merge
        p = int(self.image_processor.patch_size)
        t = int(self.image_processor.temporal_patch_size)
        grid = patches[: gh * gw].reshape(gh // m, gw // m, m, m, 3, t, p, p)[:, :, :, :, :, 0]
        # (gh/m, gw/m, m, m, C, P, P) -> (C, gh/m, m, P, gw/m, m, P)
        return np.ascontiguousarray(grid.transpose(4, 0, 2, 5, 1, 3, 6).reshape(3, gh * p, gw * p))

    def image_features(self, model, pixel_inputs):
        out = model.get_image_features(pixel_values=pixel_inputs["pixel_values"],
                                       image_grid_thw=pixel_inputs["image_grid_thw"])
        return first_tensor(out)
