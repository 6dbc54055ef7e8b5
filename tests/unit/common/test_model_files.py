import hashlib
from pathlib import Path

import pytest

from edgecloud.common.models import check_model_file
from edgecloud.errors import ModelIntegrityError, ModelLoadError, ModelNotFoundError


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="not found"):
        check_model_file(tmp_path / "nope.gguf")


def test_directory_is_not_a_model(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="not a regular file"):
        check_model_file(tmp_path)


def test_not_a_gguf(tmp_path: Path) -> None:
    p = tmp_path / "model.gguf"
    p.write_bytes(b"PK\x03\x04 this is a zip")
    with pytest.raises(ModelIntegrityError, match="not a GGUF"):
        check_model_file(p)


def test_sha256_mismatch_and_match(tmp_path: Path) -> None:
    p = tmp_path / "model.gguf"
    p.write_bytes(b"GGUF" + b"\0" * 100)
    good = hashlib.sha256(p.read_bytes()).hexdigest()
    assert check_model_file(p, sha256=good) == p
    with pytest.raises(ModelIntegrityError, match="sha256"):
        check_model_file(p, sha256="0" * 64)
