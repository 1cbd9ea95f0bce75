"""Shared fixtures. Tests that need the shared data folder skip cleanly without it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from emaprobe.utils.paths import ENV_DATA, data_root


@pytest.fixture
def shared_data() -> Path:
    """The folder named by EMAPROBE_DATA (holding text/, gpt2/, ud-english-ewt/)."""
    root = data_root()
    if root is None:
        pytest.skip(f"{ENV_DATA} is not set to a data folder (holding text/, gpt2/, ud-english-ewt/)")
    return root


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=[
    pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")])])
def device(request) -> str:
    """A test that takes ``device`` runs on the CPU, and on CUDA where a device is present."""
    return request.param


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


# Four sentences written by hand for the CoNLL-U reader and the UD role extraction:
# a relative clause, a passive with "to" and "by", an empty node, conjoined nouns.
HANDWRITTEN_CONLLU = """# newdoc id = handwritten
# sent_id = h-1
# text = The dog that the cat chased gave the boy a bone.
1\tThe\tthe\tDET\tDT\t_\t2\tdet\t_\t_
2\tdog\tdog\tNOUN\tNN\t_\t7\tnsubj\t_\t_
3\tthat\tthat\tPRON\tWDT\t_\t6\tobj\t_\t_
4\tthe\tthe\tDET\tDT\t_\t5\tdet\t_\t_
5\tcat\tcat\tNOUN\tNN\t_\t6\tnsubj\t_\t_
6\tchased\tchase\tVERB\tVBD\t_\t2\tacl:relcl\t_\t_
7\tgave\tgive\tVERB\tVBD\t_\t0\troot\t_\t_
8\tthe\tthe\tDET\tDT\t_\t9\tdet\t_\t_
9\tboy\tboy\tNOUN\tNN\t_\t7\tiobj\t_\t_
10\ta\ta\tDET\tDT\t_\t11\tdet\t_\t_
11\tbone\tbone\tNOUN\tNN\t_\t7\tobj\t_\tSpaceAfter=No
12\t.\t.\tPUNCT\t.\t_\t7\tpunct\t_\t_

# sent_id = h-2
# text = The ball wasn't sent to Mary by John.
1\tThe\tthe\tDET\tDT\t_\t2\tdet\t_\t_
2\tball\tball\tNOUN\tNN\t_\t5\tnsubj:pass\t_\t_
3-4\twasn't\t_\t_\t_\t_\t_\t_\t_\t_
3\twas\tbe\tAUX\tVBD\t_\t5\taux:pass\t_\t_
4\tn't\tnot\tPART\tRB\t_\t5\tadvmod\t_\t_
5\tsent\tsend\tVERB\tVBN\t_\t0\troot\t_\t_
6\tto\tto\tADP\tIN\t_\t7\tcase\t_\t_
7\tMary\tMary\tPROPN\tNNP\t_\t5\tobl\t_\t_
8\tby\tby\tADP\tIN\t_\t9\tcase\t_\t_
9\tJohn\tJohn\tPROPN\tNNP\t_\t5\tobl:agent\t_\tSpaceAfter=No
10\t.\t.\tPUNCT\t.\t_\t5\tpunct\t_\t_

# sent_id = h-3
# text = Mary saw the dog and John the cat.
1\tMary\tMary\tPROPN\tNNP\t_\t2\tnsubj\t_\t_
2\tsaw\tsee\tVERB\tVBD\t_\t0\troot\t_\t_
3\tthe\tthe\tDET\tDT\t_\t4\tdet\t_\t_
4\tdog\tdog\tNOUN\tNN\t_\t2\tobj\t_\t_
5\tand\tand\tCCONJ\tCC\t_\t6\tcc\t_\t_
6\tJohn\tJohn\tPROPN\tNNP\t_\t2\tconj\t_\t_
6.1\tsaw\tsee\tVERB\tVBD\t_\t_\t_\t2:conj\t_
7\tthe\tthe\tDET\tDT\t_\t8\tdet\t_\t_
8\tcat\tcat\tNOUN\tNN\t_\t6\torphan\t_\tSpaceAfter=No
9\t.\t.\tPUNCT\t.\t_\t2\tpunct\t_\t_

# sent_id = h-4
# text = I think the dog and the cat slept.
1\tI\tI\tPRON\tPRP\t_\t2\tnsubj\t_\t_
2\tthink\tthink\tVERB\tVBP\t_\t0\troot\t_\t_
3\tthe\tthe\tDET\tDT\t_\t4\tdet\t_\t_
4\tdog\tdog\tNOUN\tNN\t_\t8\tnsubj\t_\t_
5\tand\tand\tCCONJ\tCC\t_\t7\tcc\t_\t_
6\tthe\tthe\tDET\tDT\t_\t7\tdet\t_\t_
7\tcat\tcat\tNOUN\tNN\t_\t4\tconj\t_\t_
8\tslept\tsleep\tVERB\tVBD\t_\t2\tccomp\t_\tSpaceAfter=No
9\t.\t.\tPUNCT\t.\t_\t2\tpunct\t_\t_

"""


@pytest.fixture(scope="session")
def handwritten_treebank(tmp_path_factory) -> Path:
    """A UD-style folder holding ``handwritten-ud-test.conllu`` (the sentences above)."""
    folder = tmp_path_factory.mktemp("handwritten-ud")
    (folder / "handwritten-ud-test.conllu").write_text(HANDWRITTEN_CONLLU, encoding="utf-8")
    return folder


@pytest.fixture(scope="session")
def handwritten_conllu(handwritten_treebank) -> Path:
    """The file ``handwritten-ud-test.conllu`` itself."""
    return handwritten_treebank / "handwritten-ud-test.conllu"


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models gain nothing from threads, and on a busy 2-core CI box they lose a lot."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def missing_data_then_no_ranks(tmp_path, monkeypatch, capsys):
    """``run(argv)`` -> (stderr, stderr): the command of ``argv`` with ``--data`` naming a missing file, then an
    existing one, where no GPT-2 ranks file is to be found (EMAPROBE_DATA and EMAPROBE_GPT2_RANKS unset);
    each must exit 2."""
    from emaprobe.cli import main

    monkeypatch.delenv(ENV_DATA, raising=False)
    monkeypatch.delenv("EMAPROBE_GPT2_RANKS", raising=False)

    def run(argv: list[str]) -> tuple[str, str]:
        (tmp_path / "c.txt").write_text("a b\n", encoding="utf-8")
        errs = []
        for name in ("missing.txt", "c.txt"):
            assert main([*argv, "--data", str(tmp_path / name)]) == 2
            errs.append(capsys.readouterr().err)
        return errs[0], errs[1]

    return run


os.environ.setdefault("TQDM_DISABLE", "1")
