"""The commands follow the one plain-text rule: TLS unless --insecure, and --insecure only to
a loopback target (no more silent plain text for ``localhost:`` targets)."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from typer.testing import CliRunner

from edgecloud.cli.app import app

CNN = Path(__file__).resolve().parents[3] / "examples" / "split" / "models" / "digits_cnn.onnx"


@pytest.fixture(scope="module")
def plain_port() -> Iterator[int]:
    """A plain-text gRPC server with no services: any call that reaches it is UNIMPLEMENTED."""
    server = grpc.server(ThreadPoolExecutor(1))
    port = server.add_insecure_port("localhost:0")  # 127.0.0.1 and ::1 alike
    server.start()
    yield port
    server.stop(0)


def _commands(target: str, frame: Path) -> dict[str, list[str]]:
    return {
        "cloud info": ["cloud", "info", "--target", target],
        "cloud generate": ["cloud", "generate", "hi", "--target", target, "--timeout", "5"],
        "split profile": ["split", "profile", str(CNN), "--cloud", target, "--repeats", "1"],
        "split run": ["split", "run", str(CNN), "--input", str(frame), "--cloud", target],
    }


@pytest.fixture(scope="module")
def frame(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import numpy as np

    path = tmp_path_factory.mktemp("frame") / "frame.npy"
    np.save(path, np.zeros((1, 1, 64, 64), np.float32))
    return path


def test_insecure_off_loopback_is_refused_before_anything_is_sent(frame: Path) -> None:
    for name, args in _commands("192.0.2.1:50051", frame).items():
        result = CliRunner().invoke(app, [*args, "--insecure"])
        assert result.exit_code == 2, (name, result.output)
        assert "only with a loopback address" in result.output, name


def test_a_ca_with_insecure_is_a_contradiction(frame: Path, tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("not used")
    for name, args in _commands("127.0.0.1:50051", frame).items():
        result = CliRunner().invoke(app, [*args, "--insecure", "--ca", str(ca)])
        assert result.exit_code == 2 and "TLS is off" in result.output, (name, result.output)


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_loopback_targets_get_tls_unless_insecure(plain_port: int, frame: Path, host: str) -> None:
    commands = _commands(f"{host}:{plain_port}", frame)
    for name in ("cloud info", "split profile"):
        tls = CliRunner().invoke(app, commands[name])
        assert tls.exit_code == 1 and "handshake" in tls.output.lower(), (name, tls.output)
        plain = CliRunner().invoke(app, [*commands[name], "--insecure"])
        assert plain.exit_code == 1 and "UNIMPLEMENTED" in plain.output, (name, plain.output)
