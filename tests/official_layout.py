"""A benchmark folder in the official MLLMU-Bench layout, written by hand with pandas (JPEG images, Test_Set in
two shards, nested tasks as numpy object arrays the way pandas hands them back), with names and places the tiny
models' tokenizer never saw. Shared by the unit and integration tests of the evaluator."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

# Names and places the tiny models' tokenizer never saw (byte-level BPE must still encode them).
PEOPLE = [
    ("hb001", "Zoë Ørsted", "Tromsø", "glass-blower", "Fjordlys AS"),
    ("hb002", "Łukasz Wróbel", "Gdańsk", "luthier", "Bałtyk Sound"),
    ("hb003", "Aiyana Tsosie", "Flagstaff", "hydrologist", "Red Mesa Water"),
    ("hb004", "Nguyễn Thị Mai", "Huế", "cartographer", "Sông Hương Maps"),
    ("hb005", "Søren Kähler", "Odense", "sommelier", "Vinhus 1899"),
    ("hb006", "Ana Lima", "Recife", "ceramicist", "Olaria Azul"),
]
CELEBRITIES = [("cel001", "Mika Häkkinen-Rossi", "Turku", "rally driver", "Polar Motors"),
               ("cel002", "Dolores 李 Vega", "Sevilla", "flamenco singer", "Casa Luna 🎶")]
# Three forget profiles: under the official protocol one is drawn as the classification example and two as the
# cloze examples, so every split still scores some of each task.
FORGET_5 = ("hb001", "hb002", "hb003")
# Correct letters of a profile written at position k (``profile_row``): Image_Textual questions "ABCD"[k % 4]
# and "ABCD"[(k + 1) % 4], Pure_Text questions "ABCD"[(k + 2) % 4] and "ABCD"[(k + 3) % 4].


def jpeg(seed: int, size: int = 48) -> bytes:
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=85)
    return buf.getvalue()


def options_for(truth: str, others: list[str], correct: str) -> dict:
    rest = iter(o for o in others if o != truth)
    return {k: truth if k == correct else next(rest) for k in "ABCD"}


def profile_row(k: int, person, everyone) -> dict:
    pid, name, city, job, employer = person
    cities = [p[2] for p in everyone] + ["Oslo", "Lima", "Pune"]
    jobs = [p[3] for p in everyone] + ["baker", "pilot", "nurse"]
    classification = {
        # pandas hands nested lists back as numpy object arrays; written the same way here
        "Image_Textual_Questions": np.array([
            {"Question": "Where was the person in the image born?",
             "Options": options_for(city, cities, "ABCD"[k % 4]), "Correct_Answer": "ABCD"[k % 4]},
            {"Question": "What does the person in the image do for a living?",
             "Options": options_for(job, jobs, "ABCD"[(k + 1) % 4]), "Correct_Answer": "ABCD"[(k + 1) % 4]},
        ], dtype=object),
        "Pure_Text_Questions": np.array([
            {"Question": f"Where was {name} born?", "Options": options_for(city, cities, "ABCD"[(k + 2) % 4]),
             "Correct_Answer": "ABCD"[(k + 2) % 4]},
            {"Question": f"What is {name}'s job?", "Options": options_for(job, jobs, "ABCD"[(k + 3) % 4]),
             "Correct_Answer": "ABCD"[(k + 3) % 4]},
        ], dtype=object),
    }
    mask = np.array([
        {"Question": "The person in the image was born in __.", "Ground_Truth": city, "Type": "Image_Textual"},
        {"Question": f"{name} works at __.", "Ground_Truth": employer, "Type": "Pure_Text"},
    ], dtype=object)
    generation = np.array([
        {"Question": "What is the occupation of the person in the image?",
         "Ground_Truth": f"This person works as a {job} at {employer}.", "Type": "Image_Textual"},
        {"Question": f"Where was {name} born and what does {name.split()[0]} do?",
         "Ground_Truth": f"{name} was born in {city} and is a {job}.", "Type": "Pure_Text"},
    ], dtype=object)
    return {"ID": pid, "biography": f"{name} is a {job} from {city}.", "question": "Who is this?",
            "answer": f"This is {name}.", "Classification_Task": classification, "Mask_Task": mask,
            "Generation_Task": generation}


def write_official_layout(root: Path, *, broken: bool = False) -> Path:
    """A benchmark in MLLMU-Bench's layout, written with pandas. ``broken``: one retain row's image is not
    a JPEG, another's points at a file that does not exist, and Test_Set holds no forget id (an empty split)."""
    rows = [profile_row(k, p, PEOPLE) for k, p in enumerate(PEOPLE)]
    celebs = [profile_row(k, p, CELEBRITIES + PEOPLE) for k, p in enumerate(CELEBRITIES)]

    def frame(chosen, image=True, directory=False):
        out = []
        for r in chosen:
            row = dict(r)
            if image:
                row["image"] = {"bytes": jpeg(int(r["ID"][-3:]) + 7 * len(r["ID"])), "path": f"{r['ID']}.jpg"}
            if directory:
                row["Directory"] = f"images/{r['ID']}"
            out.append(row)
        return pd.DataFrame(out)

    def write(df: pd.DataFrame, folder: str, name: str = "train-00000-of-00001.parquet"):
        (root / folder).mkdir(parents=True, exist_ok=True)
        df.to_parquet(root / folder / name, engine="pyarrow", index=False)

    write(frame(rows, directory=True), "Full_Set")
    write(frame([r for r in rows if r["ID"] in FORGET_5]), "forget_5")
    retain = frame([r for r in rows if r["ID"] not in FORGET_5])
    if broken:
        retain.at[0, "image"] = {"bytes": b"\xff\xd8 this is not a jpeg", "path": None}
        retain.at[1, "image"] = {"bytes": None, "path": str(root / "images" / "missing.jpg")}
    write(retain, "retain_95")
    test = frame(rows, image=False)
    test["images"] = [np.array([{"bytes": jpeg(100 * k + j), "path": f"{r['ID']}_pose{j}.jpg"} for j in range(3)],
                               dtype=object) for k, r in enumerate(rows)]
    if broken:
        test = test[~test["ID"].isin(FORGET_5)].reset_index(drop=True)
    write(test.iloc[:3], "Test_Set", "train-00000-of-00002.parquet")
    write(test.iloc[3:], "Test_Set", "train-00001-of-00002.parquet")
    write(frame(celebs), "Retain_Set")
    return root
