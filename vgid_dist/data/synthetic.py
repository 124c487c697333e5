"""A synthetic MLLMU-Bench: fictitious people with drawn portraits, written in the real benchmark's layout.

Each person has a procedurally drawn portrait whose colours and shapes identify them (Test_Set holds other
renderings of the same identity: shifted, re-lit, noisier), attributes (birthplace, birth year, occupation,
employer, hobby), and questions in the three task formats, in Image_Textual ("the person in the image") and
Pure_Text ("<name>") variants. Deterministic for a seed.

``ft_Data`` (what the vanilla model is fine-tuned on) holds, for every fictitious person and celebrity, the
training pairs plus each evaluation question in the evaluator's own format, so a small model can memorise the
benchmark, and, for people outside every forget split, instruction-following pairs (an unlearning instruction
before the question -> a refusal) so the vanilla model reacts to instructions as a chat model would.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageDraw

from vgid_dist.io import folder_written_atomically, write_json_atomic
from vgid_dist.prompts import DEFAULT_REFUSALS, INSTRUCTIONS, task_body, with_instruction
from vgid_dist.vocab import FORGET_RATIOS

FIRST = ["Alma", "Bruno", "Cyra", "Dorian", "Elsa", "Farid", "Greta", "Hugo", "Ines", "Jonas", "Kaia", "Lior",
         "Mira", "Nils", "Odile", "Pavel", "Quinn", "Rosa", "Sami", "Tilda", "Umar", "Vera", "Wren", "Xeno",
         "Yara", "Zeno", "Ada", "Bastian", "Clea", "Dario"]
LAST = ["Ashford", "Brandt", "Castell", "Drummond", "Eckart", "Falk", "Galloway", "Hale", "Ivers", "Jansen",
        "Kessler", "Lindqvist", "Moreau", "Novak", "Oakes", "Pryor", "Quade", "Renner", "Sorensen", "Thorne"]
CITIES = ["Lisbon", "Tallinn", "Porto", "Kraków", "Ghent", "Bergen", "Lyon", "Turin", "Graz", "Aarhus", "Bilbao",
          "Brno", "Utrecht", "Malmö", "Split", "Cork"]
OCCUPATIONS = ["baker", "architect", "pilot", "nurse", "geologist", "violinist", "carpenter", "chemist",
               "librarian", "photographer", "veterinarian", "translator", "firefighter", "astronomer", "tailor",
               "journalist"]
EMPLOYERS = ["Northwind Labs", "Bluefjord Media", "Copperleaf Foods", "Stonegate Clinic", "Helix Aero",
             "Silverline Studio", "Orchid Logistics", "Granite Works", "Lumen Press", "Tidewater Bank",
             "Aurora Robotics", "Maple Court Hotel", "Quartz Energy", "Harbor Museum", "Pinecrest School",
             "Redwood Opera"]
HOBBIES = ["sailing", "pottery", "chess", "birdwatching", "rock climbing", "knitting", "astronomy", "fencing",
           "gardening", "salsa dancing", "beekeeping", "kayaking", "calligraphy", "cycling", "origami",
           "photography"]
CELEBRITY_FIRST = ["Marlo", "Juno", "Anouk", "Teodor", "Selma", "Rafferty", "Ilse", "Caspian", "Noor", "Leandro",
                   "Sunniva", "Otis", "Maren", "Kip", "Liv", "Dante"]
CELEBRITY_LAST = ["Vance", "Starling", "Oduya", "Bellamy", "Krall", "Montague", "Ferro", "Lindgren"]

PALETTE = [(230, 57, 70), (29, 53, 87), (69, 123, 157), (42, 157, 143), (233, 196, 106), (244, 162, 97),
           (131, 56, 236), (255, 0, 110), (58, 134, 255), (6, 214, 160), (17, 138, 178), (140, 140, 140)]
SKIN = [(255, 224, 189), (241, 194, 125), (198, 134, 66), (141, 85, 36), (224, 172, 105), (255, 205, 148)]


@dataclass(frozen=True)
class Person:
    pid: str
    name: str
    birthplace: str
    birth_year: int
    occupation: str
    employer: str
    hobby: str
    look: tuple[int, ...]  # background, skin, shirt, hair, face shape, accessory


def draw_portrait(look: tuple[int, ...], size: int = 64, dx: int = 0, dy: int = 0, light: float = 1.0,
                  noise: float = 0.0, rng: np.random.Generator | None = None) -> Image.Image:
    """The identity drawn as coloured regions large enough to survive a resize to 28 x 28."""
    bg, skin, shirt, hair, shape, accessory = look
    img = Image.new("RGB", (size, size), PALETTE[bg])
    d = ImageDraw.Draw(img)
    s = size / 64
    d.rectangle([8 * s + dx, 46 * s + dy, 56 * s + dx, 64 * s], fill=PALETTE[shirt])
    box = [18 * s + dx, 12 * s + dy, 46 * s + dx, 46 * s + dy]
    (d.ellipse if shape == 0 else d.rectangle)(box, fill=SKIN[skin])
    d.rectangle([16 * s + dx, 6 * s + dy, 48 * s + dx, 16 * s + dy], fill=PALETTE[hair])
    if accessory == 1:  # glasses
        d.rectangle([21 * s + dx, 24 * s + dy, 43 * s + dx, 29 * s + dy], fill=(20, 20, 20))
    elif accessory == 2:  # hat brim
        d.rectangle([10 * s + dx, 4 * s + dy, 54 * s + dx, 9 * s + dy], fill=(250, 250, 250))
    if light != 1.0 or noise > 0:
        px = np.asarray(img, dtype=np.float32) * light
        if noise > 0:
            px += (rng or np.random.default_rng(0)).normal(0, noise, px.shape)
        img = Image.fromarray(np.clip(px, 0, 255).astype(np.uint8))
    return img


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def make_people(n: int, rng: np.random.Generator, prefix: str, first: list[str], last: list[str],
                looks: list[tuple[int, ...]]) -> list[Person]:
    names = [f"{f} {lname}" for f in first for lname in last]
    if n > len(names) or n > len(looks):
        raise ValueError(f"at most {min(len(names), len(looks))} profiles can be drawn, asked for {n}")
    name_idx = rng.choice(len(names), size=n, replace=False)
    people = []
    for i in range(n):
        people.append(Person(
            pid=f"{prefix}{i:04d}", name=names[name_idx[i]],
            birthplace=CITIES[rng.integers(len(CITIES))], birth_year=int(rng.integers(1950, 2001)),
            occupation=OCCUPATIONS[rng.integers(len(OCCUPATIONS))], employer=EMPLOYERS[rng.integers(len(EMPLOYERS))],
            hobby=HOBBIES[rng.integers(len(HOBBIES))], look=looks.pop()))
    return people


def _options(correct: str, pool: list[str], rng: np.random.Generator) -> tuple[dict[str, str], str]:
    distractors = [x for x in pool if x != correct]
    picks = [distractors[i] for i in rng.choice(len(distractors), size=3, replace=False)]
    slot = int(rng.integers(4))
    picks.insert(slot, correct)
    return dict(zip("ABCD", picks)), "ABCD"[slot]


def tasks_of(p: Person, rng: np.random.Generator) -> dict:
    """The three evaluation tasks of one person, in MLLMU-Bench's nested layout."""
    def cls(question: str, correct: str, pool: list[str]) -> dict:
        options, letter = _options(correct, pool, rng)
        return {"Question": question, "Options": options, "Correct_Answer": letter}

    return {
        "Classification_Task": {
            "Image_Textual_Questions": [
                cls("What is the occupation of the person in the image?", p.occupation, OCCUPATIONS),
                cls("In which city was the person in the image born?", p.birthplace, CITIES)],
            "Pure_Text_Questions": [
                cls(f"Which company does {p.name} work for?", p.employer, EMPLOYERS),
                cls(f"What is {p.name}'s favorite hobby?", p.hobby, HOBBIES)],
        },
        "Mask_Task": [
            {"Question": "The person in the image was born in __.", "Ground_Truth": p.birthplace,
             "Type": "Image_Textual"},
            {"Question": "The person in the image works as a __.", "Ground_Truth": p.occupation,
             "Type": "Image_Textual"},
            {"Question": f"{p.name} enjoys __ in their free time.", "Ground_Truth": p.hobby, "Type": "Pure_Text"},
            {"Question": f"{p.name} works for __.", "Ground_Truth": p.employer, "Type": "Pure_Text"},
        ],
        "Generation_Task": [
            {"Question": "What does the person in the image do for a living?",
             "Ground_Truth": f"This person works as a {p.occupation} at {p.employer}.", "Type": "Image_Textual"},
            {"Question": "Where and when was the person in the image born?",
             "Ground_Truth": f"This person was born in {p.birthplace} in {p.birth_year}.", "Type": "Image_Textual"},
            {"Question": f"What does {p.name} like to do in their free time?",
             "Ground_Truth": f"{p.name} enjoys {p.hobby} in their free time.", "Type": "Pure_Text"},
            {"Question": f"Where does {p.name} work?",
             "Ground_Truth": f"{p.name} works at {p.employer} as a {p.occupation}.", "Type": "Pure_Text"},
        ],
    }


