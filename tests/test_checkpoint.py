"""Atomic save and safe, clear loading of checkpoints."""

import pytest
import torch

from ppo_lab.io.checkpoint import CheckpointError, find_checkpoint, load_checkpoint, save_checkpoint


def state():
    return {"model": {"w": torch.ones(3)}, "config": {"seed": 1}, "global_step": 7}


def test_round_trip(tmp_path):
    path = save_checkpoint(state(), tmp_path / "c" / "final.pt")
    loaded = load_checkpoint(path)
    assert loaded["global_step"] == 7 and torch.equal(loaded["model"]["w"], torch.ones(3))
    assert [p.name for p in path.parent.iterdir()] == ["final.pt"]  # no temp file left behind


def test_failed_write_leaves_previous_file_intact(tmp_path):
    path = save_checkpoint(state(), tmp_path / "final.pt")
    before = path.read_bytes()
    with pytest.raises(Exception):
        save_checkpoint({"model": {}, "config": {}, "bad": lambda: 0}, path)  # cannot be pickled
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["final.pt"]


def test_truncated_file_gives_clear_error_naming_it(tmp_path):
    path = save_checkpoint(state(), tmp_path / "final.pt")
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match=f"checkpoint {path} is corrupt or truncated"):
        load_checkpoint(path)


class Evil:
    """An arbitrary object: weights_only loading must refuse to unpickle it."""


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "config": {}, "x": Evil()}, path)
    with pytest.raises(CheckpointError, match="evil.pt"):
        load_checkpoint(path)


def test_missing_and_empty_run_dir(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        find_checkpoint(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="no checkpoint found"):
        find_checkpoint(tmp_path)
    save_checkpoint(state(), tmp_path / "checkpoints" / "update_000002.pt")
    save_checkpoint(state(), tmp_path / "checkpoints" / "update_000010.pt")
    assert find_checkpoint(tmp_path).name == "update_000010.pt"
    save_checkpoint(state(), tmp_path / "checkpoints" / "final.pt")
    assert find_checkpoint(tmp_path).name == "final.pt"
