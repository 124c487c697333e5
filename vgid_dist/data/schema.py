"""The records every reader produces, whatever the source (MLLMU-Bench parquet, JSONL, the synthetic writer)."""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from vgid_dist.errors import DataError


@dataclass(frozen=True)
class ImageRef:
    """An image by its encoded bytes or its path, decoded on use (keeps datasets small in memory)."""

    data: bytes | None = field(default=None, repr=False)
    path: str | None = None
    origin: str = ""
    """Where it came from, for error messages: 'file.parquet row ID image'."""

    def load(self) -> Image.Image:
        try:
            if self.data is not None:
                img = Image.open(io.BytesIO(self.data))
            elif self.path is not None:
                img = Image.open(self.path)
            else:
                raise DataError(f"{self.origin}: image has neither bytes nor path")
            img.load()
            return img.convert("RGB")
        except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
            # DecompressionBombError: more than twice PIL's MAX_IMAGE_PIXELS (about 179 million pixels), refused
            # from the header before any pixel is decoded.
            source = f" {self.path}" if self.data is None and self.path else ""
            raise DataError(f"{self.origin}: unreadable image{source} ({type(exc).__name__}: {exc})") from None


@dataclass(frozen=True)
class Sample:
    """One training pair. ``image`` None means a text-only turn.

    ``template`` selects how the family adapter wraps ``question``: ``chat`` (the training template) or one
    of the evaluation tasks (``classification``, ``cloze``, ``generation``: the question is then the task body
    and is wrapped exactly as the evaluator asks it).
    """

    sample_id: str
    profile_id: str
    question: str
    answer: str
    image: ImageRef | None = None
    template: str = "chat"
    source: str = ""
    """Where the pair was read: 'file row ID' (parquet) or 'file:line' (JSONL), for error messages."""


@dataclass(frozen=True)
class ClassificationQuestion:
    question: str
    options: dict[str, str]
    correct: str
    qtype: str  # Image_Textual | Pure_Text


@dataclass(frozen=True)
class OpenQuestion:
    """A cloze (``__`` marks the blank) or generation question with its ground truth."""

    question: str
    ground_truth: str
    qtype: str


@dataclass
class Profile:
    """One person of the benchmark with the evaluation questions about them."""

    profile_id: str
    image: ImageRef | None
    images: list[ImageRef] = field(default_factory=list)  # Test_Set: other images of the same identity
    classification: list[ClassificationQuestion] = field(default_factory=list)
    cloze: list[OpenQuestion] = field(default_factory=list)
    generation: list[OpenQuestion] = field(default_factory=list)
    source: str = ""


def origin(path: Path | str, row_id: str, column: str) -> str:
    return f"{path} row {row_id!r} field {column!r}"
