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
