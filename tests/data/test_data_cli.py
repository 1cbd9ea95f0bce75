"""``emaprobe data prepare`` and ``emaprobe data info`` through the command-line entry point."""

from __future__ import annotations

import importlib
import json
import os
import signal
import sys
import time

import pytest

from emaprobe.cli import main
from emaprobe.data import TokenData

# the package re-exports a function of the same name
PREPARE = importlib.import_module("emaprobe.data.prepare")


def test_prepare_then_info_then_reuse_tokenizer(tmp_path, capsys):
    (tmp_path / "train.txt").write_text("a b c\na b\n\nc c d\n", encoding="utf-8")
    (tmp_path / "valid.txt").write_text("a d e\n", encoding="utf-8")
    argv = ["data", "prepare", "--data", str(tmp_path / "train.txt"), "--tokenizer", "word"]
    assert main([*argv, "--out", str(tmp_path / "tr"), "--workers", "1", "--quiet"]) == 0
    assert "11 tokens (uint16) in 1 shard(s), 2 documents, 16 bytes" in capsys.readouterr().out
    saved = str(tmp_path / "tr" / "tokenizer")
    argv = ["data", "prepare", "--data", str(tmp_path / "valid.txt"), "--tokenizer", saved]
    assert main([*argv, "--out", str(tmp_path / "va"), "--quiet"]) == 0
    valid = TokenData(tmp_path / "va")
    assert valid.decode() == "a d <unk>\n"  # the train vocabulary has no 'e'
    assert main(["data", "info", str(tmp_path / "tr"), "--show", "7"]) == 0
    out = capsys.readouterr().out
    assert f"{tmp_path / 'tr'}: 11 tokens (uint16) in 1 shard(s), 2 documents, 16 bytes" in out
    assert "  tokenizer: word (vocab 6)" in out and "TokenData(" not in out  # lines, not a repr
    assert "a b c\na b\n" in out
    assert main(["data", "info", str(tmp_path / "va"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n_tokens"] == 4


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--tokenizer", "spm"], "unknown tokenizer 'spm'; choose one of ['bpe', 'gpt2', 'word']"),
        (["--tokenizer", "bpe", "--vocab-size", "10"], "vocab_size must be >= 257"),
        # the flags by their command-line names, not prepare()'s parameters
        (["--tokenizer", "word", "--workers", "0"], "emaprobe data prepare: error: --workers must be >= 1, got 0"),
        (["--tokenizer", "word", "--shard-tokens", "0"], "--shard-tokens must be >= 1, got 0"),
        # refused, not ignored
        (["--tokenizer", "word", "--ranks", "/x"], "--ranks applies only to --tokenizer gpt2, not 'word'"),
        (["--tokenizer", "gpt2", "--ranks", "/nonexistent/x.tiktoken"], "--ranks /nonexistent/x.tiktoken: no such"),
        (["--tokenizer", "gpt2", "--vocab-size", "100"], "--vocab-size applies only to --tokenizer word or bpe"),
        (["--tokenizer", "gpt2", "--tokenizer-corpus", "ptb:train"], "--tokenizer-corpus applies only to"),
        (["--tokenizer", "word", "--vocab-size", "1"], "--vocab-size must be >= 2, got 1"),
    ],
)
def test_prepare_bad_arguments_exit_2_with_one_line(tmp_path, capsys, extra, message):
    (tmp_path / "c.jsonl").write_text('{"text": "x"}\n', encoding="utf-8")
    code = main(["data", "prepare", "--data", str(tmp_path / "c.jsonl"), "--out", str(tmp_path / "o"), *extra])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()


def test_prepare_corrupt_corpus_exits_2_naming_the_file(tmp_path, capsys):
    (tmp_path / "c.jsonl.xz").write_bytes(b"\xfd7zXZ\x00 broken")
    code = main(["data", "prepare", "--data", str(tmp_path / "c.jsonl.xz"), "--tokenizer", "word",
                 "--tokenizer-corpus", "ptb:valid", "--out", str(tmp_path / "o"), "--quiet"])
    assert code == 2 and "c.jsonl.xz: corrupt" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.jsonl.xz"]


def test_info_on_a_non_prepared_folder_exits_2(tmp_path, capsys):
    assert main(["data", "info", str(tmp_path)]) == 2
    assert "no manifest.json" in capsys.readouterr().err


def test_prepare_over_a_prepared_folder_names_the_overwrite_flag(tmp_path, capsys):
    (tmp_path / "c.txt").write_text("a b\n", encoding="utf-8")
    argv = ["data", "prepare", "--data", str(tmp_path / "c.txt"), "--tokenizer", "word", "--out", str(tmp_path / "o"),
            "--workers", "1", "--quiet"]
    assert main(argv) == 0
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "already holds a prepared corpus; pass --overwrite to replace it" in err and "overwrite=True" not in err
    assert main([*argv, "--overwrite"]) == 0


def test_prepare_without_gpt2_ranks_reports_a_missing_data_path_first(tmp_path, missing_data_then_no_ranks):
    missing, err = missing_data_then_no_ranks(["data", "prepare", "--tokenizer", "gpt2", "--out", str(tmp_path / "o"),
                                               "--quiet"])
    assert f"--data: data spec '{tmp_path / 'missing.txt'}': no such file or folder" in missing
    assert "ranks" not in missing
    assert "GPT-2 ranks file not found: pass --ranks FILE" in err and "ranks_path" not in err
    assert err.count("EMAPROBE_DATA") == 2 and err.count("\n") == 1  # named once, and once as not set


def test_info_refuses_a_negative_show(tmp_path, capsys):
    (tmp_path / "c.txt").write_text("a b\n", encoding="utf-8")
    assert main(["data", "prepare", "--data", str(tmp_path / "c.txt"), "--tokenizer", "word",
                 "--out", str(tmp_path / "o"), "--workers", "1", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["data", "info", str(tmp_path / "o"), "--show", "-3"]) == 2
    err = capsys.readouterr().err
    assert err == "emaprobe data info: error: --show must be >= 0 (the number of tokens to decode), got -3\n"


def test_prepare_help_shows_the_shard_size_default(capsys):
    with pytest.raises(SystemExit):
        main(["data", "prepare", "--help"])
    assert "ids per shard file (default: 100,000,000)" in " ".join(capsys.readouterr().out.split())


def _prepare_argv(data, out, *extra) -> list[str]:
    return ["data", "prepare", "--data", str(data), "--tokenizer", "word", "--out", str(out), "--workers", "1",
            "--quiet", *extra]


def test_prepare_refuses_a_prepared_folder_as_raw_text(tmp_path, capsys):
    (tmp_path / "c.txt").write_text("a b\n", encoding="utf-8")
    assert main(_prepare_argv(tmp_path / "c.txt", tmp_path / "o")) == 0
    capsys.readouterr()
    assert main(_prepare_argv(tmp_path / "o", tmp_path / "o2")) == 2
    err = capsys.readouterr().err
    assert f"--data: {tmp_path / 'o'} is already a prepared corpus (manifest.json), not raw text" in err
    assert main(_prepare_argv(tmp_path / "c.txt", tmp_path / "o2", "--tokenizer-corpus", str(tmp_path / "o"))) == 2
    assert "--tokenizer-corpus: " in capsys.readouterr().err and not (tmp_path / "o2").exists()


def test_prepare_through_a_symlink_replaces_its_target(tmp_path, capsys):
    (tmp_path / "old.txt").write_text("old words\n", encoding="utf-8")
    (tmp_path / "new.txt").write_text("new text here\n", encoding="utf-8")
    assert main(_prepare_argv(tmp_path / "old.txt", tmp_path / "target")) == 0
    (tmp_path / "link").symlink_to("target")
    assert main(_prepare_argv(tmp_path / "new.txt", tmp_path / "link", "--overwrite")) == 0
    assert (tmp_path / "link").is_symlink() and (tmp_path / "link").resolve() == (tmp_path / "target").resolve()
    assert TokenData(tmp_path / "target").decode() == "new text here\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "new.txt", "old.txt", "target"]  # no debris


@pytest.mark.parametrize("prepared", [False, True])
def test_prepare_out_dot_fails_before_tokenizing(tmp_path, capsys, monkeypatch, prepared):
    here = tmp_path / "here"
    (tmp_path / "c.txt").write_text("a b\n", encoding="utf-8")
    if prepared:
        assert main(_prepare_argv(tmp_path / "c.txt", here)) == 0
    else:
        here.mkdir()
    before = sorted(p.name for p in here.iterdir())
    monkeypatch.chdir(here)

    def no_tokenizer(*args, **kwargs):
        raise AssertionError("the tokenizer was built before --out was checked")

    monkeypatch.setattr("emaprobe.data.resolve_tokenizer", no_tokenizer)
    capsys.readouterr()
    assert main(_prepare_argv(tmp_path / "c.txt", ".", "--overwrite")) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"emaprobe data prepare: error: --out: {here}: is the working folder")
    assert err.count("\n") == 1
    assert sorted(p.name for p in here.iterdir()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.txt", "here"]


def test_prepare_api_checks_out_before_building_the_tokenizer(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    from emaprobe.data import prepare

    # an unknown tokenizer name would fail first if the target were checked after it
    with pytest.raises(ValueError, match="is the working folder or holds it"):
        prepare("ptb:valid", "no-such-tokenizer", ".")


def test_prepare_under_a_file_exits_2_naming_it(tmp_path, capsys):
    (tmp_path / "c.txt").write_text("a b\n", encoding="utf-8")
    assert main(_prepare_argv(tmp_path / "c.txt", tmp_path / "c.txt" / "o")) == 2
    assert f"{tmp_path / 'c.txt'} is a file, not a folder" in capsys.readouterr().err


def test_an_os_error_exits_2_with_one_line_naming_the_path(tmp_path, capsys, monkeypatch):
    import errno

    def disk_full(folder, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(folder / "tokens_00000.bin"))

    monkeypatch.setattr(PREPARE, "_prepare_into", disk_full)
    (tmp_path / "c.txt").write_text("a b\n", encoding="utf-8")
    assert main(_prepare_argv(tmp_path / "c.txt", tmp_path / "o")) == 2
    err = capsys.readouterr().err
    assert err.startswith("emaprobe data prepare: error: ")
    assert err.endswith("tokens_00000.bin: No space left on device\n") and err.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.txt"]  # the staging folder went too


def test_a_dead_worker_exits_2_with_one_line_and_no_debris(tmp_path, capsys, monkeypatch):
    from concurrent.futures.process import BrokenProcessPool

    class DyingPool:  # what ProcessPoolExecutor does once a worker was killed
        def __init__(self, *args, **kwargs):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def submit(self, *args, **kwargs):
            raise BrokenProcessPool("A child process terminated abruptly")

        def shutdown(self, wait=True, cancel_futures=False):
            pass

    monkeypatch.setattr(PREPARE, "ProcessPoolExecutor", DyingPool)
    (tmp_path / "c.txt").write_text("a b\n", encoding="utf-8")
    assert main(["data", "prepare", "--data", str(tmp_path / "c.txt"), "--tokenizer", "word", "--out",
                 str(tmp_path / "o"), "--workers", "2", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "a tokenizer worker process died" in err and err.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.txt"]


def test_info_on_a_hand_edited_manifest_names_the_field(tmp_path, capsys):
    (tmp_path / "c.txt").write_text("a b\n", encoding="utf-8")
    assert main(_prepare_argv(tmp_path / "c.txt", tmp_path / "o")) == 0
    path = tmp_path / "o" / "manifest.json"
    manifest = json.loads(path.read_text())
    del manifest["spec"]
    path.write_text(json.dumps(manifest))
    capsys.readouterr()
    assert main(["data", "info", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err == f"emaprobe data info: error: {path}: manifest has no 'spec' field\n"


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_sigterm_becomes_an_interrupt_inside_a_command_only():
    from emaprobe.cli import sigterm_as_interrupt

    seen = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: seen.append(signum))
    try:
        with pytest.raises(KeyboardInterrupt, match="SIGTERM"), sigterm_as_interrupt():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler interrupts this at once
        os.kill(os.getpid(), signal.SIGTERM)  # outside: the caller's handler is back
        time.sleep(0.01)
        assert seen == [signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_overwrite_never_replaces_a_folder_that_only_has_a_file_named_manifest(tmp_path, capsys):
    # any folder holding a file called manifest.json was taken for a corpus, and --overwrite deleted it whole
    (tmp_path / "c.txt").write_text("a b\n", encoding="utf-8")
    app = tmp_path / "webapp"
    (app / "src").mkdir(parents=True)
    (app / "manifest.json").write_text('{"name": "my web app"}', encoding="utf-8")
    (app / "NOTES.md").write_text("mine", encoding="utf-8")
    argv = ["data", "prepare", "--data", str(tmp_path / "c.txt"), "--tokenizer", "word", "--out", str(app),
            "--workers", "1", "--quiet"]
    for extra in ([], ["--overwrite"]):
        assert main([*argv, *extra]) == 2
        err = capsys.readouterr().err
        assert "is not an emaprobe token manifest" in err and "already holds a prepared corpus" not in err
    assert sorted(p.name for p in app.iterdir()) == ["NOTES.md", "manifest.json", "src"]


def test_overwrite_keeps_a_corpus_folder_that_holds_other_files(tmp_path, capsys):
    # a real corpus with a model trained into it (or the user's notes): --overwrite would have deleted those too
    (tmp_path / "c.txt").write_text("a b\n", encoding="utf-8")
    argv = ["data", "prepare", "--data", str(tmp_path / "c.txt"), "--tokenizer", "word", "--out",
            str(tmp_path / "o"), "--workers", "1", "--quiet"]
    assert main(argv) == 0
    (tmp_path / "o" / "model").mkdir()
    (tmp_path / "o" / "NOTES.md").write_text("mine", encoding="utf-8")
    capsys.readouterr()
    assert main([*argv, "--overwrite"]) == 2
    assert "holds a prepared corpus and other files too (NOTES.md, model)" in capsys.readouterr().err
    assert (tmp_path / "o" / "NOTES.md").read_text(encoding="utf-8") == "mine"
    (tmp_path / "o" / "NOTES.md").unlink()
    (tmp_path / "o" / "model").rmdir()
    assert main([*argv, "--overwrite"]) == 0
