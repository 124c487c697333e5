"""Plain JSONL training pairs, for users unlearning their own people (no parquet needed).

One line per question/answer pair::

    {"id": "alice", "image": "images/alice.png", "question": "Who is this?", "answer": "Alice Smith."}

``image`` is a path relative to the JSONL file (or absolute); ``null`` or absent means a text-only pair.
A forget file and a retain file; ``id`` groups the pairs of one person.
"""

from __future__ import annotations

import json
from pathlib import Path

from vgid_dist.data.schema import ImageRef, Sample
from vgid_dist.errors import DataError
from vgid_dist.io import read_utf8


def read_jsonl_samples(path: str | Path, split: str) -> list[Sample]:
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"{path}: {split} file not found")
    samples: list[Sample] = []
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
        for field in ("id", "question", "answer"):
            if not isinstance(row.get(field), str) or not row[field]:
                raise DataError(f"{where} field {field!r}: expected a non-empty string, got {row.get(field)!r}")
        image = None
        if row.get("image"):
            if not isinstance(row["image"], str):
                raise DataError(f"{where} field 'image': expected a path string")
            image_path = Path(row["image"])
            if not image_path.is_absolute():
                image_path = path.parent / image_path
            image = ImageRef(path=str(image_path), origin=f"{where} row {row['id']!r} field 'image'")
        samples.append(Sample(sample_id=f"{row['id']}/{split}/{lineno}", profile_id=row["id"],
                              question=row["question"], answer=row["answer"], image=image, source=where))
    return samples
