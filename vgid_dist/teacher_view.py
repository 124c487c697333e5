"""``vgid teacher-view``: what the teacher of a VGID-style run sees, next to what the student sees.

The inputs are built by the method itself (``Vgid.teacher_encoding``, the code training uses), for one image
and question: the student's processed image and the teacher's (perturbed, at the vision tower's resolution) are
turned back into viewable pixels and drawn side by side with the teacher's prompt. The per-channel mean and
standard deviation of both processed pixel tensors (what the vision tower receives) come with them.

The perturbation's seed key is (run seed, sample id, epoch), as in training; here the sample id is the image's
file name without its extension and the epoch is 0.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from vgid_dist.errors import ConfigError, DataError
from vgid_dist.io import file_written_atomically

DEFAULT_QUESTION = "Who is the person in the image?"
MIN_PANEL = 336  # small processed images (the tiny models' 28 px) are enlarged to at least this, pixel for pixel


@dataclass
class InputView:
    """One side (student or teacher): the prompt as tokenised (image tokens shown once), the processed image
    made viewable, and per-channel statistics of the processed pixels."""

    prompt: str
    image: Image.Image
    stats: dict[str, list[float]] = field(default_factory=dict)


def channel_stats(pixels: np.ndarray) -> dict[str, list[float]]:
    """Per-channel mean and standard deviation of a [3, H, W] pixel array."""
    flat = pixels.reshape(3, -1).astype(np.float64)
    return {"mean": [round(float(v), 6) for v in flat.mean(axis=1)],
            "std": [round(float(v), 6) for v in flat.std(axis=1)]}


def readable_prompt(adapter, ids: list[int]) -> str:
    """The prompt's text with each run of image placeholder tokens shown as a single token."""
    kept = [t for i, t in enumerate(ids) if t != adapter.image_token_id or i == 0 or ids[i - 1] != t]
    return adapter.tokenizer.decode(kept, skip_special_tokens=False)


def build_views(model: str, image_path: str | Path, question: str = DEFAULT_QUESTION, config: str | None = None,
                overrides: list[str] | tuple[str, ...] = ()) -> tuple[InputView, InputView, dict[str, Any]]:
    """(student, teacher, info) for ``image_path`` and ``question``, the teacher built by the method of recipe
    ``config`` (default: VGID's defaults) with that recipe's seed. Nothing of the model's weights is loaded."""
    from vgid_dist.config import MethodConfig, OptimConfig, load_run_config
    from vgid_dist.data.collate import Collator
    from vgid_dist.data.schema import ImageRef, Sample
    from vgid_dist.methods import build_method
    from vgid_dist.methods.vgid import Vgid
    from vgid_dist.models import load_adapter

    if config is not None:
        cfg = load_run_config(config, overrides)
        method_cfg, seed = cfg.method, cfg.optim.seed
    elif overrides:
        raise ConfigError("key=value overrides need --config (the recipe they change)")
    else:
        method_cfg, seed = MethodConfig(name="vgid"), OptimConfig().seed
    path = Path(image_path).expanduser()
    if not path.is_file():
        raise DataError(f"--image {path}: file not found")
    adapter = load_adapter(model)
    collator = Collator(adapter, 10**6)
    method = build_method(method_cfg, collator, seed)
    if not isinstance(method, Vgid):
        raise ConfigError(f"method.name: {method.name!r} has no teacher to show (teacher-view shows the teachers of "
                          "vgid, icu_t and noise_t)")
    sample = Sample(sample_id=path.stem, profile_id=path.stem, question=question, answer="",
                    image=ImageRef(path=str(path), origin=str(path)))
    source = sample.image.load()
    student_enc = collator.encode(sample)
    teacher_enc = method.teacher_encoding(sample, student_enc, epoch=0)
    views = []
    for enc in (student_enc, teacher_enc):
        views.append(InputView(prompt=readable_prompt(adapter, enc.prompt_ids),
                               image=adapter.viewable(enc.image.tensors),
                               stats=channel_stats(adapter.pixel_array(enc.image.tensors))))
    p = method.params
    info = {"model": str(model), "family": adapter.family, "image": str(path), "source_size": list(source.size),
            "method": method.name, "seed": seed, "sample_id": sample.sample_id, "epoch": 0,
            "perturbation": p.perturbation if method.use_perturbation else "none",
            "sigma": p.sigma if method.use_perturbation and p.perturbation == "gaussian" else None,
            "instruction_style": p.instruction_style if method.use_instruction else None}
    return views[0], views[1], info


def _panel(view: InputView, title: str, font) -> Image.Image:
    image = view.image
    scale = max(1, -(-MIN_PANEL // min(image.size)))
    image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
    panel = Image.new("RGB", (image.width, image.height + 24), "white")
    panel.paste(image, (0, 24))
    ImageDraw.Draw(panel).text((4, 6), f"{title}: {view.image.width} x {view.image.height} px", fill="black",
                               font=font)
    return panel


def render(student: InputView, teacher: InputView, info: dict[str, Any]) -> Image.Image:
    """The two processed images side by side, captions above, the teacher's prompt below."""
    font = ImageFont.load_default()
    what = ", ".join(f"{k} {info[k]}" for k in ("perturbation", "sigma", "instruction_style") if info.get(k))
    left = _panel(student, "student", font)
    right = _panel(teacher, f"teacher ({what or 'no intervention'})", font)
    width = left.width + right.width + 12
    lines = ["teacher prompt:"] + [line for para in teacher.prompt.splitlines()
                                   for line in (textwrap.wrap(para, max(20, width // 7)) or [""])]
    text_height = 14 * len(lines) + 12
    canvas = Image.new("RGB", (width, max(left.height, right.height) + text_height), "white")
    canvas.paste(left, (0, 0))
    canvas.paste(right, (left.width + 12, 0))
    draw = ImageDraw.Draw(canvas)
    y = max(left.height, right.height) + 6
    for line in lines:
        draw.text((4, y), line, fill="black", font=font)
        y += 14
    return canvas


def write_view(image: Image.Image, out: str | Path, *, force: bool = False) -> Path:
    """Save ``image`` as PNG atomically; an existing file is kept unless ``force``."""
    out = Path(out).expanduser()
    if out.exists() and not force:
        raise ConfigError(f"--out {out}: exists; choose another path or pass --force to replace it")
    with file_written_atomically(out) as tmp:
        image.save(tmp, format="PNG")
    return out


def summary(student: InputView, teacher: InputView, info: dict[str, Any], out: Path) -> dict[str, Any]:
    """What ``--json`` prints: the run's perturbation settings, and per side the processed image's size, the
    per-channel mean/std of its processed pixels and the prompt."""
    return {**info, "out": str(out),
            **{name: {"size": list(view.image.size), **view.stats, "prompt": view.prompt}
               for name, view in (("student", student), ("teacher", teacher))}}


def summary_text(student: InputView, teacher: InputView, out: Path) -> str:
    lines = []
    for name, view in (("student", student), ("teacher", teacher)):
        stats = " ".join(f"{k} [{', '.join(f'{v:.3f}' for v in vals)}]" for k, vals in view.stats.items())
        lines.append(f"{name}: {view.image.width} x {view.image.height} px, processed pixels per channel: {stats}")
    return "\n".join(lines + [f"teacher prompt:\n{teacher.prompt}", f"wrote {out}"])
