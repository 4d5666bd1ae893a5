"""The CLI checks the deployment tests rely on: they accept what the CLI accepts, reject what it rejects,
and turn a planned-but-missing sub-command into an expected failure that names it."""

from __future__ import annotations

import deploy_checks
import pytest
from deploy_checks import Invocation, check_invocation, command_path, container_argv, expand_k8s_vars


def test_command_path_skips_global_options() -> None:
    assert command_path(["--log-format", "json", "topics", "create", "--partitions", "3"]) == [
        "topics",
        "create",
    ]
    assert command_path(["-c", "/etc/x.yaml", "broker"]) == ["broker"]
    assert command_path(["--version"]) == []


@pytest.mark.parametrize(
    "argv",
    [
        ["topics", "create", "--partitions", "6"],
        ["--log-level", "DEBUG", "broker", "--port", "0"],
        ["--version"],
    ],
)
def test_accepts_valid_command_lines(argv: list[str], clean_env: pytest.MonkeyPatch) -> None:
    check_invocation(Invocation("test", argv), {}, clean_env)


@pytest.mark.parametrize(
    ("argv", "why"),
    [
        (["topics", "create", "--nope"], "No such option"),
        (["topics", "create", "--partitions", "many"], "many"),
        (["topics", "delete"], "No such command"),
        (["no-such-command"], "No such command"),
    ],
)
def test_rejects_invalid_command_lines(argv: list[str], why: str, clean_env: pytest.MonkeyPatch) -> None:
    with pytest.raises(pytest.fail.Exception) as info:
        check_invocation(Invocation("test", argv), {}, clean_env)
    assert why in str(info.value) or "--help` failed" in str(info.value)


def test_planned_but_missing_command_is_an_expected_failure(
    clean_env: pytest.MonkeyPatch,
) -> None:
    clean_env.setitem(deploy_checks.PLANNED_COMMANDS, "not-built-yet", "issue 99 (a test)")
    with pytest.raises(
        pytest.xfail.Exception, match=r"`fleet2ban not-built-yet` is not in the CLI yet \(issue 99"
    ):
        check_invocation(Invocation("test", ["not-built-yet", "--flag"]), {}, clean_env)


def test_kubernetes_variable_expansion() -> None:
    env = {"NODE_NAME": "n1"}
    assert expand_k8s_vars("$(NODE_NAME)/x", env) == "n1/x"
    assert expand_k8s_vars("$$(NODE_NAME)", env) == "$(NODE_NAME)"
    assert expand_k8s_vars("$(MISSING)", env) == "$(MISSING)"
    container = {
        "args": ["shipper", "--host", "$(NODE_NAME)"],
        "env": [{"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}],
    }
    assert container_argv(container) == ["shipper", "--host", "amps-node-1"]
