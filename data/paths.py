"""Where the data pipeline keeps its files.

Relative paths in the data configs are resolved against the project root (the folder that holds
`data/`), never against the current directory or Hydra's run directory, so a run launched from
anywhere finds the same shards.
"""

from __future__ import annotations

from pathlib import Path

PROJECT_ROOT: Path = Path(__file__).resolve().parent.parent
CACHE_DIR: Path = PROJECT_ROOT / "data" / "cache"


def resolve_path(path: str | Path) -> Path:
    """Return `path` made absolute against the project root (absolute paths are kept as given)."""
    if not isinstance(path, (str, Path)) or str(path) == "":
        raise TypeError(f"path must be a non-empty str or Path, got {path!r}")
    p = Path(path).expanduser()
    return p if p.is_absolute() else PROJECT_ROOT / p
