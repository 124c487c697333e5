"""A benchmark in MLLMU-Bench's layout (the synthetic one, or the real download) written as a people folder
(``data.people``), so the same people can be forgotten and evaluated through the JSONL path:

- ``forget.jsonl`` / ``retain.jsonl``: the training pairs of the forget_R / retain_(100-R) profiles;
- ``probes.jsonl``: each of those profiles' evaluation questions: the generation questions as open probes and
  the classification questions as multiple-choice ones, with the profile's image where the benchmark shows it
  (its Image_Textual questions), so evaluating the probes asks what the benchmark's forget and retain splits
  ask;
- ``images/``: every image, as PNG.

A row's ``facts`` are the profile's cloze answers and correct options that its answer states ("Lisbon",
"baker") and the numbers it states that its question does not ("1987"); a row stating none of them keeps the
default facts (the answer's own words).
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from pathlib import Path

from PIL import Image

from vgid_dist.data.mllmu import MLLMUBench
from vgid_dist.data.schema import ImageRef, Profile
from vgid_dist.io import folder_written_atomically


def _known_facts(profile: Profile) -> list[str]:
    facts = [q.ground_truth for q in profile.cloze] + [q.options[q.correct] for q in profile.classification]
    return list(dict.fromkeys(f for f in facts if f.strip()))


def _stated(question: str, answer: str, facts: list[str]) -> list[str]:
    """The known facts the answer states, then the numbers it states that the question does not (years)."""
    stated = [f for f in facts if re.search(rf"(?<!\w){re.escape(f.lower())}(?!\w)", answer.lower())]
    asked = set(re.findall(r"\d+", question))
    return stated + [n for n in dict.fromkeys(re.findall(r"(?<![\w.])\d+(?![\w])", answer)) if n not in asked]


class _Images:
    """Every distinct image once, as ``images/<person>[-k].png``."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.names: dict[str, str] = {}

    def path(self, ref: ImageRef | None, person: str) -> str | None:
        if ref is None:
            return None
        data = ref.data if ref.data is not None else Path(ref.path).read_bytes()
        key = hashlib.sha256(data).hexdigest()
        if key not in self.names:
            taken = sum(name.startswith(f"images/{person}") for name in self.names.values())
            name = f"images/{person}{f'-{taken + 1}' if taken else ''}.png"
            self.folder.joinpath(name).parent.mkdir(parents=True, exist_ok=True)
            Image.open(io.BytesIO(data)).convert("RGB").save(self.folder / name)
            self.names[key] = name
        return self.names[key]


def _lines(rows: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def write_people_folder(benchmark: str | Path, out: str | Path, forget_ratio: int = 5) -> Path:
    """Write the forget_R and retain_(100-R) people of ``benchmark`` to ``out`` (atomically: complete or absent;
    an existing ``out`` is refused)."""
    out = Path(out).expanduser()
    if out.exists():
        raise FileExistsError(f"{out} exists; choose another folder")
    bench = MLLMUBench(benchmark)
    with folder_written_atomically(out) as tmp:
        images = _Images(tmp)
        probes: list[dict] = []
        for group in ("forget", "retain"):
            profiles = {p.profile_id: p for p in bench.profiles(group, forget_ratio)}
            facts = {pid: _known_facts(p) for pid, p in profiles.items()}
            pairs = []
            for s in bench.train_samples(group, forget_ratio):
                row = {"id": s.profile_id, "image": images.path(s.image, s.profile_id), "question": s.question,
                       "answer": s.answer}
                stated = _stated(s.question, s.answer, facts.get(s.profile_id, []))
                pairs.append(row | ({"facts": stated} if stated else {}))
            (tmp / f"{group}.jsonl").write_text(_lines(pairs))
            for pid, p in profiles.items():
                image = images.path(p.image, pid)
                for q in p.generation:
                    stated = _stated(q.question, q.ground_truth, facts[pid])
                    probes.append({"id": pid, "of": group, "image": image if q.qtype == "Image_Textual" else None,
                                   "question": q.question, "answer": q.ground_truth}
                                  | ({"facts": stated} if stated else {}))
                for q in p.classification:
                    probes.append({"id": pid, "of": group, "image": image if q.qtype == "Image_Textual" else None,
                                   "question": q.question, "answer": q.options[q.correct], "options": q.options,
                                   "correct": q.correct})
        (tmp / "probes.jsonl").write_text(_lines(probes))
    return out
