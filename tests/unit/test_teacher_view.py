"""``vgid teacher-view``: both processed images side by side with the teacher's prompt, and their statistics."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from vgid_dist.cli import main
from vgid_dist.prompts import INSTRUCTIONS


def photo(path, size: int):
    x, y = np.meshgrid(np.linspace(0, 1, size), np.linspace(0, 1, size))
    Image.fromarray((np.stack([x, y, 1 - x * y], -1) * 200 + 20).astype(np.uint8)).save(path)
    return str(path)


def view_json(capsys, *args) -> dict:
    assert main(["teacher-view", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_teacher_view_shows_what_each_side_sees(tmp_path, capsys, tiny_llava, tiny_qwen):
    for model in (tiny_llava, tiny_qwen):
        stds = []
        for size in (64, 1024):
            out = tmp_path / f"{model.name}-{size}.png"
            data = view_json(capsys, "--model", str(model), "--image", photo(tmp_path / f"p{size}.png", size),
                             "--out", str(out))
            assert out.is_file() and Image.open(out).width > 2 * data["teacher"]["size"][0]
            assert data["perturbation"] == "random_noise" and data["source_size"] == [size, size]
            assert INSTRUCTIONS["strict"][:60] in data["teacher"]["prompt"]
            assert INSTRUCTIONS["strict"][:60] not in data["student"]["prompt"]
            assert data["teacher"]["size"] == data["student"]["size"]
            stds.append(np.mean(data["teacher"]["std"]))
        assert abs(stds[0] - stds[1]) / stds[1] < 0.05, stds  # the same noise statistics at both source sizes
    # An existing view is kept unless --force.
    assert main(["teacher-view", "--model", str(tiny_llava), "--image", str(tmp_path / "p64.png"),
                 "--out", str(tmp_path / f"{tiny_llava.name}-64.png")]) == 2
    assert "exists" in capsys.readouterr().err


def test_teacher_view_follows_the_recipes_method(tmp_path, capsys, tiny_llava):
    image = photo(tmp_path / "p.png", 64)
    icu_t = view_json(capsys, "--model", str(tiny_llava), "--image", image, "--out", str(tmp_path / "a.png"),
                      "--config", "tiny-icu_t")
    assert icu_t["perturbation"] == "none" and icu_t["teacher"]["std"] == icu_t["student"]["std"]
    noise_t = view_json(capsys, "--model", str(tiny_llava), "--image", image, "--out", str(tmp_path / "b.png"),
                        "--config", "tiny-noise_t", "--question", "Where was this person born?")
    assert noise_t["instruction_style"] is None and "Where was this person born?" in noise_t["teacher"]["prompt"]
    assert INSTRUCTIONS["strict"][:60] not in noise_t["teacher"]["prompt"]
    gaussian = view_json(capsys, "--model", str(tiny_llava), "--image", image, "--out", str(tmp_path / "c.png"),
                         "--config", "tiny", "method.perturbation=gaussian", "method.sigma=0.2")
    assert gaussian["sigma"] == 0.2 and gaussian["teacher"]["std"] != gaussian["student"]["std"]
    assert main(["teacher-view", "--model", str(tiny_llava), "--image", image, "--out", str(tmp_path / "d.png"),
                 "--config", "tiny-ga"]) == 2
    assert "has no teacher to show" in capsys.readouterr().err
