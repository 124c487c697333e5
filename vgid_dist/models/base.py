"""What differs between model families, behind one interface: prompt wrapping, image tokens, pixel inputs,
loading from a local folder, and a forward that always runs the vision tower (rank symmetry under ZeRO-3)."""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image

from vgid_dist.errors import ModelFolderError


@dataclass
class EncodedImage:
    """Processor output for one image: tensors to concatenate across a batch, and its token count."""

    tensors: dict[str, torch.Tensor]
    num_tokens: int


def check_model_folder(path: str | Path) -> Path:
    folder = Path(path).expanduser()
    if folder.is_dir() and (folder / "config.json").is_file():
        return folder
    if folder.is_dir():
        raise ModelFolderError(f"{folder}: no config.json inside; expected a Hugging Face model folder "
                               "(save_pretrained output)")
    text = str(path)
    if "/" in text and not text.startswith((".", "/", "~")) and text.count("/") == 1:
        raise ModelFolderError(f"model.path {text!r} looks like a hub id; weights must be a local folder "
                               "(download them first, then give the folder's path). Nothing is downloaded.")
    raise ModelFolderError(f"model.path {text!r}: folder not found")


WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def check_model_weights(path: str | Path) -> Path:
    """A model folder whose weights are all there: ``model.safetensors`` / ``pytorch_model.bin``, or a sharded
    index and every shard it names. Reads file names only (no weight is loaded)."""
    folder = check_model_folder(path)
    for name in WEIGHT_FILES:
        index = folder / f"{name}.index.json"
        if (folder / name).is_file():
            return folder
        if index.is_file():
            try:
                shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            except (json.JSONDecodeError, KeyError, AttributeError, TypeError) as exc:
                raise ModelFolderError(f"{index}: not a weight index with a 'weight_map' ({exc})") from None
            missing = [s for s in shards if not (folder / s).is_file()]
            if missing:
                raise ModelFolderError(f"{index}: {len(missing)} of {len(shards)} weight shards are missing "
                                       f"({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''})")
            return folder
    raise ModelFolderError(f"{folder}: no weights inside (expected model.safetensors, pytorch_model.bin or a "
                           "sharded *.index.json with its shards); config.json alone cannot be trained")


def read_model_type(folder: Path) -> str:
    try:
        config = json.loads((folder / "config.json").read_text())
    except json.JSONDecodeError as exc:
        raise ModelFolderError(f"{folder / 'config.json'}: not valid JSON ({exc})") from None
    model_type = config.get("model_type")
    if not isinstance(model_type, str):
        raise ModelFolderError(f"{folder / 'config.json'}: field 'model_type' missing")
    return model_type


