"""Training loops. ``train_lm`` trains any next-token model on a token stream.

See ``lm.py`` for the loop and the out-folder layout, ``config.py`` for the knobs,
``evaluate.py`` for loss / perplexity / bits per byte.
"""

from emaprobe.train.checkpoint import CHECKPOINT_NAME, load_checkpoint, save_checkpoint
from emaprobe.train.config import OptimConfig, TrainConfig
from emaprobe.train.dist import DistInfo, env_dist_info
from emaprobe.train.evaluate import evaluate_lm, lm_loss
from emaprobe.train.lm import (
    METRICS_NAME,
    RUN_NAME,
    LMData,
    TrainingDiverged,
    accumulate_gradients,
    train_lm,
    wrap_model,
)
from emaprobe.train.sampler import BatchSampler
from emaprobe.train.schedule import lr_at

__all__ = [
    "CHECKPOINT_NAME",
    "METRICS_NAME",
    "RUN_NAME",
    "BatchSampler",
    "DistInfo",
    "LMData",
    "OptimConfig",
    "TrainConfig",
    "TrainingDiverged",
    "accumulate_gradients",
    "env_dist_info",
    "evaluate_lm",
    "load_checkpoint",
    "lm_loss",
    "lr_at",
    "save_checkpoint",
    "train_lm",
    "wrap_model",
]
