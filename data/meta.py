"""meta.json: the description of a prepared shard folder, written last (its presence marks the
folder as complete).

    tokenizer, vocab_size, eot_token   what the model and the loader need
    version, dtype                     the shards' header version and token dtype
    settings                           the data-config keys that decided the contents
    source                             what was read (corpus, files, or dataset)
    splits.<split>.tokens / documents / shards[{file, tokens}]
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

META_NAME = "meta.json"
REQUIRED_KEYS = ("tokenizer", "vocab_size", "eot_token", "version", "dtype", "splits")


def read_meta(shard_dir: str | Path) -> dict[str, Any]:
    """The metadata of the prepared shard folder `shard_dir` (a dict; see the module docstring).

    Raises FileNotFoundError when the folder holds no finished preparation, ValueError when its
    meta.json is unreadable or incomplete.
    """
    path = Path(shard_dir) / META_NAME
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: {shard_dir} holds no finished preparation "
                                f"(run `python -m data.prepare ...`; an interrupted run resumes)")
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err
    missing = [key for key in REQUIRED_KEYS if key not in meta]
    if missing:
        raise ValueError(f"{path}: missing keys {missing}")
    return meta
