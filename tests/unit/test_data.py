"""Readers (MLLMU-Bench parquet layout, JSONL), the synthetic writer, and the sampler."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from vgid_dist.data import MLLMUBench
from vgid_dist.data.jsonl import read_jsonl_samples
from vgid_dist.data.mllmu import profile_from_row
from vgid_dist.data.sampler import StepSampler
from vgid_dist.data.synthetic import png_bytes, write_synthetic_benchmark
from vgid_dist.errors import DataError


def test_synthetic_benchmark_has_the_official_layout(bench_dir):
    for folder in ("Full_Set", "ft_Data", "forget_5", "forget_10", "forget_15", "retain_95", "retain_90",
                   "retain_85", "Test_Set", "Retain_Set", "baseline_train_split/forget_5",
                   "baseline_train_split/retain_95"):
        assert list((bench_dir / folder).glob("*.parquet")), folder
    assert len(list((bench_dir / "Test_Set").glob("*.parquet"))) == 2


def test_reader_on_the_synthetic_folder(bench_dir):
    bench = MLLMUBench(bench_dir)
    forget_ids = set(bench.split_ids("forget", 10))
    retain_ids = set(bench.split_ids("retain", 10))
    assert forget_ids and not forget_ids & retain_ids and len(forget_ids | retain_ids) == 20
    assert set(bench.split_ids("forget", 5)) <= forget_ids  # nested forget splits
    forget = bench.train_samples("forget", 5)
    assert {s.profile_id for s in forget} == set(bench.split_ids("forget", 5))
    assert any(s.image is None for s in forget) and any(s.image is not None for s in forget)
    assert forget[0].image.load().size == (64, 64)
    test = bench.profiles("test", 5)
    assert {p.profile_id for p in test} == set(bench.split_ids("forget", 5))
    assert all(len(p.images) == 3 and p.image is None for p in test)
    for split in ("forget", "retain", "celebrity"):
        p = bench.profiles(split, 5)[0]
        assert p.classification and p.cloze and p.generation
        assert {q.qtype for q in p.generation} == {"Image_Textual", "Pure_Text"}


def test_writer_is_deterministic(tmp_path):
    a = write_synthetic_benchmark(tmp_path / "a", num_profiles=8, num_celebrities=2, seed=4)
    b = write_synthetic_benchmark(tmp_path / "b", num_profiles=8, num_celebrities=2, seed=4)
    for path in sorted(a.rglob("*.parquet")):
        assert pq.read_table(path).equals(pq.read_table(b / path.relative_to(a)))
    with pytest.raises(FileExistsError):
        write_synthetic_benchmark(a, num_profiles=8, num_celebrities=2)


def test_hand_built_row_with_numpy_nesting():
    """pandas returns nested lists as numpy arrays; the reader accepts them like lists."""
    options = {"A": "x", "B": "y", "C": "z", "D": "w"}
    row = {
        "ID": "p1",
        "image": {"bytes": png_bytes(Image.new("RGB", (8, 8))), "path": None},
        "Classification_Task": {
            "Image_Textual_Questions": np.array([{"Question": "q?", "Options": options, "Correct_Answer": "c"}],
                                                dtype=object),
            "Pure_Text_Questions": np.array([], dtype=object)},
        "Mask_Task": np.array([{"Question": "a __ b", "Ground_Truth": "x", "Type": "Pure_Text"}], dtype=object),
        "Generation_Task": np.array([{"Question": "g?", "Ground_Truth": "gt", "Type": "Image_Textual"}], dtype=object),
    }
    from vgid_dist.data.mllmu import plain

    profile = profile_from_row(plain(row), "file.parquet")
    assert profile.classification[0].correct == "C"
    assert profile.cloze[0].qtype == "Pure_Text" and profile.generation[0].ground_truth == "gt"


def test_missing_folder_and_column_are_named(tmp_path, bench_dir):
    with pytest.raises(DataError, match="forget_5: folder not found"):
        MLLMUBench(tmp_path).train_samples("forget", 5)
    folder = tmp_path / "bad" / "Retain_Set"
    folder.mkdir(parents=True)
    pq.write_table(pa.table({"name": ["x"]}), folder / "train-00000-of-00001.parquet")
    with pytest.raises(DataError, match=r"missing column\(s\) \['ID'\]"):
        MLLMUBench(tmp_path / "bad").profiles("celebrity", 5)


def test_bad_metadata_names_file_row_and_field(tmp_path):
    folder = tmp_path / "b" / "baseline_train_split" / "forget_5"
    folder.mkdir(parents=True)
    image = {"bytes": png_bytes(Image.new("RGB", (8, 8))), "path": None}
    pq.write_table(pa.table({"ID": ["p9"], "image": [image], "metadata": ['[{"Question": "q"}]']}),
                   folder / "train-00000-of-00001.parquet")
    with pytest.raises(DataError, match=r"row 'p9' field 'metadata'\[0\]"):
        MLLMUBench(tmp_path / "b").train_samples("forget", 5)


def test_unreadable_image_is_named(tmp_path):
    folder = tmp_path / "c" / "baseline_train_split" / "forget_5"
    folder.mkdir(parents=True)
    pq.write_table(pa.table({"ID": ["p7"], "image": [{"bytes": b"not an image", "path": None}],
                             "metadata": [json.dumps([{"Question": "q", "Answer": "a"}])]}),
                   folder / "train-00000-of-00001.parquet")
    sample = MLLMUBench(tmp_path / "c").train_samples("forget", 5)[0]
    with pytest.raises(DataError, match=r"row 'p7' field 'image': unreadable image"):
        sample.image.load()


def test_jsonl_reader(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "alice.png")
    lines = [{"id": "alice", "image": "alice.png", "question": "Who?", "answer": "Alice."},
             {"id": "alice", "image": None, "question": "Where does Alice work?", "answer": "At home."}]
    (tmp_path / "forget.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    samples = read_jsonl_samples(tmp_path / "forget.jsonl", "forget")
    assert [s.profile_id for s in samples] == ["alice", "alice"]
    assert samples[0].image.load().size == (8, 8) and samples[1].image is None
    (tmp_path / "bad.jsonl").write_text(json.dumps({"id": "x", "question": "q"}) + "\n")
    with pytest.raises(DataError, match=r"bad.jsonl:1 field 'answer'"):
        read_jsonl_samples(tmp_path / "bad.jsonl", "forget")


def test_sampler_partitions_the_global_batch():
    one = StepSampler(10, 7, batch_size=4, world_size=1, rank=0, grad_accum=1, seed=3)
    parts = [StepSampler(10, 7, 4, 2, r, 2, 3) for r in range(2)]
    for step in range(6):  # crosses epoch boundaries: every step is a full batch
        whole = one.micro_indices(step, 0)
        split_p = [i for m in range(2) for s in parts for i in s.micro_indices(step, m)[0]]
        split_r = [i for m in range(2) for s in parts for i in s.micro_indices(step, m)[1]]
        assert sorted(split_p) == sorted(whole[0]) and sorted(split_r) == sorted(whole[1])
    assert one.total_steps(epochs=1, max_steps=None) == 3 and one.total_steps(2, 5) == 5
    first_epoch = [i for s in range(2) for i in one.micro_indices(s, 0)[0]][:10]
    assert len(set(first_epoch)) == 8  # steps 0-1 cover 8 distinct samples of epoch 0


def test_retain_per_forget_draws_that_many_retain_samples_per_forget_sample():
    one = StepSampler(10, 30, batch_size=4, world_size=1, rank=0, grad_accum=1, seed=3, retain_per_forget=3)
    parts = [StepSampler(10, 30, 4, 2, r, 2, 3, retain_per_forget=3) for r in range(2)]
    seen = []
    for step in range(5):
        primary, retain = one.micro_indices(step, 0)
        assert len(primary) == 4 and len(retain) == 12
        assert primary == StepSampler(10, 30, 4, 1, 0, 1, 3).micro_indices(step, 0)[0]  # forget stream unchanged
        split_r = [i for m in range(2) for s in parts for i in s.micro_indices(step, m)[1]]
        assert sorted(split_r) == sorted(retain)
        seen += retain
    assert len(set(seen[:30])) == 30  # the first 30 retain draws are one permutation of the retain set
