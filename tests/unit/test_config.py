from pathlib import Path

import pytest

from edgecloud.config import Settings
from edgecloud.errors import ConfigError


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for key in list(os.environ):
        if key.startswith("EDGECLOUD_"):
            monkeypatch.delenv(key)


def test_defaults_are_valid() -> None:
    s = Settings.load()
    assert s.device.model.path is None
    assert s.device.model.n_ctx == 2048
    assert s.device.generation.temperature == 0.0


def test_toml_file_and_env_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "device.toml"
    cfg.write_text(
        '[device.model]\nn_ctx = 4096\nn_threads = 3\n[device.generation]\nmax_tokens = 77\nstop = ["\\n"]\n'
    )
    s = Settings.load(cfg)
    assert (s.device.model.n_ctx, s.device.model.n_threads) == (4096, 3)
    assert s.device.generation.max_tokens == 77
    assert s.device.generation.stop == ("\n",)
    monkeypatch.setenv("EDGECLOUD_DEVICE__MODEL__N_CTX", "1024")
    assert Settings.load(cfg).device.model.n_ctx == 1024  # environment beats the file
    monkeypatch.setenv("EDGECLOUD_CONFIG", str(cfg))
    assert Settings.load().device.generation.max_tokens == 77


def test_unknown_key_names_the_key(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[device.model]\nn_ctxx = 4096\n")
    with pytest.raises(ConfigError, match=r"device\.model\.n_ctxx"):
        Settings.load(cfg)


def test_out_of_range_value_names_the_field(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[device.generation]\nmax_tokens = -5\n")
    with pytest.raises(
        ConfigError, match=r"device\.generation\.max_tokens.*greater than or equal to 1"
    ):
        Settings.load(cfg)


def test_bad_env_value_names_the_field(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGECLOUD_DEVICE__MODEL__N_THREADS", "0")
    with pytest.raises(ConfigError, match=r"device\.model\.n_threads"):
        Settings.load()


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        Settings.load(tmp_path / "nope.toml")
    cfg = tmp_path / "broken.toml"
    cfg.write_text("[device.model\nn_ctx = ")
    with pytest.raises(ConfigError, match="cannot read config"):
        Settings.load(cfg)


def test_sha256_must_be_hex(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text('[device.model]\nsha256 = "abc"\n')
    with pytest.raises(ConfigError, match=r"device\.model\.sha256"):
        Settings.load(cfg)


def test_the_shipped_deployable_configs_are_valid() -> None:
    root = Path(__file__).resolve().parents[2]
    device = Settings.load(root / "device" / "device.toml")
    assert device.device.log.replay_rate > 0 and not device.device.adapters.enabled
    cloud = Settings.load(root / "cloud" / "cloud.example.toml")
    assert cloud.cloud.train.require_grounded and cloud.cloud.train.rank == 16


def test_a_bad_environment_value_is_blamed_on_its_variable_not_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = tmp_path / "device.toml"
    cfg.write_text("[device.model]\nn_threads = 2\n")
    monkeypatch.setenv("EDGECLOUD_DEVICE__MODEL__N_CTX", "-5")
    with pytest.raises(ConfigError) as info:
        Settings.load(cfg)
    assert "from EDGECLOUD_DEVICE__MODEL__N_CTX" in str(info.value)
    assert str(cfg) not in str(info.value)
    cfg.write_text("[device.model]\nn_threads = 0\n")  # now the file is wrong as well
    with pytest.raises(ConfigError) as info:
        Settings.load(cfg)
    assert "from EDGECLOUD_DEVICE__MODEL__N_CTX and in " + str(cfg) in str(info.value)


def test_the_shipped_device_settings_let_a_short_unsure_answer_hand_off() -> None:
    """Most answers to short questions are a few tokens: a router that waits for more
    (min_tokens above the answer's length) can never hand them off."""
    from edgecloud.router import ConfidenceMonitor, WindowThresholds

    r = Settings.load(Path(__file__).resolve().parents[2] / "device" / "device.toml").device.router
    monitor = ConfidenceMonitor(WindowThresholds(
        window=r.window, min_mean_logprob=r.min_mean_logprob, min_tokens=r.min_tokens,
    ))  # fmt: skip
    decisions = [monitor.update(logprob=-4.0, entropy=5.0) for _ in range(2)]  # "Kyoto." unsure
    assert any(d is not None and d.route == "cloud" for d in decisions)


def test_log_format_and_the_metrics_port_come_from_the_file_or_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = Settings.load()
    assert (s.log_format, s.cloud.metrics.enabled, s.cloud.metrics.host) == (
        "text", False, "127.0.0.1",
    )  # fmt: skip
    cfg = tmp_path / "cloud.toml"
    cfg.write_text('log_format = "json"\n[cloud.metrics]\nenabled = true\nport = 0\n')
    s = Settings.load(cfg)
    assert (s.log_format, s.cloud.metrics.enabled, s.cloud.metrics.port) == ("json", True, 0)
    monkeypatch.setenv("EDGECLOUD_CLOUD__METRICS__PORT", "9100")
    assert Settings.load(cfg).cloud.metrics.port == 9100
    monkeypatch.setenv("EDGECLOUD_LOG_FORMAT", "xml")
    with pytest.raises(ConfigError, match="log_format"):
        Settings.load()
