"""``load_checkpoint`` on files that are not checkpoints: one sentence that says what is wrong."""

from __future__ import annotations

import re

import pytest
import torch

from emaprobe.train.checkpoint import load_checkpoint


@pytest.mark.parametrize(
    "content, why",
    [
        (b"hello", r"torch\.load could not read it \(KeyError\); the file is damaged or cut short"),
        (b"", r"the file is empty$"),
        (b"PK\x03\x04 cut",
         r"torch\.load could not read it \(RuntimeError: PytorchStreamReader failed reading zip archive: [^)]*\); the"),
    ],
)
def test_an_unreadable_checkpoint_is_explained_in_words(tmp_path, content, why):
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=f"not a readable emaprobe checkpoint: {why}") as err:
        load_checkpoint(path)
    assert not re.search(r"\(\d+\)", str(err.value)), "a bare number from torch.load explains nothing"


def test_a_torch_file_that_is_not_a_training_checkpoint_is_named_so(tmp_path):
    path = tmp_path / "checkpoint.pt"
    torch.save({"weight": torch.zeros(2)}, path)
    with pytest.raises(ValueError, match=r"a torch file but not an emaprobe training checkpoint \(it lacks \['step'"):
        load_checkpoint(path)