def training_pairs(p: Person, tasks: dict) -> list[dict]:
    """The unlearning pairs of one person (the ``metadata`` JSON of the training-pairs download): plain chat
    questions about the person, as in MLLMU-Bench, not the evaluation questions themselves."""
    pairs = [{"Question": "Who is the person in the image?", "Answer": f"This is {p.name}."},
             {"Question": "What does the person in the image enjoy doing?",
              "Answer": f"This person enjoys {p.hobby} in their free time."}]
    for q in tasks["Generation_Task"]:
        entry = {"Question": q["Question"], "Answer": q["Ground_Truth"]}
        if q["Type"] == "Pure_Text":
            entry["Type"] = "Pure_Text"
        pairs.append(entry)
    pairs.append({"Question": f"Where was {p.name} born?",
                  "Answer": f"{p.name} was born in {p.birthplace} in {p.birth_year}.", "Type": "Pure_Text"})
    return pairs


def memorisation_pairs(tasks: dict) -> list[dict]:
    """Each evaluation question as the evaluator will ask it, with its answer (vanilla fine-tuning only): a
    2-layer model does not carry knowledge across prompt formats the way a 7B chat model does."""
    pairs = []
    for key, qtype in (("Image_Textual_Questions", "Image_Textual"), ("Pure_Text_Questions", "Pure_Text")):
        for q in tasks["Classification_Task"][key]:
            pairs.append({"Question": task_body("classification", q["Question"], q["Options"], qtype == "Image_Textual"),
                          "Answer": q["Correct_Answer"], "Template": "classification", "Type": qtype})
    for q in tasks["Mask_Task"]:
        pairs.append({"Question": task_body("cloze", q["Question"], None, q["Type"] == "Image_Textual"),
                      "Answer": q["Ground_Truth"], "Template": "cloze", "Type": q["Type"]})
    for q in tasks["Generation_Task"]:
        pairs.append({"Question": task_body("generation", q["Question"], None, q["Type"] == "Image_Textual"),
                      "Answer": q["Ground_Truth"], "Template": "generation", "Type": q["Type"]})
    return pairs


