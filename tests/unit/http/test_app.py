import subprocess
import sys


def test_the_http_package_loads_fastapi_and_uvicorn_only_when_an_app_is_built() -> None:
    code = (
        "import sys, edgecloud.http as h;"
        "print(','.join(m for m in ('fastapi', 'uvicorn', 'starlette') if m in sys.modules));"
        "h.create_app; print('fastapi' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.splitlines() == ["", "True"]


def test_short_api_keys_are_refused_without_echoing_them() -> None:
    import pytest

    from edgecloud.config import Settings
    from edgecloud.errors import ConfigError
    from edgecloud.http import OpenAIServer

    with pytest.raises(ConfigError, match="api_keys") as info:
        OpenAIServer(Settings.load(device={"http": {"api_keys": ["a-long-enough-key", "tiny"]}}))
    assert "tiny" not in str(info.value) and "a-long-enough-key" not in str(info.value)
