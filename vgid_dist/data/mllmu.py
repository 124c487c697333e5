"""Reader of the MLLMU-Bench folder layout (the real download and our synthetic benchmark alike).

Layout (see README): ``Full_Set/``, ``ft_Data/``, ``forget_{5,10,15}/``, ``retain_{95,90,85}/``, ``Test_Set/``
(two shards, an ``images`` list per row), ``Retain_Set/`` (celebrities), and the training pairs in
``<train_root>/forget_X/`` and ``<train_root>/retain_Y/`` whose ``metadata`` column is a JSON list of
``{"Question", "Answer"}``. An entry may carry ``"Type": "Pure_Text"``, meaning the pair is asked without the
image (an extension the synthetic benchmark uses; absent in the real download, where every pair has its image).

Rows are read from parquet with pyarrow, images kept as encoded bytes. Nested structs may arrive as
dicts/lists (pyarrow) or numpy arrays (pandas); both are accepted.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from vgid_dist.data.schema import (
    ClassificationQuestion,
    ImageRef,
    OpenQuestion,
    Profile,
    Sample,
    origin,
)
from vgid_dist.errors import DataError
from vgid_dist.vocab import FORGET_RATIOS, QUESTION_TYPES, SPLITS


def retain_ratio(forget_ratio: int) -> int:
    if forget_ratio not in FORGET_RATIOS:
        raise DataError(f"forget ratio {forget_ratio}: expected one of {FORGET_RATIOS}")
    return 100 - forget_ratio


def plain(value: Any) -> Any:
    """numpy arrays (as pandas returns nested lists) -> lists, recursively; dicts kept."""
    if isinstance(value, np.ndarray):
        return [plain(v) for v in value.tolist()]
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    return value


def parquet_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise DataError(f"{folder}: folder not found (expected MLLMU-Bench layout, see README)")
    files = sorted(folder.glob("*.parquet"))
    if not files:
        raise DataError(f"{folder}: no .parquet file inside")
    return files


def read_rows(folder: Path, required: Iterable[str]) -> list[tuple[Path, dict]]:
    """All rows of the folder's parquet files as plain dicts, images undecoded; (file, row) pairs.

    Read with pyarrow alone: an image column (``datasets.Image`` in the download's schema) is a
    ``{"bytes", "path"}`` struct in the file and arrives as that dict, which ``image_ref`` takes."""
    import pyarrow.parquet as pq

    rows: list[tuple[Path, dict]] = []
    for file in parquet_files(folder):
        try:
            # ParquetFile, not read_table: read_table goes through pyarrow.dataset, whose import (pandas with
            # it) costs half a second of every evaluation's start-up
            with pq.ParquetFile(file) as parquet:
                table = parquet.read()
        except (OSError, ValueError) as exc:
            raise DataError(f"{file}: not a readable parquet file ({exc})") from None
        missing = [c for c in required if c not in table.column_names]
        if missing:
            raise DataError(f"{file}: missing column(s) {missing}; found {table.column_names}")
        rows.extend((file, plain(row)) for row in table.to_pylist())
    return rows


def image_ref(value: Any, where: str, base: Path | None = None) -> ImageRef:
    """An image cell: ``{"bytes", "path"}`` struct, raw bytes, or a path string."""
    if isinstance(value, Mapping):
        data, path = value.get("bytes"), value.get("path")
        if data:
            return ImageRef(data=bytes(data), origin=where)
        if path:
            return ImageRef(path=str(base / path if base else path), origin=where)
    elif isinstance(value, (bytes, bytearray)) and value:
        return ImageRef(data=bytes(value), origin=where)
    elif isinstance(value, str) and value:
        return ImageRef(path=str(base / value if base else value), origin=where)
    raise DataError(f"{where}: expected an image (bytes or path), got {type(value).__name__}")


def _row_id(row: dict, file: Path) -> str:
    rid = row.get("ID")
    if not isinstance(rid, str) or not rid:
        raise DataError(f"{file}: a row has no string 'ID' (got {rid!r})")
    return rid


def parse_metadata(raw: Any, where: str) -> list[dict]:
    """The training-pairs ``metadata`` cell: a JSON string (or already a list) of Question/Answer dicts."""
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise DataError(f"{where}: not valid JSON ({exc})") from None
    if isinstance(raw, Mapping):
        raw = [raw]
    if not isinstance(raw, list):
        raise DataError(f"{where}: expected a JSON list of {{Question, Answer}}, got {type(raw).__name__}")
    pairs = []
    for i, item in enumerate(raw):
        if not isinstance(item, Mapping) or not isinstance(item.get("Question"), str) \
                or not isinstance(item.get("Answer"), str):
            raise DataError(f"{where}[{i}]: expected {{'Question': str, 'Answer': str}}, got {item!r:.120}")
        pairs.append(dict(item))
    return pairs


def _classification(task: Any, where: str) -> list[ClassificationQuestion]:
    if task is None:
        return []
    if not isinstance(task, Mapping):
        raise DataError(f"{where}: expected a struct with Image_Textual_Questions / Pure_Text_Questions")
    out = []
    for key, qtype in (("Image_Textual_Questions", "Image_Textual"), ("Pure_Text_Questions", "Pure_Text")):
        for i, q in enumerate(task.get(key) or []):
            options = {k: str(v) for k, v in (q.get("Options") or {}).items() if v is not None}
            correct = str(q.get("Correct_Answer", "")).strip().upper()
            if not q.get("Question") or len(options) < 2 or correct not in options:
                raise DataError(f"{where}.{key}[{i}]: expected Question, Options (A-D) and a Correct_Answer "
                                f"among the options, got {q!r:.160}")
            out.append(ClassificationQuestion(q["Question"], options, correct, qtype))
    return out


def _open_questions(task: Any, where: str) -> list[OpenQuestion]:
    out = []
    for i, q in enumerate(task or []):
        qtype = q.get("Type")
        if qtype not in QUESTION_TYPES or not q.get("Question") or q.get("Ground_Truth") is None:
            raise DataError(f"{where}[{i}]: expected Question, Ground_Truth and Type Image_Textual|Pure_Text, "
                            f"got {q!r:.160}")
        out.append(OpenQuestion(q["Question"], str(q["Ground_Truth"]), qtype))
    return out


def profile_from_row(row: dict, file: Path, *, multi_image: bool = False) -> Profile:
    rid = _row_id(row, file)
    images: list[ImageRef] = []
    image = None
    if multi_image:
        cell = row.get("images")
        if not isinstance(cell, list) or not cell:
            raise DataError(f"{origin(file, rid, 'images')}: expected a non-empty list of images")
        images = [image_ref(c, f"{origin(file, rid, 'images')}[{i}]") for i, c in enumerate(cell)]
    else:
        image = image_ref(row.get("image"), origin(file, rid, "image"))
    return Profile(
        profile_id=rid,
        image=image,
        images=images,
        classification=_classification(row.get("Classification_Task"), origin(file, rid, "Classification_Task")),
        cloze=_open_questions(row.get("Mask_Task"), origin(file, rid, "Mask_Task")),
        generation=_open_questions(row.get("Generation_Task"), origin(file, rid, "Generation_Task")),
        source=str(file),
    )


class MLLMUBench:
    """One benchmark folder. Nothing is read until asked; each split is read once."""

    def __init__(self, root: str | Path, train_root: str | Path | None = None):
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise DataError(f"{self.root}: benchmark folder not found")
        self.train_root = Path(train_root).expanduser() if train_root else self.root / "baseline_train_split"
        self._cache: dict[tuple, Any] = {}

    # -- ids ------------------------------------------------------------------------------------------------
    def _ids_of(self, folder: Path) -> list[str]:
        return [_row_id(row, f) for f, row in read_rows(folder, ["ID"])]

    def split_ids(self, split: str, forget_ratio: int) -> list[str]:
        """Profile ids of ``forget`` or ``retain`` at this ratio, from the benchmark's split folders."""
        folder = {"forget": f"forget_{forget_ratio}", "retain": f"retain_{retain_ratio(forget_ratio)}"}[split]
        key = ("ids", folder)
        if key not in self._cache:
            self._cache[key] = self._ids_of(self.root / folder)
        return self._cache[key]

    # -- training pairs ---------------------------------------------------------------------------------------
    def train_samples(self, split: str, forget_ratio: int) -> list[Sample]:
        """Unlearning pairs of ``forget`` / ``retain`` at this ratio, one Sample per Question/Answer."""
        folder = self.train_root / {"forget": f"forget_{forget_ratio}",
                                    "retain": f"retain_{retain_ratio(forget_ratio)}"}[split]
        return self._pairs(folder)

    def finetune_samples(self) -> list[Sample]:
        """The ``ft_Data`` pairs (what the vanilla model was fine-tuned on)."""
        return self._pairs(self.root / "ft_Data")

    def _pairs(self, folder: Path) -> list[Sample]:
        key = ("pairs", str(folder))
        if key in self._cache:
            return self._cache[key]
        samples: list[Sample] = []
        for file, row in read_rows(folder, ["ID", "image"]):
            rid = _row_id(row, file)
            if "metadata" in row:
                pairs = parse_metadata(row["metadata"], origin(file, rid, "metadata"))
            elif isinstance(row.get("question"), str) and isinstance(row.get("answer"), str):
                pairs = [{"Question": row["question"], "Answer": row["answer"]}]
            else:
                raise DataError(f"{file}: row {rid!r} has neither 'metadata' nor 'question'/'answer' columns")
            image = image_ref(row["image"], origin(file, rid, "image"))
            for i, pair in enumerate(pairs):
                text_only = pair.get("Type") == "Pure_Text"
                samples.append(Sample(
                    sample_id=f"{rid}/{folder.name}/{i}", profile_id=rid, question=pair["Question"],
                    answer=pair["Answer"], image=None if text_only else image,
                    template=pair.get("Template", "chat"), source=f"{file} row {rid!r}"))
        self._cache[key] = samples
        return samples

    # -- evaluation profiles ------------------------------------------------------------------------------------
    def profiles(self, split: str, forget_ratio: int) -> list[Profile]:
        """Profiles with their questions for an evaluation split: forget, test, retain, celebrity."""
        key = ("profiles", split, forget_ratio)
        if key in self._cache:
            return self._cache[key]
        if split == "forget":
            folder, multi = self.root / f"forget_{forget_ratio}", False
        elif split == "retain":
            folder, multi = self.root / f"retain_{retain_ratio(forget_ratio)}", False
        elif split == "celebrity":
            folder, multi = self.root / "Retain_Set", False
        elif split == "test":
            folder, multi = self.root / "Test_Set", True
        else:
            raise DataError(f"unknown evaluation split {split!r}; expected one of {SPLITS}")
        profiles = [profile_from_row(row, file, multi_image=multi) for file, row in read_rows(folder, ["ID"])]
        if split == "test":
            wanted = set(self.split_ids("forget", forget_ratio))
            profiles = [p for p in profiles if p.profile_id in wanted]
        self._cache[key] = profiles
        return profiles

    def full_set(self) -> list[Profile]:
        """All fictitious profiles (Full_Set; also the few-shot pool)."""
        key = ("full",)
        if key not in self._cache:
            self._cache[key] = [profile_from_row(r, f) for f, r in read_rows(self.root / "Full_Set", ["ID"])]
        return self._cache[key]