class FamilyAdapter(ABC):
    """One model family. Built from a local folder; holds its tokenizer, image processor and model config."""

    family: ClassVar[str]
    model_types: ClassVar[tuple[str, ...]]

    def __init__(self, folder: str | Path):
        from transformers import AutoConfig, AutoImageProcessor, AutoTokenizer

        self.folder = check_model_folder(folder)
        self.config = AutoConfig.from_pretrained(self.folder)
        self.tokenizer = AutoTokenizer.from_pretrained(self.folder)
        self.image_processor = AutoImageProcessor.from_pretrained(self.folder)
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.image_token_id = int(self.config.image_token_id)

    # -- model ---------------------------------------------------------------------------------------------------
    @property
    @abstractmethod
    def model_class(self) -> type: ...

    def load_model(self, dtype: torch.dtype, attention: str = "sdpa") -> torch.nn.Module:
        """from_pretrained on the local folder. Under ZeRO-3 the caller has a live HfDeepSpeedConfig, so
        parameters are partitioned as they load."""
        return self.model_class.from_pretrained(self.folder, dtype=dtype, attn_implementation=attention)

    @abstractmethod
    def image_features(self, model: torch.nn.Module, pixel_inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Run the vision tower and projector alone (used to keep module calls identical across ranks)."""

    def language_layers(self, model: torch.nn.Module) -> torch.nn.ModuleList:
        return model.model.language_model.layers

    # -- prompts ---------------------------------------------------------------------------------------------------
    @abstractmethod
    def render(self, text: str, has_image: bool, template: str = "chat") -> str:
        """The full prompt string up to where the assistant's answer starts."""

    @abstractmethod
    def answer_suffix(self) -> str:
        """Text closing an answer (end of turn)."""

    def answer_text(self, prompt: str, answer: str, close: bool = True) -> str:
        """The text following ``prompt``: the answer, then (``close``) the token ending the turn."""
        sep = "" if prompt.endswith((" ", "\n")) else " "
        return f"{sep}{answer}{self.answer_suffix() if close else ''}"

    # -- encoding --------------------------------------------------------------------------------------------------
    @abstractmethod
    def encode_image(self, image: Image.Image) -> EncodedImage: ...

    @abstractmethod
    def pixel_array(self, tensors: dict[str, torch.Tensor]) -> np.ndarray:
        """One image's processed pixels (``EncodedImage.tensors``) as the vision tower's input picture,
        [3, H, W] float32 in the processor's units (normalised unless the processor was told otherwise)."""

    def processor_input(self, image: Image.Image) -> Image.Image:
        """``image`` resized (and cropped) exactly as the image processor does before rescaling: the
        resolution the vision tower sees (LLaVA-1.5: 336 x 336; Qwen2.5-VL: the image's own size rounded to
        multiples of 28 within the processor's pixel budget). Processing this view again leaves it unchanged
        (for Qwen2.5-VL whenever the budget has room, min_pixels < max_pixels, as in the released configs), so
        noise drawn on it reaches the tower with the statistics it was drawn with, whatever the source size."""
        out = self.image_processor(images=image.convert("RGB"), do_rescale=False, do_normalize=False,
                                   return_tensors="pt")
        pixels = self.pixel_array(dict(out))
        return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8).transpose(1, 2, 0), mode="RGB")

    def viewable(self, tensors: dict[str, torch.Tensor]) -> Image.Image:
        """Processed (normalised) pixels turned back into a picture: x * std + mean, in 0-255."""
        pixels = self.pixel_array(tensors)
        mean = np.asarray(self.image_processor.image_mean, dtype=np.float32).reshape(3, 1, 1)
        std = np.asarray(self.image_processor.image_std, dtype=np.float32).reshape(3, 1, 1)
        rgb = np.clip(np.rint((pixels * std + mean) * 255.0), 0, 255).astype(np.uint8)
        return Image.fromarray(rgb.transpose(1, 2, 0), mode="RGB")

    def tokenize_prompt(self, prompt: str, image: EncodedImage | None) -> list[int]:
        ids = self.tokenizer(prompt, add_special_tokens=self.add_special_tokens).input_ids
        if image is None:
            return ids
        positions = [i for i, t in enumerate(ids) if t == self.image_token_id]
        if len(positions) != 1:
            raise ValueError(f"prompt must hold exactly one image token, found {len(positions)}: {prompt[:200]!r}")
        i = positions[0]
        return ids[:i] + [self.image_token_id] * image.num_tokens + ids[i + 1:]

    add_special_tokens: ClassVar[bool] = True

    def answer_ids(self, prompt: str, answer: str, close: bool = True) -> list[int]:
        """Token ids of the answer as they follow this prompt (tokenised jointly, so boundary merges match
        what the model sees; the answer ids are then shared by every prompt ending the same way). ``close``:
        with the token ending the turn (``answer_suffix``)."""
        text = self.answer_text(prompt, answer, close)
        prompt_ids = self.tokenizer(prompt, add_special_tokens=self.add_special_tokens).input_ids
        full = self.tokenizer(prompt + text, add_special_tokens=self.add_special_tokens).input_ids
        if full[: len(prompt_ids)] == prompt_ids:
            return full[len(prompt_ids):]
        return self.tokenizer(text, add_special_tokens=False).input_ids

    @staticmethod
    def concat_image_tensors(images: list[EncodedImage]) -> dict[str, torch.Tensor]:
        if not images:
            return {}
        return {k: torch.cat([im.tensors[k] for im in images]) for k in images[0].tensors}

    def dummy_image(self) -> Image.Image:
        return Image.new("RGB", (64, 64), (0, 0, 0))

    def model_kwargs(self, batch: Any) -> dict[str, Any]:
        """Keyword arguments of the model's forward for a collated batch (see data.collate.ModelInputs)."""
        kwargs = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}
        kwargs.update(batch.pixel_inputs)
        return kwargs


def first_tensor(out: Any) -> torch.Tensor:
    """The features tensor out of whatever ``get_image_features`` returns in this transformers version."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (list, tuple)):
        return torch.cat([first_tensor(o).reshape(-1) for o in out])
    for key in ("pooler_output", "last_hidden_state"):
        value = getattr(out, key, None)
        if isinstance(value, (torch.Tensor, list, tuple)):
            return first_tensor(value)
    return first_tensor(out[0])
