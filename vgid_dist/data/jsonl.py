"""Plain JSONL training pairs, for users unlearning their own people (no parquet needed).

One line per question/answer pair::

    {"id": "alice", "image": "images/alice.png", "question": "Who is this?", "answer": "Alice Smith."}

``image`` is a path relative to the JSONL file (or absolute); ``null`` or absent means a text-only pair.
A forget file and a retain file; ``id`` groups the pairs of one person. A missing image file is refused when
the file is read, naming the line.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from vgid_dist.data.schema import ImageRef, Sample
from vgid_dist.errors import DataError
from vgid_dist.io import read_utf8


def jsonl_rows(path: str | Path, what: str) -> Iterator[tuple[str, dict]]:
    """``(where, row)`` for every non-blank line of a JSONL file (``where`` = ``file:line``); ``what`` names
    the file in the error raised when it does not exist."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"{path}: {what} file not found")
    for lineno, line in enumerate(read_utf8(path, DataError).split("\n"), 1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{where}: not valid JSON ({exc})") from None
        if not isinstance(row, dict):
            raise DataError(f"{where}: expected a JSON object")
        yield where, row


def text_field(row: dict, field: str, where: str) -> str:
    if not isinstance(row.get(field), str) or not row[field]:
        raise DataError(f"{where} field {field!r}: expected a non-empty string, got {row.get(field)!r}")
    return row[field]


def image_field(row: dict, path: str | Path, where: str) -> ImageRef | None:
    """The row's image (a path relative to the JSONL file, or absolute), None for a text-only row; a file that
    does not exist is refused here, before any model loads."""
    if not row.get("image"):
        return None
    if not isinstance(row["image"], str):
        raise DataError(f"{where} field 'image': expected a path string, got {row['image']!r}")
    image_path = Path(row["image"]).expanduser()
    if not image_path.is_absolute():
        image_path = Path(path).expanduser().parent / image_path
    if not image_path.is_file():
        raise DataError(f"{where} field 'image': image file {image_path} not found")
    return ImageRef(path=str(image_path), origin=f"{where} row {row.get('id')!r} field 'image'")


def read_jsonl_samples(path: str | Path, split: str) -> list[Sample]:
    samples: list[Sample] = []
    for where, row in jsonl_rows(path, split):
        for field in ("id", "question", "answer"):
            text_field(row, field, where)
        lineno = where.rpartition(":")[2]
        samples.append(Sample(sample_id=f"{row['id']}/{split}/{lineno}", profile_id=row["id"],
                              question=row["question"], answer=row["answer"], image=image_field(row, path, where),
                              source=where))
    return samples
