"""Training loops. ``train_lm`` trains any next-token model on a token stream.

``lm.py`` holds the loop and the run-folder layout, ``config.py`` the knobs,
``evaluate.py`` loss / perplexity / bits per byte, ``run.py`` whole runs by config
name and data spec (what ``emaprobe lm`` calls), ``corpus.py`` data spec -> streams.
"""

from emaprobe.train.checkpoint import CHECKPOINT_NAME, load_checkpoint, save_checkpoint
from emaprobe.train.config import OptimConfig, TrainConfig
from emaprobe.train.dist import DistInfo, env_dist_info
from emaprobe.train.evaluate import evaluate_lm, lm_loss
from emaprobe.train.lm import (
    METRICS_NAME,
    RUN_NAME,
    LMData,
    NextTokenLoss,
    TrainingDiverged,
    TrainingInterrupted,
    accumulate_gradients,
    train_lm,
    wrap_model,
)
from emaprobe.train.run import evaluate_run, load_run, run_lm_training, stream_generate
from emaprobe.train.sampler import BatchSampler
from emaprobe.train.schedule import lr_at

__all__ = [
    "CHECKPOINT_NAME",
    "METRICS_NAME",
    "RUN_NAME",
    "BatchSampler",
    "DistInfo",
    "LMData",
    "NextTokenLoss",
    "OptimConfig",
    "TrainConfig",
    "TrainingDiverged",
    "TrainingInterrupted",
    "accumulate_gradients",
    "evaluate_run",
    "load_run",
    "run_lm_training",
    "stream_generate",
    "env_dist_info",
    "evaluate_lm",
    "load_checkpoint",
    "lm_loss",
    "lr_at",
    "save_checkpoint",
    "train_lm",
    "wrap_model",
]
