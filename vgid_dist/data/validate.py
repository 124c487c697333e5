"""Checks of a run's training data before any compute is spent; every error names the file, the row and the
field. Run on every rank (deterministic, so all ranks agree) before the process group does any work."""

from __future__ import annotations

from dataclasses import dataclass, field

from vgid_dist.data.collate import Collator
from vgid_dist.data.schema import Sample
from vgid_dist.errors import DataError


@dataclass
class DataReport:
    samples: int = 0
    images: int = 0
    truncated: int = 0
    """Samples whose answer lost tokens to max_length (still trained on, with the tokens that fit)."""
    empty: list[str] = field(default_factory=list)
    """Sample ids with no answer token left after truncation (they contribute nothing)."""
    primary_lengths: list[int] = field(default_factory=list)
    retain_lengths: list[int] = field(default_factory=list)
    """Token lengths (prompt + kept answer), for length-grouped micro-batches."""

    def summary(self) -> str:
        text = (f"{self.samples} samples, {self.images} images checked, {self.truncated} answers truncated to "
                f"max_length")
        if self.empty:
            text += f", {len(self.empty)} with no answer token left (e.g. {', '.join(self.empty[:3])})"
        return text


def _where(sample: Sample) -> str:
    return sample.source or f"sample {sample.sample_id!r}"


def check_disjoint(forget: list[Sample], retain: list[Sample]) -> None:
    forget_ids = {s.profile_id: s for s in forget}
    for s in retain:
        if s.profile_id in forget_ids:
            raise DataError(f"profile id {s.profile_id!r} is in both the forget split ({_where(forget_ids[s.profile_id])}) "
                            f"and the retain split ({_where(s)}), field 'ID'; a person is either forgotten or kept")


def check_training_data(forget: list[Sample], retain: list[Sample], collator: Collator, *,
                        check_overlap: bool = True) -> DataReport:
    """Readable images, disjoint forget/retain people, answers that survive truncation to max_length."""
    if check_overlap:
        check_disjoint(forget, retain)
    report = DataReport()
    # Only the last decoded image is kept (a person's pairs share one photo and come one after another): the
    # check's memory does not grow with the number of images (a 4000x3000 photo decodes to 36 MB).
    seen: set = set()
    last_key, image = None, None
    for index, sample in enumerate([*forget, *retain]):
        report.samples += 1
        if sample.image is None:
            image = last_key = None
        else:
            key = id(sample.image.data) if sample.image.data is not None else sample.image.path
            if key != last_key:
                image = None  # drop the previous picture before decoding the next
                image = sample.image.load()  # raises DataError naming file, row and field
                last_key = key
                if key not in seen:
                    seen.add(key)
                    report.images += 1
        encoded = collator.encode(sample, image=image)
        if encoded.truncated:
            report.truncated += 1
        if not encoded.answer_ids:
            report.empty.append(sample.sample_id)
        length = len(encoded.prompt_ids) + len(encoded.answer_ids)
        (report.primary_lengths if index < len(forget) else report.retain_lengths).append(length)
    if report.samples and len(report.empty) == report.samples:
        raise DataError(f"no sample has an answer token left after truncation to data.max_length="
                        f"{collator.max_length} (the prompts alone are that long); raise data.max_length")
    return report
