"""`doctor`: checks a real deployment and says, for each check, ok or what is wrong and
how to fix it. The checks' order and what a failure makes pointless live here; every
call that reaches something goes through the ports (`Deployment`, `Platforms`,
`CredentialProbe`), so this module names no platform, bucket or cloud API."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from typing import Any, Literal

from shared.config import Config, ConfigError
from shared.domain.errors import BackupError, StateError
from shared.logs import redact
from shared.ports import CredentialProbe, Deployed, Deployment, Platforms, RestoreCaveats

log = logging.getLogger(__name__)

# warning: works, but something the user relies on does not hold (the run goes on)
Status = Literal["ok", "failed", "skipped", "warning"]


@dataclass(frozen=True)
class Finding:
    check: str
    status: Status
    detail: str  # ok: what was proven; failed: what is wrong and how to fix it


@dataclass(frozen=True)
class Report:
    findings: list[Finding]

    @property
    def ok(self) -> bool:
        return all(f.status != "failed" for f in self.findings)

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "checks": [asdict(f) for f in self.findings]}

    def text(self) -> str:
        """One line per check, then the verdict: for a terminal or a log."""
        width = max(len(f.check) for f in self.findings)
        marks = {"ok": "ok     ", "failed": "FAILED ", "skipped": "skipped", "warning": "WARNING"}
        lines = [f"{marks[f.status]}  {f.check.ljust(width)}  {f.detail}" for f in self.findings]
        failed = sum(f.status == "failed" for f in self.findings)
        lines.append("every check passed" if not failed else
                     f"{failed} check(s) failed: fix them and run doctor again")
        return "\n".join(lines)


@dataclass(frozen=True)
class Subject:
    """What the doctor examines, built from the config by the composition root."""

    config: Config
    deployment: Deployment
    platforms: Platforms


def diagnose(load: Callable[[], Subject], *, notify: bool = False) -> Report:
    """Run every check; `load` reads the config and builds the ports (a ConfigError there
    fails the first check and skips the rest)."""
    findings: list[Finding] = []
    try:
        subject = load()
    except (ConfigError, BackupError, ValueError) as exc:
        findings.append(Finding("config", "failed", redact(str(exc))))
        findings.append(Finding("everything else", "skipped", "the config must be valid first"))
        return Report(findings)
    config = subject.config
    findings.append(Finding("config", "ok", f"{len(config.sources)} source(s), backing up to "
                                            f"{config.destination.bucket}/{config.destination.prefix}"))
    deployment = subject.deployment
    bucket = _check("bucket", deployment.bucket)
    findings.append(bucket)
    bucket_down = "the bucket must be reachable first"
    for name, probe in (("probe object", deployment.objects),
                        ("create-only writes", deployment.create_only)):
        findings.append(_skipped(name, bucket_down) if bucket.status == "failed"
                        else _check(name, probe, unused="the state is not kept in the bucket"))
    state_in_bucket = config.state.backend == "cos"
    create_only = findings[-1]
    if state_in_bucket and create_only.status == "failed":
        findings.append(_skipped("state", "the COS state store needs create-only writes"))
    elif state_in_bucket and bucket.status == "failed":
        findings.append(_skipped("state", bucket_down))
    else:
        findings.append(_check("state", deployment.state))
    for source in config.sources:
        findings.append(_check(f"source {source.name}", partial(_probe, subject.platforms, source.name),
                               unused="this platform offers no credential check"))
        findings.extend(_restorability(subject.platforms, source.name))
    state_down = next(f for f in findings if f.check == "state").status != "ok"
    findings.extend(_functions(config, deployment, state_down))
    for index in range(deployment.webhooks()):
        findings.append(_check(f"notify.webhooks[{index}]", partial(deployment.webhook, index, notify)))
    if config.notify.heartbeat is not None:  # the dead-man switch: a wrong URL never alerts
        findings.append(_check("notify.heartbeat", partial(deployment.heartbeat, notify)))
    return Report(findings)


LOCAL_MODE = "dispatch.mode is local: the poller copies in-process"
REDEPLOY = "scripts/package --config backup.yaml, then scf deploy with no --target"


def _functions(config: Config, deployment: Deployment, state_down: bool) -> list[Finding]:
    """The finisher and the poller each answer an Invoke, load their config (and the
    poller reaches the state store); the trigger loads its config; then whether the
    functions and this doctor run the same backup.yaml."""
    findings: list[Finding] = []
    digests: dict[str, str] = {}
    for name, probe in (("finisher", deployment.finisher), ("poller", deployment.poller)):
        finding, digest = _deployed(name, probe, state_down)
        findings.append(finding)
        if digest:
            digests[name] = digest
    trigger = _trigger(deployment)
    if isinstance(trigger, Finding):
        findings.append(trigger)
    if digests:  # none from functions that failed, or are too old to say
        findings.append(_compare(config.digest, trigger if isinstance(trigger, str) else None,
                                 digests))
    return findings


def _trigger(deployment: Deployment) -> str | Finding | None:
    """The digest of the config the trigger runs, or its failed check when it answers that
    it cannot load that config (every run it starts would fail)."""
    try:
        return deployment.trigger()
    except (BackupError, ConfigError, ValueError) as exc:
        return Finding("trigger", "failed", redact(str(exc)))


def _deployed(name: str, probe: Callable[[], Deployed | None],
              state_down: bool) -> tuple[Finding, str]:
    answers: list[Deployed] = []

    def detail() -> str | None:
        try:
            answer = probe()
        except StateError:  # the poller's state probe: with the doctor's own failing, one fault
            if not state_down:
                raise
            answer = Deployed("it does not reach the state store either: the state check must "
                              "pass first", "", proven=False)
        if answer is None:
            return None
        answers.append(answer)
        return answer.detail

    finding = _check(name, detail, unused=LOCAL_MODE)
    if answers and not answers[0].proven:
        return _skipped(name, answers[0].detail), ""
    return finding, answers[0].config if answers else ""


def _compare(mine: str, trigger: str | None, digests: dict[str, str]) -> Finding:
    """Which functions run another config than this doctor's, and why, where it can be
    told: the deployed functions agreeing with each other but not with this file means
    the file was edited and not deployed; some agreeing with it means the others were left
    out of the last deploy. Either way every function must get the same package."""
    name = "deployed config"
    deployed = {**({"trigger": trigger} if trigger else {}), **digests}
    if all(digest == mine for digest in deployed.values()):
        verb = "runs" if len(deployed) == 1 else "run"
        return Finding(name, "ok", f"the {_and(list(deployed))} {verb} this backup.yaml (digest {mine})")
    shown = ", ".join(f"{function} {digest}" for function, digest in deployed.items())
    if mine in deployed.values():
        stale = [function for function, digest in deployed.items() if digest != mine]
        return Finding(name, "failed",
                       f"the {_and(stale)} run{'s' if len(stale) == 1 else ''} another config than "
                       f"this backup.yaml (digest {mine}; deployed: {shown}): left out of the last "
                       f"deploy (scf deploy --target of another function). Run {REDEPLOY}, so all "
                       "three functions run the same package")
    if trigger and len(set(deployed.values())) == 1:
        return Finding(name, "failed",
                       f"this backup.yaml (digest {mine}) is not deployed: the trigger, poller and "
                       f"finisher all run the config before it (digest {trigger}), so it was edited "
                       f"since the last deploy. Deploy it: {REDEPLOY}")
    return Finding(name, "failed",
                   f"the functions run another config than this backup.yaml (digest {mine}; "
                   f"deployed: {shown}): this file was edited since the last deploy, or a "
                   "function was left out of it (scf deploy --target of another function)"
                   + ("" if trigger else "; the trigger did not say which config it runs, to "
                      "tell which") + f". Run {REDEPLOY}, so all three functions run the same package")


def _and(names: list[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def _restorability(platforms: Platforms, source: str) -> list[Finding]:
    """A warning when the source's export options make backups a restore cannot put back
    as they were: better learnt now than when a restore is needed."""
    try:
        client = platforms.get(source)
        caveats = client.configured_caveats() if isinstance(client, RestoreCaveats) else []
    except (BackupError, ConfigError, ValueError):
        return []  # the source's own check says what is wrong
    if not caveats:
        return []
    return [Finding(f"source {source} restores", "warning",
                    "its backups cannot be restored as the data was: " + "; ".join(caveats))]


def _probe(platforms: Platforms, source: str) -> str | None:
    client = platforms.get(source)
    if not isinstance(client, CredentialProbe):
        return None
    return client.probe()


def _check(name: str, probe: Callable[[], str | None], unused: str = "not used by this config") -> Finding:
    try:
        proved = probe()
    except (BackupError, ConfigError, ValueError) as exc:
        return Finding(name, "failed", redact(str(exc)))
    except Exception as exc:  # a bug or an answer nobody foresaw: say so, keep checking
        log.exception("doctor check raised", extra={"check": name})
        return Finding(name, "failed", f"unexpected {type(exc).__name__}: {redact(str(exc))}; "
                                       "see the log, and report it if it persists")
    if proved is None:
        return _skipped(name, unused)
    return Finding(name, "ok", proved)


def _skipped(name: str, why: str) -> Finding:
    return Finding(name, "skipped", why)
