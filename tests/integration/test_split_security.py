"""``edgecloud split serve`` with TLS and per-device tokens, as a real process on 127.0.0.1,
and split clients (the library and ``split run``) with the right and the wrong credentials."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from edgecloud.cli.app import app
from edgecloud.errors import AuthError, ConfigError, TransportError
from edgecloud.split import SplitClient, SplitModel
from edgecloud.transport import hash_token
from tests.pki import Pki, make_pki

pytestmark = pytest.mark.model

EDGECLOUD = [sys.executable, "-c", "from edgecloud.cli import main; main()"]
CNN = Path(__file__).resolve().parents[2] / "examples" / "split" / "models" / "digits_cnn.onnx"
TOKEN = "robot-1-token-0123456789"


@dataclass(frozen=True)
class Service:
    address: str
    pki: Pki
    config: Path


def _toml(value: object) -> str:
    return json.dumps(str(value))  # a TOML basic string is a JSON string


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    where = tmp_path_factory.mktemp("split-tls")
    pki = make_pki(where)
    config = where / "split.toml"
    config.write_text(
        f"[split.models]\ndigits_cnn = {_toml(CNN)}\n\n"
        "[split.serve]\nport = 0\n\n"
        f"[split.serve.tls]\ncert = {_toml(pki.cert)}\nkey = {_toml(pki.key)}\n\n"
        f"[split.serve.auth.tokens]\nrobot-1 = {_toml(hash_token(TOKEN))}\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "EDGECLOUD_CONFIG"}
    with (where / "stderr.txt").open("w") as stderr:
        proc = subprocess.Popen([*EDGECLOUD, "split", "serve", "--config", str(config)],
                                stdout=subprocess.PIPE, stderr=stderr, text=True, env=env)  # fmt: skip
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        found = re.search(r"listening on (127\.0\.0\.1:\d+)", line)
        assert found, (line, (where / "stderr.txt").read_text())
        yield Service(found.group(1), pki, config)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, (where / "stderr.txt").read_text()  # drained, then exited
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
        proc.stdout.close()  # type: ignore[union-attr]


@pytest.fixture(scope="module")
def frame() -> np.ndarray:
    return np.random.default_rng(0).random((1, 1, 64, 64)).astype(np.float32)


def test_the_right_token_and_ca_run_the_tail(service: Service, frame: np.ndarray) -> None:
    import onnxruntime as ort

    want = ort.InferenceSession(str(CNN)).run(["logits"], {"input": frame})[0]
    client = SplitClient(service.address, tls=True, root_certificates=service.pki.ca, token=TOKEN)
    with SplitModel(CNN, client) as model:
        out = model.run({"input": frame}, cut=3)
        assert model.last is not None and not model.last.fallback
    np.testing.assert_allclose(out["logits"], want, atol=0.05)


def test_no_token_a_wrong_token_and_plain_text_fail_clearly(service: Service) -> None:
    ca = service.pki.ca
    with (
        SplitClient(service.address, tls=True, root_certificates=ca) as anonymous,
        pytest.raises(AuthError, match="UNAUTHENTICATED"),
    ):
        anonymous.ping()
    with SplitClient(service.address, tls=True, root_certificates=ca, token="wrong") as wrong:
        with pytest.raises(AuthError, match="UNAUTHENTICATED") as info:
            wrong.profile_tails("digits_cnn")
        assert "robot" not in str(info.value)  # nothing about which devices exist
    with SplitClient(service.address, token=TOKEN, timeout_s=5) as plain:
        with pytest.raises(TransportError, match=r"UNAVAILABLE.*plain text") as info:
            plain.ping()
        assert type(info.value) is TransportError
    with (
        SplitClient(service.address, tls=True, token=TOKEN, timeout_s=5) as untrusted,
        pytest.raises(TransportError, match="UNAVAILABLE"),
    ):
        untrusted.ping()  # the system roots do not know the test CA
    with pytest.raises(ConfigError, match="loopback"):
        SplitClient("192.0.2.1:50061", token=TOKEN)  # plain text off loopback: never sent


def test_split_run_takes_the_ca_and_the_token(service: Service, tmp_path: Path) -> None:
    np.save(tmp_path / "frame.npy", np.zeros((1, 1, 64, 64), np.float32))
    base = ["split", "run", str(CNN), "--input", str(tmp_path / "frame.npy"),
            "--cloud", service.address, "--config", str(service.config)]  # fmt: skip
    runner = CliRunner()
    ok = runner.invoke(app, [*base, "--ca", str(service.pki.ca)], env={"EDGECLOUD_TOKEN": TOKEN})
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.stdout)["fallback"] is False
    no_token = runner.invoke(app, [*base, "--ca", str(service.pki.ca)])
    assert no_token.exit_code == 1 and "UNAUTHENTICATED" in no_token.output
    plain = runner.invoke(app, [*base, "--insecure", "--token", TOKEN])
    assert plain.exit_code == 1 and "plain text" in plain.output


def test_plain_text_is_refused_off_loopback_and_unless_asked(tmp_path: Path) -> None:
    empty = tmp_path / "empty.toml"
    empty.write_text("")
    model = ["--model", f"digits_cnn={CNN}", "--config", str(empty)]
    runner = CliRunner()
    unasked = runner.invoke(app, ["split", "serve", *model])
    assert unasked.exit_code == 2 and "split.serve.tls.cert" in unasked.output
    exposed = runner.invoke(app, ["split", "serve", *model, "--insecure", "--host", "0.0.0.0"])
    assert exposed.exit_code == 2 and "loopback" in exposed.output
    half = runner.invoke(app, ["split", "serve", *model, "--tls-cert", str(tmp_path / "c.pem")])
    assert half.exit_code == 2 and "together" in half.output
    np.save(tmp_path / "frame.npy", np.zeros((1, 1, 64, 64), np.float32))
    client = runner.invoke(app, ["split", "run", str(CNN), "--input", str(tmp_path / "frame.npy"),
                                 "--cloud", "192.0.2.1:50061", "--insecure"])  # fmt: skip
    assert client.exit_code == 2 and "loopback" in client.output