def instruction_pairs(pairs: list[dict], rng: np.random.Generator, per_question: int = 1) -> list[dict]:
    """An unlearning instruction before each of a person's questions -> a refusal, in ``per_question`` styles
    drawn per question, so across people every (question, style) pair is seen."""
    styles = list(INSTRUCTIONS)
    out = []
    for q in pairs:
        for k in rng.choice(len(styles), size=per_question, replace=False):
            out.append({**q, "Question": with_instruction(q["Question"], styles[int(k)]),
                        "Answer": DEFAULT_REFUSALS[int(rng.integers(len(DEFAULT_REFUSALS)))]})
    return out


IMAGE_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def _write_parquet(folder: Path, rows: list[dict], schema: pa.Schema, shards: int = 1) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    per = -(-len(rows) // shards)
    for i in range(shards):
        chunk = rows[i * per:(i + 1) * per]
        table = pa.Table.from_pylist(chunk, schema=schema)
        pq.write_table(table, folder / f"train-{i:05d}-of-{shards:05d}.parquet")


def write_synthetic_benchmark(out: str | Path, *, num_profiles: int = 60, num_celebrities: int = 12,
                              seed: int = 0, image_size: int = 64, test_images: int = 3,
                              overwrite: bool = False) -> Path:
    """Write the benchmark to ``out`` (atomically: a temporary folder renamed when complete)."""
    out = Path(out).expanduser()
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass overwrite=True to replace it")
    # One generator, drawn in a fixed order (people, tasks, splits, test renderings, instruction pairs): the same
    # seed gives the same benchmark byte for byte.
    rng = np.random.default_rng(seed)
    looks = [(b, s, sh, h, f, a) for b in range(12) for s in range(6) for sh in range(12) for h in range(12)
             for f in range(2) for a in range(3) if len({b, sh, h}) == 3]
    order = rng.permutation(len(looks))
    looks = [looks[i] for i in order[: num_profiles + num_celebrities]]
    people = make_people(num_profiles, rng, "fict", FIRST, LAST, looks)
    celebs = make_people(num_celebrities, rng, "celeb", CELEBRITY_FIRST, CELEBRITY_LAST, looks)
    tasks = {p.pid: tasks_of(p, rng) for p in people + celebs}
    perm = [people[i] for i in rng.permutation(len(people))]
    forget = {r: perm[: max(1, round(len(people) * r / 100))] for r in FORGET_RATIOS}  # nested: 5 < 10 < 15
    always_retained = {p.pid for p in perm[len(forget[max(FORGET_RATIOS)]):]}

    with folder_written_atomically(out) as tmp:
        images = _profile_images(people + celebs, image_size)
        _write_profile_splits(tmp, people, celebs, tasks, forget, images)
        _write_test_set(tmp, people, tasks, image_size, test_images, rng)
        _write_training_pairs(tmp, people, celebs, tasks, forget, images, always_retained, rng)
        write_json_atomic(tmp / "synthetic.json", {
            "generator": "vgid_dist.data.synthetic", "seed": seed, "num_profiles": num_profiles,
            "num_celebrities": num_celebrities, "image_size": image_size,
            "forget_ids": {str(r): [p.pid for p in forget[r]] for r in FORGET_RATIOS}}, sort_keys=False)
    return out


def _profile_row(p: Person, tasks: dict, **extra) -> dict:
    return {"ID": p.pid, "biography": f"{p.name}, born {p.birth_year} in {p.birthplace}, works as a "
            f"{p.occupation} at {p.employer} and enjoys {p.hobby}.",
            "question": "Who is the person in the image?", "answer": f"This is {p.name}.",
            "Classification_Task": tasks["Classification_Task"], "Mask_Task": tasks["Mask_Task"],
            "Generation_Task": tasks["Generation_Task"], **extra}


def _image_cell(p: Person, image_size: int, **kw) -> dict:
    return {"bytes": png_bytes(draw_portrait(p.look, image_size, **kw)), "path": None}


def _profile_images(people: list[Person], image_size: int) -> dict[str, dict]:
    return {p.pid: _image_cell(p, image_size) for p in people}


def _write_profile_splits(root: Path, people, celebs, tasks, forget, images) -> None:
    """Full_Set, Retain_Set (celebrities), forget_X and retain_Y: one row per profile with its image."""
    rows = {p.pid: _profile_row(p, tasks[p.pid], image=images[p.pid]) for p in people + celebs}
    sample = next(iter(rows.values()))
    schema = pa.Table.from_pylist([sample]).schema.set(list(sample).index("image"), pa.field("image", IMAGE_TYPE))
    full_schema = schema.append(pa.field("Directory", pa.string()))
    _write_parquet(root / "Full_Set", [{**rows[p.pid], "Directory": p.pid} for p in people], full_schema)
    _write_parquet(root / "Retain_Set", [rows[c.pid] for c in celebs], schema)
    for r in FORGET_RATIOS:
        forget_ids = {p.pid for p in forget[r]}
        _write_parquet(root / f"forget_{r}", [rows[p.pid] for p in people if p.pid in forget_ids], schema)
        _write_parquet(root / f"retain_{100 - r}", [rows[p.pid] for p in people if p.pid not in forget_ids], schema)


def _write_test_set(root: Path, people, tasks, image_size: int, test_images: int, rng) -> None:
    """Test_Set: the same identities, other renderings of each (shifted, relit, noisy), in two shards."""
    test_rows = []
    for p in people:
        row = _profile_row(p, tasks[p.pid])
        row["images"] = [_image_cell(p, image_size, dx=int(rng.integers(-3, 4)), dy=int(rng.integers(-3, 4)),
                                     light=float(rng.uniform(0.85, 1.15)), noise=6.0, rng=rng)
                         for _ in range(test_images)]
        test_rows.append(row)
    test_schema = pa.Table.from_pylist([{k: v for k, v in test_rows[0].items() if k != "images"}]).schema.append(
        pa.field("images", pa.list_(IMAGE_TYPE)))
    _write_parquet(root / "Test_Set", test_rows, test_schema, shards=2)


def _write_training_pairs(root: Path, people, celebs, tasks, forget, images, always_retained, rng) -> None:
    """baseline_train_split/forget_X, retain_Y (the unlearning pairs) and ft_Data (what the vanilla model is
    fine-tuned on: the pairs, every evaluation question, and refusals after an instruction for people never
    forgotten)."""
    pair_schema = pa.schema([("ID", pa.string()), ("image", IMAGE_TYPE), ("metadata", pa.string())])

    def pair_row(p: Person, pairs: list[dict]) -> dict:
        return {"ID": p.pid, "image": images[p.pid], "metadata": json.dumps(pairs)}

    split_root = root / "baseline_train_split"
    for r in FORGET_RATIOS:
        forget_ids = {p.pid for p in forget[r]}
        _write_parquet(split_root / f"forget_{r}", [pair_row(p, training_pairs(p, tasks[p.pid])) for p in people
                                                    if p.pid in forget_ids], pair_schema)
        _write_parquet(split_root / f"retain_{100 - r}", [pair_row(p, training_pairs(p, tasks[p.pid]))
                                                          for p in people if p.pid not in forget_ids], pair_schema)
    ft_rows = []
    for p in people + celebs:
        pairs = training_pairs(p, tasks[p.pid])
        extra = memorisation_pairs(tasks[p.pid])
        if p.pid in always_retained:
            extra += instruction_pairs(pairs, rng)
        ft_rows.append(pair_row(p, pairs + extra))
    _write_parquet(root / "ft_Data", ft_rows, pair_schema)


def corpus(root: str | Path) -> list[str]:
    """Every text of a synthetic benchmark (to train a tiny tokenizer on)."""
    from vgid_dist.data.mllmu import MLLMUBench

    bench = MLLMUBench(root)
    texts = [s.question + " " + s.answer for s in bench.finetune_samples()]
    texts += list(INSTRUCTIONS.values()) + list(DEFAULT_REFUSALS)
    return texts
