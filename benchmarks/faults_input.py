"""Fault rows about hostile input: a decompression bomb, bytes that are not UTF-8, many large photos, values and
files a run cannot use, a malformed recipe or override."""

from __future__ import annotations

import json
import re
import shutil
import struct
import zlib
from pathlib import Path

from fault_kit import PY, Matrix, expect_error, last_error, line_with, rewrite_pairs, sh

BOMB_SIDE = 30000


def bomb_png(side: int = BOMB_SIDE) -> bytes:
    """A valid 1-bit greyscale PNG of side x side pixels (900 million for 30000), every pixel black: about 110 KB
    on disk, compressed row by row (nothing of its size is ever held here)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\0" * (1 + (side + 7) // 8)  # filter byte 0, then the packed bits
    packer = zlib.compressobj(9)
    body = b"".join(packer.compress(row * 1000) for _ in range(side // 1000))
    body += packer.compress(row * (side % 1000)) + packer.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0))
            + chunk(b"IDAT", body) + chunk(b"IEND", b""))


def write_jsonl_data(folder: Path, forget_images: list[bytes], retain_images: int = 1) -> Path:
    """A JSONL dataset: one forget pair per image in ``forget_images`` (PNG bytes), ``retain_images`` retain pairs
    with a small picture."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "images").mkdir(exist_ok=True)
    lines = {"forget": [], "retain": []}
    for i, data in enumerate(forget_images):
        (folder / "images" / f"forget{i}.png").write_bytes(data)
        lines["forget"].append({"id": f"person{i}", "image": f"images/forget{i}.png",
                                "question": "Who is this?", "answer": f"This is person number {i}."})
    for i in range(retain_images):
        Image.new("RGB", (64, 64), (40 * i % 255, 90, 160)).save(folder / "images" / f"retain{i}.png")
        lines["retain"].append({"id": f"other{i}", "image": f"images/retain{i}.png",
                                "question": "Who is this?", "answer": f"This is someone else, number {i}."})
    for split, rows in lines.items():
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def _small_png() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 30, 30)).save(buf, format="PNG")
    return buf.getvalue()


def fault_decompression_bomb(m: Matrix) -> dict:
    import pyarrow as pa

    data = write_jsonl_data(m.work / "data-bomb", [_small_png(), bomb_png()])
    rc, text = m.train(m.fresh("o-bomb"), "data.format=jsonl", f"data.root={data}")
    trained = expect_error(rc, text, "forget1.png", "DecompressionBombError")
    bench = m.bench_copy("bench-bomb")

    def plant(table):
        images = table.column("image").to_pylist()
        images[0] = {"bytes": bomb_png(), "path": None}
        return table.set_column(table.schema.get_field_index("image"), "image",
                                pa.array(images, type=table.schema.field("image").type))

    rewrite_pairs(bench / "forget_5", plant)
    result = m.work / "eval-bomb.json"
    rc_eval, text_eval = sh([PY, "-m", "vgid_dist.cli", "eval", "--model", str(m.model), "--data", str(bench),
                             "--forget-ratio", "5", "--splits", "forget", "--limit", "1", "--out", str(result)])
    skipped = json.loads(result.read_text())["skipped"].get("forget") if result.is_file() else None
    ok = trained["ok"] and rc_eval == 0 and bool(skipped)
    return {"outcome": f"training: exit {rc}: {last_error(text)[7:190]}; vgid eval: exit {rc_eval}, "
                       f"{skipped} forget questions skipped and counted (skipped.forget in the results)",
            "ok": ok, "output_lost": False}


def fault_non_utf8(m: Matrix) -> dict:
    data = write_jsonl_data(m.work / "data-latin1", [_small_png()])
    forget = data / "forget.jsonl"
    forget.write_bytes(forget.read_bytes() + '{"id": "ren\xe9", "question": "Who?", "answer": "Ren\xe9."}\n'
                       .encode("latin-1"))
    rc, text = m.train(m.fresh("o-latin1"), "data.format=jsonl", f"data.root={data}")
    recipe = m.work / "recipe-latin1.yaml"
    recipe.write_bytes(m.recipe.read_bytes() + "# caf\xe9\n".encode("latin-1"))
    rc_yaml, text_yaml = sh([PY, "launch/train.py", "--config", str(recipe), f"output_dir={m.fresh('o-latin1-yaml')}"])
    jsonl_ok = expect_error(rc, text, "forget.jsonl: not UTF-8 text (line 2, byte offset")["ok"]
    yaml_ok = expect_error(rc_yaml, text_yaml, "recipe-latin1.yaml: not UTF-8 text (line")["ok"]
    return {"outcome": f"JSONL: exit {rc}: {line_with(text, 'not UTF-8')[7:]}; YAML recipe: exit {rc_yaml}: "
                       f"{line_with(text_yaml, 'not UTF-8').rsplit('/', 1)[-1]}", "ok": jsonl_ok and yaml_ok,
            "output_lost": False}


