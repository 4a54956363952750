"""The sampling and hash-split protocol."""

from __future__ import annotations

from hashlib import blake2b

import numpy as np
import pytest

from gffmerge.data import (
    FrameSet,
    assign_splits,
    load_dataset,
    sample_frames,
    split_fraction,
    split_of,
)
from gffmerge.data.dataset import AtomsDataset


def test_split_fraction_is_the_documented_hash():
    digest = blake2b(b"42:lips20/beta-Li3PS4:17", digest_size=8).digest()
    assert split_fraction("lips20/beta-Li3PS4", 17) == int.from_bytes(digest, "big") / 2**64
    assert split_fraction("a", 1, seed=42) != split_fraction("a", 1, seed=43)


def test_split_is_deterministic_and_80_10_10():
    keys = [(f"sys{s}", k) for s in range(4) for k in range(500)]
    first = [split_of(s, k) for s, k in keys]
    assert first == [split_of(s, k) for s, k in keys]
    counts = {name: first.count(name) / len(first) for name in ("train", "val", "test")}
    # binomial std for 2000 draws at p=0.1 is 0.0067
    assert abs(counts["test"] - 0.1) < 0.025
    assert abs(counts["val"] - 0.1) < 0.025
    assert abs(counts["train"] - 0.8) < 0.03


def test_assign_splits_matches_split_of_when_nothing_is_empty():
    frames = np.arange(300)
    names = assign_splits("ethanol", frames)
    assert names.tolist() == [split_of("ethanol", k) for k in frames]


def test_empty_split_repair_is_deterministic():
    # find a few frames that all hash to train
    train_only = [k for k in range(200) if split_of("tiny", k) == "train"][:5]
    names = assign_splits("tiny", train_only)
    assert sorted(names.tolist()) == ["test", "train", "train", "train", "val"]
    assert names.tolist() == assign_splits("tiny", train_only).tolist()
    # the frame moved into test is the train frame with the smallest p
    p = [split_fraction("tiny", k) for k in train_only]
    assert names[int(np.argmin(p))] == "test"
    # two frames cannot fill three splits; one frame stays where it hashed
    assert sorted(assign_splits("tiny", train_only[:2]).tolist()) == ["test", "train"]
    assert assign_splits("tiny", train_only[:1]).tolist() == ["train"]
    assert assign_splits("tiny", []).tolist() == []


def test_sample_frames():
    np.testing.assert_array_equal(sample_frames(1000), np.arange(1000))
    chosen = sample_frames(2000)
    assert len(chosen) == 1250 and len(set(chosen.tolist())) == 1250
    np.testing.assert_array_equal(
        chosen, np.sort(np.random.default_rng(42).choice(2000, 1250, replace=False)))
    np.testing.assert_array_equal(sample_frames(2000), chosen)
    np.testing.assert_array_equal(sample_frames(2000, None), np.arange(2000))


def test_same_frame_same_split_individual_and_combined():
    names = ["lips20/beta-Li3PS4", "lips20/gamma-Li3PS4", "rmd17/ethanol"]
    combined = load_dataset(names)
    in_combined = dict(zip(combined.frame_keys, combined.split_names, strict=True))
    assert len(combined) == 1000 + 1000 + 1250
    for name in names:
        alone = load_dataset([name])
        mine = dict(zip(alone.frame_keys, alone.split_names, strict=True))
        assert mine == {k: v for k, v in in_combined.items() if k.startswith(name + ":")}
        for split in ("train", "val", "test"):
            assert set(alone.split(split).frame_keys) == {
                k for k in combined.split(split).frame_keys if k.startswith(name + ":")}


def test_dataset_split_partition_and_sampling():
    ds = load_dataset(["rmd17/benzene"])
    assert len(ds) == 1250
    keys = {s: set(ds.split(s).frame_keys) for s in ("train", "val", "test")}
    assert sum(len(v) for v in keys.values()) == len(ds)
    assert not (keys["train"] & keys["val"]) and not (keys["train"] & keys["test"])
    assert set(ds.frame_indices.tolist()) == set(sample_frames(2000).tolist())
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        ds.split("dev")


def test_duplicate_system_names_rejected():
    fs = FrameSet("a", z=np.array([1]), pos=np.zeros((3, 1, 3)))
    with pytest.raises(ValueError, match=r"unique.*\['a'\]"):
        AtomsDataset([fs, fs])
