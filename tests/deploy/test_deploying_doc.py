"""docs/deploying.md (the README's "Deploying to a fleet"): the commands it shows run in the real CLI, the
setting and variable names it uses exist, its topic table matches the contract's topic specs, and its ACL
table keeps DESIGN §2's rules (only the processor writes bans, shippers only write, ...)."""

from __future__ import annotations

import re

import pytest
from deploy_checks import DOCS, Invocation, check_invocation, doc_invocations

from fleet2ban.contract import Topics
from fleet2ban.settings import CONFIG_ENV, Settings, env_names

TEXT = DOCS.read_text(encoding="utf-8")
SECTIONS = (
    "Images",
    "Topics and their settings",
    "Kafka security and ACLs",
    "Configuration",
    "Rollout order",
)
SECTIONS += ("Sizing", "Monitoring", "Migrating from per-host fail2ban", "Threat model")


@pytest.mark.parametrize("heading", SECTIONS)
def test_section_present(heading: str) -> None:
    assert re.search(rf"^## {re.escape(heading)}$", TEXT, re.M), f"docs/deploying.md lacks '## {heading}'"


def test_doc_shows_the_import_command() -> None:
    assert any(inv.argv[0] == "import-fail2ban" for inv in doc_invocations())


def test_doc_invocation_extraction() -> None:
    found = {" ".join(i.argv[:2]) for i in doc_invocations()}
    # including commands run through kubectl exec (after "--"), and never kubectl's "-n fleet2ban"
    assert "enforcer --show" in found and "status" in found
    assert not any(i.argv[0] in ("exec", "create", "wait") for i in doc_invocations())


@pytest.mark.parametrize("inv", doc_invocations(), ids=str)
def test_doc_command_parses_in_cli(inv: Invocation, clean_env: pytest.MonkeyPatch) -> None:
    check_invocation(inv, {}, clean_env)


def test_env_names_in_doc_are_settings() -> None:
    names = {n for n in re.findall(r"FLEET2BAN_[A-Z0-9_]+", TEXT) if not n.endswith("_")}
    assert names, "the doc names no variables"
    unknown = sorted(names - env_names() - {CONFIG_ENV})
    assert not unknown, f"not settings: {unknown}"


def _setting_exists(dotted: str) -> bool:
    parts = dotted.replace("[]", "").split(".")
    model = Settings
    fields = model.model_fields
    for i, part in enumerate(parts):
        if part not in fields:
            return False
        ann = fields[part].annotation
        if i == len(parts) - 1:
            return True
        if part == "jails":
            from fleet2ban.settings import JailSettings

            fields = JailSettings.model_fields
        elif isinstance(ann, type) and hasattr(ann, "model_fields"):
            fields = ann.model_fields
        else:
            return False
    return True


def test_setting_names_in_doc_exist() -> None:
    sections = "kafka|jails\\[\\]|shipper|processor|enforcer|metrics|log|identity"
    names = set(re.findall(rf"`((?:{sections})\.[a-z_0-9]+)", TEXT))
    names |= {f"enforcer.{n}" for n in re.findall(r"`enforcer\.[a-z_0-9]+`/`([a-z_0-9]+)`", TEXT)}
    assert len(names) > 20
    unknown = sorted(n for n in names if not _setting_exists(n))
    assert not unknown, f"not settings: {unknown}"


def test_topic_table_matches_the_contract() -> None:
    topics = Topics()
    defaults = Settings.model_fields["kafka"].default_factory().model_dump()  # type: ignore[misc]
    for spec in topics.specs(defaults["partitions"]):
        row = next((ln for ln in TEXT.splitlines() if ln.startswith(f"| `{spec.name}`")), None)
        assert row is not None, f"no row for topic {spec.name}"
        assert f"| {spec.config['cleanup.policy']} |" in row, f"{spec.name}: cleanup.policy"
        if spec.name in (topics.deadletter, topics.allow):
            assert f"| {spec.partitions} |" in row
        else:
            assert "`kafka.partitions`" in row
        if "retention.ms" in spec.config:
            ms = int(spec.config["retention.ms"])
            shown = {f"{ms // 3_600_000} h", f"{ms // 86_400_000} d"}
            assert any(s in row for s in shown), f"{spec.name}: retention {shown} not in {row}"


def _acl_rows() -> list[tuple[str, set[str], str]]:
    """(principal, operations, resources) of the ACL table, principal carried down blank cells."""
    table = TEXT.split("| principal | allow | on |", 1)[1].split("\n\n", 1)[0]
    rows, principal = [], ""
    for line in table.splitlines()[2:]:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        principal = cells[0].strip("`").split()[0] if cells[0] else principal
        ops = {o.strip() for o in cells[1].split(",")}
        rows.append((principal, ops, cells[2]))
    return rows


def _can(principal_word: str, op: str, topic: str) -> bool:
    return any(
        principal_word in p and op in ops and f"`{topic}`" in res and "prefix" not in res
        for p, ops, res in _acl_rows()
    )


def test_acl_table_keeps_the_design_rules() -> None:
    t = Topics()
    rows = _acl_rows()
    assert len(rows) >= 8
    writers_of_bans = {p for p, ops, res in rows if "Write" in ops and f"`{t.bans}`" in res}
    assert writers_of_bans == {"User:fleet2ban-processor"}, "only the processor writes bans"
    assert _can("shipper", "Write", t.events)
    assert not any("shipper" in p and "Read" in ops for p, ops, _ in rows), "shippers never read"
    assert _can("processor", "Read", t.events) and _can("processor", "Write", t.decisions)
    assert _can("operator", "Write", t.decisions)
    assert _can("enforcer", "Read", t.bans) and _can("enforcer", "Write", t.reports)
    assert not _can("enforcer", "Write", t.decisions) and not _can("shipper", "Write", t.decisions)


def test_threat_model_names_every_input() -> None:
    """Issue 20: each input, who controls it, what bounds it; the settings it names exist (checked above)."""
    section = TEXT.split("## Threat model", 1)[1].split("\n## ", 1)[0]
    for words in (
        "AMPS log lines",
        "event time",
        "`events` topic",
        "`decisions` topic",
        "`bans` topic",
        "`reports` topic",
        "settings file",
        "fail2ban jail and filter files",
        "CLI arguments",
        "the console",
        "Newlines in client names",
        "processor.max_future_s",
    ):
        assert words in section, words
