"""The deployment files under cloud/ name only commands, options, variables and settings
that exist: every ``edgecloud`` invocation is checked against the typer app, every
``EDGECLOUD_*`` variable and TOML key against the Settings model (a renamed option or
setting fails here, not in someone's cluster)."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import tomllib
import typer
from pydantic import BaseModel

from edgecloud.cli.app import app
from edgecloud.config import Settings

CLOUD = Path(__file__).parents[2] / "cloud"
CONTAINERFILE = CLOUD / "Containerfile"
K8S = CLOUD / "k8s" / "deployment.yaml"
RAYSERVICE = CLOUD / "k8s" / "rayservice.yaml"
UNIT = CLOUD / "edgecloud-cloud.service"
_ENV = re.compile(r"\bEDGECLOUD_[A-Z0-9_]+\b")
_NOT_SETTINGS = {"EDGECLOUD_CONFIG"}  # the TOML file's path (Settings.load), not a field


def check_command(argv: list[str]) -> None:
    """``argv`` (``edgecloud ...``) names an existing subcommand and only its options."""
    assert Path(argv[0]).name == "edgecloud", argv
    # typer's own (vendored) click: groups are told apart by their get_command
    command: Any = typer.main.get_command(app)
    args = argv[1:]
    while hasattr(command, "get_command") and args and not args[0].startswith("-"):
        sub = command.get_command(command.context_class(command), args[0])
        assert sub is not None, f"no subcommand {args[0]!r} in {argv}"
        command, args = sub, args[1:]
    assert not hasattr(command, "get_command"), f"{argv} names a group, not a command"
    known = {opt for p in command.params for opt in (*p.opts, *p.secondary_opts)}
    for arg in args:
        if arg.startswith("-"):
            assert arg.split("=", 1)[0] in known, f"{arg} is not an option of {argv[:3]}"


def setting_path(model: type[BaseModel], path: list[str], where: str) -> None:
    """``path`` (lower-case field names) leads through nested sections of ``model``."""
    head, *rest = path
    assert head in model.model_fields, f"{where}: no setting {head!r} in {model.__name__}"
    annotation: Any = model.model_fields[head].annotation
    if rest and isinstance(annotation, type) and issubclass(annotation, BaseModel):
        setting_path(annotation, rest, where)
    else:
        # Beyond a leaf only a mapping field (adapters, tokens) has keys of its own.
        assert not rest or "dict" in str(annotation), f"{where}: {head!r} has no keys {rest}"


def check_env(name: str) -> None:
    if name in _NOT_SETTINGS:
        return
    path = name.removeprefix("EDGECLOUD_").lower().split("__")
    setting_path(Settings, path, name)


def check_toml(table: dict[str, Any], model: type[BaseModel], where: str) -> None:
    for key, value in table.items():
        setting_path(model, [key], where)
        annotation: Any = model.model_fields[key].annotation
        if (
            isinstance(value, dict)
            and isinstance(annotation, type)
            and issubclass(annotation, BaseModel)
        ):
            check_toml(value, annotation, f"{where}.{key}")


def test_containerfile_runs_cloud_serve_with_known_settings() -> None:
    text = CONTAINERFILE.read_text()
    [entry] = re.findall(r"^ENTRYPOINT\s+(\[.*\])\s*$", text, re.MULTILINE)
    argv = json.loads(entry)
    assert argv[:3] == ["edgecloud", "cloud", "serve"]
    check_command(argv)
    names = set(_ENV.findall(text))
    assert {"EDGECLOUD_CONFIG", "EDGECLOUD_CLOUD__HOST"} <= names
    for name in names:
        check_env(name)
    # The image installs the package with the cloud extra, and torch at the extra's pin.
    assert re.search(r"pip install '/src\[cloud[,\]]", text)
    pyproject = (CLOUD.parent / "pyproject.toml").read_text()
    [pin] = re.findall(r'"(torch==[0-9.]+)"', pyproject)
    assert pin in text and "download.pytorch.org/whl/cpu" in text


def k8s_documents(path: Path = K8S) -> list[dict[str, Any]]:
    yaml = pytest.importorskip("yaml", reason="PyYAML parses the manifest")
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def test_k8s_manifest_uses_only_known_commands_variables_and_settings() -> None:
    docs = {d["kind"]: d for d in k8s_documents()}
    assert set(docs) == {"ConfigMap", "Deployment", "Service"}
    pod = docs["Deployment"]["spec"]["template"]["spec"]
    [container] = pod["containers"]
    check_command([*container["command"], *container["args"]])
    for env in container["env"]:
        check_env(env["name"])
    for name in _ENV.findall(K8S.read_text()):  # commented-out ones too
        check_env(name)
    # The ConfigMap's TOML is valid settings, and the service's ports match its own.
    toml = tomllib.loads(docs["ConfigMap"]["data"]["cloud.toml"])
    check_toml(toml, Settings, "cloud.toml")
    cloud = Settings.model_fields["cloud"].annotation
    assert cloud is not None
    config = cloud.model_validate(toml["cloud"])
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc": config.port, "metrics": config.metrics.port}
    assert config.tls.cert is not None and not config.insecure  # no plain text off loopback
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert str(config.tls.cert).startswith(mounts["tls"])
    grace = pod["terminationGracePeriodSeconds"]
    assert grace > config.shutdown_grace_s  # the drain ends before the kubelet's SIGKILL
    selector = docs["Service"]["spec"]["selector"]
    assert selector.items() <= docs["Deployment"]["spec"]["template"]["metadata"]["labels"].items()


def test_rayservice_uses_only_known_commands_variables_settings_and_app() -> None:
    import importlib

    import yaml

    docs = {d["kind"]: d for d in k8s_documents(RAYSERVICE)}
    assert set(docs) == {"ConfigMap", "RayService", "Service"}
    toml = tomllib.loads(docs["ConfigMap"]["data"]["cloud.toml"])
    check_toml(toml, Settings, "cloud.toml")
    cloud = Settings.model_fields["cloud"].annotation
    assert cloud is not None
    config = cloud.model_validate(toml["cloud"])
    # The front attaches to the application RayService declares, over TLS.
    assert config.backend == "ray" and config.ray.address == "auto" and not config.ray.deploy
    assert config.tls.cert is not None and not config.insecure
    for name in _ENV.findall(RAYSERVICE.read_text()):
        check_env(name)

    spec = docs["RayService"]["spec"]
    head = spec["rayClusterConfig"]["headGroupSpec"]["template"]
    ray_head, front = head["spec"]["containers"]  # KubeRay runs Ray in the first one
    assert "command" not in ray_head
    check_command([*front["command"], *front["args"]])
    assert front["command"][:3] == ["edgecloud", "cloud", "serve"]
    config_path = front["args"][front["args"].index("--config") + 1]
    mounts = {m["name"]: m["mountPath"] for m in front["volumeMounts"]}
    assert mounts["config"] == config_path and str(config.tls.cert).startswith(mounts["tls"])
    assert mounts["ray-tmp"] == "/tmp/ray"  # where ray.init(address="auto") looks
    ports = {p["name"]: p["containerPort"] for p in front["ports"]}
    assert ports == {"grpc": config.port, "metrics": config.metrics.port}
    assert head["spec"]["terminationGracePeriodSeconds"] > config.shutdown_grace_s

    # serveConfigV2 names a real application builder, the same TOML and app name.
    serve_config = yaml.safe_load(spec["serveConfigV2"])
    [app_spec] = serve_config["applications"]
    module, _, attr = app_spec["import_path"].partition(":")
    assert callable(getattr(importlib.import_module(module), attr))
    assert app_spec["name"] == config.ray.app_name
    assert app_spec["args"]["config"] == config_path
    # Ray on the pods is the version the ray extra pins at least.
    pyproject = (CLOUD.parent / "pyproject.toml").read_text()
    [pin] = re.findall(r'"ray\[serve\]>=([0-9.]+)', pyproject)
    assert spec["rayClusterConfig"]["rayVersion"] == pin
    # The worker pods hold max_replicas replicas at their largest.
    [workers] = spec["rayClusterConfig"]["workerGroupSpecs"]
    cpus = float(workers["rayStartParams"]["num-cpus"])
    assert workers["maxReplicas"] * cpus // config.ray.replica_cpus >= config.ray.max_replicas
    selector = docs["Service"]["spec"]["selector"]
    assert selector.items() <= head["metadata"]["labels"].items()


def test_systemd_unit_uses_only_known_commands_and_variables() -> None:
    text = UNIT.read_text()
    [exec_start] = re.findall(r"^ExecStart=(.*)$", text, re.MULTILINE)
    check_command(shlex.split(exec_start))
    for name in _ENV.findall(text):
        check_env(name)


def test_the_checks_catch_what_does_not_exist() -> None:
    with pytest.raises(AssertionError, match="--no-such-flag"):
        check_command(["edgecloud", "cloud", "serve", "--no-such-flag"])
    with pytest.raises(AssertionError, match="no subcommand"):
        check_command(["edgecloud", "cloud", "serv"])
    with pytest.raises(AssertionError, match="no setting"):
        check_env("EDGECLOUD_CLOUD__UPSTREAM__URLS")
    check_env("EDGECLOUD_CLOUD__UPSTREAM__ADAPTERS__SUPPORT")  # a mapping's key
    with pytest.raises(AssertionError, match="no setting"):
        check_toml({"cloud": {"upstream": {"uri": "x"}}}, Settings, "t")
