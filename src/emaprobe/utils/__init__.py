"""Small helpers every layer may use: atomic files, run records, config overrides, paths, progress bars."""

from emaprobe.utils.config import apply_overrides, config_to_dict
from emaprobe.utils.io import atomic_write, atomic_write_bytes, atomic_write_json, atomic_write_text, read_json, run_record
from emaprobe.utils.paths import data_root, find_data
from emaprobe.utils.progress import progress_disabled, progress_lines

__all__ = [
    "apply_overrides",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "config_to_dict",
    "data_root",
    "find_data",
    "progress_disabled",
    "progress_lines",
    "read_json",
    "run_record",
]
