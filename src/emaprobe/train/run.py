"""Whole LM runs by name: what ``emaprobe lm train|eval|generate|configs`` call.

``run_lm_training`` resolves a named model config plus dotted overrides, the data
spec and the tokenizer, then calls ``train_lm``. Besides what ``train_lm`` writes,
the run folder gets ``tokenizer/`` (``load_tokenizer``) and ``model/``
(``save_pretrained``, refreshed at every checkpoint and brought up to the checkpoint on
resume; its config.json's ``checkpoint_step`` says which), so ``evaluate_run`` and
``stream_generate`` need nothing but the folder.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from emaprobe.data.tokenizers import Tokenizer, WordTokenizer, load_tokenizer
from emaprobe.models import resolve_config
from emaprobe.train.config import TrainConfig
from emaprobe.train.corpus import load_lm_data, open_split
from emaprobe.train.dist import DistInfo, env_dist_info, resolve_device
from emaprobe.train.evaluate import evaluate_lm
from emaprobe.train.lm import RUN_NAME, LMData, autocast_context, check_out_dir, train_lm
from emaprobe.utils import apply_overrides, atomic_write_json, run_record

MODEL_DIR = "model"
TOKENIZER_DIR = "tokenizer"


def build_lm(config: Any, seed: int = 0) -> torch.nn.Module:
    """The model of ``config``, initialised from ``seed`` (same seed, same weights)."""
    from emaprobe.models import build_model

    torch.manual_seed(seed)
    return build_model(config)


def train_config(overrides: dict[str, str] | None = None, base: TrainConfig | None = None) -> TrainConfig:
    return apply_overrides(base or TrainConfig(), dict(overrides or {}), prefix="train.")


def run_lm_training(
    config: str,
    data: str,
    out_dir: str | os.PathLike,
    *,
    model_overrides: dict[str, str] | None = None,
    train_overrides: dict[str, str] | None = None,
    base_train: TrainConfig | None = None,
    val: str | None = None,
    tokenizer: Tokenizer | str | None = None,
    lm_data: tuple[LMData, Tokenizer] | None = None,
    resume: bool = False,
    quiet: bool = False,
    stop_after: int | None = None,
) -> dict[str, Any]:
    """Train named ``config`` on ``data``; returns ``train_lm``'s result plus the resolved configs.

    ``lm_data`` passes streams already loaded (the experiments reuse one PTB load).
    """
    out = Path(out_dir)
    cfg = train_config(train_overrides, base_train)
    resolve_config(config, model_overrides, prefix="model.")  # a bad name or field fails before any data is read
    check_out_dir(out, resume, kept=(MODEL_DIR,))  # and a folder that would lose a run
    streams, tok = lm_data if lm_data is not None else load_lm_data(data, val=val, tokenizer=tokenizer)
    model_cfg = resolve_config(config, model_overrides, vocab_size=tok.vocab_size, prefix="model.")
    block = getattr(model_cfg, "block_size", None)
    if block is not None and cfg.seq_len > block:
        raise ValueError(
            f"train.seq_len={cfg.seq_len} is longer than {config}'s block_size={block}; "
            f"lower --set train.seq_len or raise --set model.block_size"
        )
    model = build_lm(model_cfg, seed=cfg.seed)
    info = env_dist_info()
    if info.is_main:
        _save_tokenizer(tok, out / TOKENIZER_DIR)

    result = train_lm(
        model, streams, cfg, out, resume=resume, model_config=model_cfg, on_checkpoint=export_model, quiet=quiet,
        stop_after=stop_after,
        extra_record={"config_name": config, "tokenizer": tok.name, "vocab_size": tok.vocab_size},
    )
    result.update(config_name=config, model_config=dataclasses.asdict(model_cfg), train_config=dataclasses.asdict(cfg),
                  num_params=model.num_params(), num_params_non_embedding=model.num_params(exclude_embeddings=True),
                  out_dir=str(out))
    return result


def export_model(model: torch.nn.Module, run_dir: Path, step: int) -> None:
    """``run_dir/model/`` from ``model`` at checkpoint ``step``, unless it already holds that step: on resume
    this is how an export that a killed or failed run left behind its checkpoint catches up."""
    folder = run_dir / MODEL_DIR
    if exported_step(folder) == step:
        return
    model.save_pretrained(folder, extra={"checkpoint_step": step})


def exported_step(folder: Path) -> int | None:
    """The checkpoint step ``export_model`` wrote into ``folder``; None where it is missing (no export yet,
    a weights file gone, or a folder from before the step was recorded)."""
    from emaprobe.models.common import CONFIG_FILE, WEIGHTS_FILE

    if not (folder / WEIGHTS_FILE).is_file() or not (folder / CONFIG_FILE).is_file():
        return None
    try:
        meta = json.loads((folder / CONFIG_FILE).read_text())
    except (OSError, ValueError):  # a damaged config.json is rewritten
        return None
    return meta.get("checkpoint_step") if isinstance(meta, dict) else None


def _save_tokenizer(tok: Tokenizer, folder: Path) -> None:
    if folder.is_dir():
        saved = load_tokenizer(folder)
        if saved.fingerprint != tok.fingerprint:
            raise ValueError(f"{folder}: this run folder was made with another tokenizer ({saved!r}); use a new --out")
        return
    tok.save(folder)


def run_folders(ckpt: str | os.PathLike) -> tuple[Path, Path, Path]:
    """(model folder, run folder, tokenizer folder) of a run folder or a bare ``save_pretrained`` folder;
    FileNotFoundError naming what is missing. Cheap: an experiment checks its checkpoints with it before
    any work, not after."""
    root = Path(ckpt)
    if not root.exists():
        raise FileNotFoundError(f"{root} does not exist")
    model_dir = root / MODEL_DIR if (root / MODEL_DIR).is_dir() else root
    run_dir = root if model_dir != root else root.parent
    tok_dir = run_dir / TOKENIZER_DIR
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"{root}: no model here (expected {MODEL_DIR}/config.json, written by `lm train`)")
    if not tok_dir.is_dir():
        raise FileNotFoundError(f"{root}: no {TOKENIZER_DIR}/ folder beside the model")
    return model_dir, run_dir, tok_dir


def load_run(ckpt: str | os.PathLike, device: torch.device | str = "cpu") -> tuple[torch.nn.Module, Tokenizer, dict]:
    """The model, tokenizer and run.json of a run folder (or of a bare ``save_pretrained`` folder)."""
    from emaprobe.models import from_pretrained

    model_dir, run_dir, tok_dir = run_folders(ckpt)
    model = from_pretrained(model_dir).to(device)
    model.eval()
    run = json.loads((run_dir / RUN_NAME).read_text()) if (run_dir / RUN_NAME).is_file() else {}
    return model, load_tokenizer(tok_dir), run


def evaluate_run(
    ckpt: str | os.PathLike,
    data: str,
    *,
    json_path: str | os.PathLike | None = None,
    batch_size: int | None = None,
    seq_len: int | None = None,
    max_batches: int = 0,
    device: str = "auto",
    quiet: bool = False,
) -> dict[str, Any]:
    """Loss, perplexity and bits per byte of a trained run on a whole split; writes JSON.

    ``batch_size`` and ``seq_len`` default (None) to the run's; given, they must be >= 1.
    """
    for name, value in (("batch_size", batch_size), ("seq_len", seq_len)):
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1 (leave it out to use the run's), got {value}")
    if max_batches < 0:
        raise ValueError(f"--max-batches must be >= 0 (0: all), got {max_batches}")
    dev = resolve_device(device, DistInfo())
    model, tok, run = load_run(ckpt, dev)
    spec = "ptb:valid" if data == "ptb" else data
    tokens = open_split(spec, tok)
    trained = run.get("train", {})
    B = batch_size if batch_size is not None else trained.get("batch_size", 16)
    T = seq_len if seq_len is not None else trained.get("seq_len", 128)
    cfg = TrainConfig(device=device, dtype=trained.get("dtype", "auto"))
    metrics = evaluate_lm(
        model, tokens, batch_size=B, seq_len=T, max_batches=max_batches, bytes_per_token=tokens.bytes_per_token,
        device=dev, autocast=autocast_context(cfg, dev), quiet=quiet,
    )
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", spec).strip("_") or "data"
    path = Path(json_path) if json_path else Path(ckpt) / f"eval-{slug}.json"
    result = {"data": spec, **metrics, "batch_size": B, "seq_len": T, "bytes_per_token": tokens.bytes_per_token,
              "ckpt": str(ckpt), "json": str(path)}
    atomic_write_json(path, {**result, "run": run_record(model=run.get("model"), config_name=run.get("config_name"))})
    return result


def check_generate_args(max_new_tokens: int, temperature: float, top_k: int | None) -> None:
    """Named errors for sampling settings: temperature 0 is greedy, a negative or NaN one is a mistake."""
    if max_new_tokens < 0:
        raise ValueError(f"--tokens must be >= 0, got {max_new_tokens}")
    if not math.isfinite(temperature) or temperature < 0:
        raise ValueError(f"--temperature must be a finite number >= 0 (0 is greedy), got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"--top-k must be >= 1 (leave it out to sample from all tokens), got {top_k}")


def _unknown_words(tok: Tokenizer, text: str) -> list[str]:
    """The distinct words of ``text`` that a word-level tokenizer maps to its unknown token, in order
    (none for byte-level tokenizers, which encode anything)."""
    if not isinstance(tok, WordTokenizer):
        return []
    return list(dict.fromkeys(w for w in text.split() if w not in tok.ids))


def _case_hint(tok: WordTokenizer, unknown: list[str]) -> str:
    # PTB's vocabulary is lower case (but for 'N', its number token), so "The Company said" loses two words
    found = [w.lower() for w in unknown if w.lower() in tok.ids]
    cased = sum(w != w.lower() for w in tok.words)
    if not found or cased > 0.01 * len(tok.words):
        return ""
    return f"; this vocabulary is lower case (as PTB's is) and has {', '.join(repr(w) for w in found)}"


def stream_generate(
    ckpt: str | os.PathLike,
    prompt: str,
    *,
    max_new_tokens: int = 50,
    temperature: float = 1.0,
    top_k: int | None = None,
    seed: int = 0,
    device: str = "auto",
    compile: bool = False,
) -> Iterator[str]:
    """Yield the text of each new token as it is sampled (the model's recurrent state carries the past).

    ``compile`` runs each step through the compiled decode step (``LanguageModel.generate``).

    The arguments are checked before anything is yielded, so an error is never printed
    after the prompt. Prompt words a word-level tokenizer does not know are named in one
    warning on stderr, since each becomes its unknown token. A model with a context limit (GPT)
    reads only the prompt's last ``prompt_window`` tokens; a line on stderr says how many were dropped.
    """
    check_generate_args(max_new_tokens, temperature, top_k)
    dev = resolve_device(device, DistInfo())
    model, tok, _ = load_run(ckpt, dev)
    limit = model.context_limit
    if limit is not None and max_new_tokens > limit:
        raise ValueError(f"--tokens {max_new_tokens} does not fit in this model's context of {limit} positions")
    ids = tok.encode(prompt)
    if not ids:
        raise ValueError("the prompt encodes to no tokens; give some text")
    keep = model.prompt_window(max_new_tokens)
    if keep is not None and len(ids) > keep:
        # the whole prompt is still printed; only its last `keep` tokens condition the continuation
        print(f"note: the model reads only the last {keep} of the prompt's {len(ids)} tokens (its first "
              f"{len(ids) - keep} were dropped): its context of {limit} positions must also hold the "
              f"{max_new_tokens} new ones", file=sys.stderr, flush=True)
    unknown = _unknown_words(tok, prompt)
    if unknown:
        print(f"warning: {len(unknown)} prompt word(s) are not in the {tok.name} tokenizer's vocabulary and became "
              f"{tok.unk}: {', '.join(repr(w) for w in unknown)}{_case_hint(tok, unknown)}",
              file=sys.stderr, flush=True)
    idx = torch.tensor([ids], dtype=torch.long, device=dev)  # (1, T)
    gen = torch.Generator(device=dev).manual_seed(seed)
    yield tok.decode(ids)
    text, out = tok.decode(ids), list(ids)
    for t in model.generate(idx, max_new_tokens, temperature=temperature, top_k=top_k, generator=gen,
                            compile=compile):
        out.append(int(t[0]))
        # decoding the whole sequence keeps multi-token characters and word spacing right
        new = tok.decode(out)
        yield new[len(text):] if new.startswith(text) else " " + tok.decode(out[-1:])
        text = new