def fault_validation_memory(m: Matrix) -> dict:
    """Peak memory of the data check over 3 and over 30 distinct 4000x3000 photos (each decodes to 36 MB)."""
    peaks = {}
    for count in (3, 30):
        folder = m.work / f"data-photos{count}"
        if not (folder / "forget.jsonl").is_file():
            write_jsonl_data(folder, [_flat_photo(i) for i in range(count)])
        rc, text = sh([PY, "-c", _MEASURE, str(m.model), str(folder)])
        found = re.search(r"peak_rise_mb (\d+) images (\d+)", text)
        if rc != 0 or not found:
            return {"outcome": f"measurement failed: {last_error(text)}", "ok": False, "output_lost": None}
        peaks[count] = int(found.group(1))
    ok = peaks[30] < peaks[3] + 100
    return {"outcome": f"peak memory rise of the data check: {peaks[3]} MB for 3 photos, {peaks[30]} MB for 30 "
                       "(each decodes to 36 MB; keeping them all would add ~1 GB)", "ok": ok, "output_lost": False}


def _flat_photo(index: int) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (4000, 3000), (index * 8 % 256, 255 - index * 8 % 256, 120)).save(buf, format="PNG")
    return buf.getvalue()


_MEASURE = """
import resource, sys
from vgid_dist.data.collate import Collator
from vgid_dist.data.jsonl import read_jsonl_samples
from vgid_dist.data.validate import check_training_data
from vgid_dist.models import load_adapter
collator = Collator(load_adapter(sys.argv[1]), 384)
forget = read_jsonl_samples(sys.argv[2] + "/forget.jsonl", "forget")
retain = read_jsonl_samples(sys.argv[2] + "/retain.jsonl", "retain")
check_training_data(forget[:1], [], collator)  # warm-up: the processor's first call allocates its buffers
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
report = check_training_data(forget, retain, collator)
rise = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
print(f"peak_rise_mb {rise // 1024} images {report.images}")
"""


def fault_invalid_values(m: Matrix) -> dict:
    bare = m.work / "model-no-weights"
    shutil.rmtree(bare, ignore_errors=True)
    shutil.copytree(m.model, bare, ignore=shutil.ignore_patterns("*.safetensors"))
    cases = {
        "values": (["optim.eps=-1", "optim.betas=[2,-3]", "optim.epochs=.inf"],
                   ["optim.eps: Input should be greater than 0", "optim.betas.0", "optim.betas.1",
                    "optim.epochs: Input should be a finite number"]),
        "ds_config": (["ds_config=/nonexistent/zero3.json"], ["/nonexistent/zero3.json: ds_config file not found"]),
        "weights": ([f"model.path={bare}"], ["no weights inside"]),
    }
    outcomes, ok = [], True
    for name, (overrides, needles) in cases.items():
        out = m.fresh(f"o-invalid-{name}")
        rc, text = sh([PY, "launch/train.py", "--config", str(m.recipe), f"output_dir={out}", *overrides])
        early = "[vgid] data:" not in text and not out.exists()
        ok = ok and expect_error(rc, text, *needles)["ok"] and early
        outcomes.append(f"{name}: exit {rc}, before any process group or model and nothing written: {early}")
    return {"outcome": "; ".join(outcomes) + f" ({line_with(text, 'no weights')[7:120]})", "ok": ok,
            "output_lost": False}


def fault_extends_method_string(m: Matrix) -> dict:
    recipe = m.work / "recipe-method-string.yaml"
    recipe.write_text(f"extends: {m.recipe}\nmethod: vgid\n")
    rc, text = sh([PY, "launch/train.py", "--config", str(recipe), f"output_dir={m.fresh('o-method-string')}"])
    return expect_error(rc, text, "method: expected a mapping with a name")


def fault_steer_override(m: Matrix) -> dict:
    rc, text = sh([PY, "-m", "vgid_dist.cli", "steer", "build", "--model", str(m.model), "--data", str(m.bench),
                   "--forget-ratio", "5", "--out", str(m.work / "steer.safetensors"), "scale=[1"])
    row = expect_error(rc, text, "override 'scale=[1'")
    row["ok"] = row["ok"] and "Traceback" not in text
    return row


FAULTS = {
    "decompression_bomb": (f"{BOMB_SIDE}x{BOMB_SIDE} PNG in training data and in an evaluated profile",
                           fault_decompression_bomb, "DataError names file; eval skips, counts"),
    "non_utf8_input": ("a latin-1 byte in forget.jsonl and in a recipe YAML", fault_non_utf8,
                       "error names file, line, byte offset"),
    "validation_memory": ("30 vs 3 distinct 4000x3000 photos in the data check", fault_validation_memory,
                          "memory independent of image count"),
    "invalid_values": ("optim.eps=-1 betas=[2,-3] epochs=.inf; missing ds_config; model without weights",
                       fault_invalid_values, "refused before any process group"),
    "extends_method_string": ("extends: recipe with method: vgid (a string)", fault_extends_method_string,
                              "ConfigError names the field"),
    "steer_override_typo": ("vgid steer build ... 'scale=[1'", fault_steer_override,
                            "ConfigError names the override"),
}
