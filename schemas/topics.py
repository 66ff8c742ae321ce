"""Topic registry: names, keys, partition counts and the event types each topic carries."""

from __future__ import annotations

from dataclasses import dataclass

RETRY_SUFFIX = ".retry"
DLQ_SUFFIX = ".dlq"
DAY_MS = 24 * 3600 * 1000
DLQ_RETENTION_MS = 30 * DAY_MS  # dead letters wait for an operator
REPLY_RETENTION_MS = 3600 * 1000  # an answer nobody read within the hour is never read


@dataclass(frozen=True)
class TopicSpec:
    name: str
    key: str
    types: tuple[str, ...]
    partitions: int = 4
    consumed: bool = True  # a consumed topic gets its own .retry and .dlq
    retention_ms: int = 7 * DAY_MS
    compact: bool = False  # the latest record per key is the state (a log-compacted topic)

    @property
    def retry(self) -> str:
        return self.name + RETRY_SUFFIX

    @property
    def dlq(self) -> str:
        return self.name + DLQ_SUFFIX


_HOP = ("yibao.settle.SettlementHop.v1",)
_RESULT = ("yibao.settle.SettlementResult.v1",)
_REJECTED = ("yibao.ops.RecordRejected.v1",)

TOPICS: dict[str, TopicSpec] = {
    spec.name: spec
    for spec in (
        TopicSpec("enroll.inbound", "certno or psn_no", (
            "yibao.enroll.EnrolmentRecord.v1", "yibao.enroll.TransferEnrolment.v1",
            "yibao.enroll.RegisterPerson.v1", "yibao.enroll.EnrolPerson.v1")),
        TopicSpec("enroll.events", "psn_no", ("yibao.enroll.EnrolmentUpdated.v1",)),
        TopicSpec("enroll.rejections", "province admdvs (from ce_source)", _REJECTED, consumed=False),
        TopicSpec("enroll.duplicates", "psn_no", ("yibao.enroll.DuplicateDetected.v1",), consumed=False),
        TopicSpec("enroll.reminders", "psn_no or emp_no", ("yibao.enroll.ContributionReminder.v1",),
                  consumed=False),
        TopicSpec("filing.inbound", "psn_no", (
            "yibao.filing.FileTreatment.v1", "yibao.filing.ChangeFiling.v1", "yibao.filing.CancelFiling.v1")),
        TopicSpec("filing.events", "psn_no", ("yibao.filing.FilingUpdated.v1",)),
        TopicSpec("filing.rejections", "province admdvs (from ce_source)", _REJECTED, consumed=False),
        # a hop lives for seconds; a day leaves time to trace and replay it
        TopicSpec("settle.city", "admdvs of the city that must act", _HOP, retention_ms=DAY_MS),
        TopicSpec("settle.province", "admdvs of the province that must act", _HOP, retention_ms=DAY_MS),
        TopicSpec("settle.national", "insured province admdvs", _HOP, retention_ms=DAY_MS),
        TopicSpec("settle.hospital", "fixmedins_code", _RESULT, consumed=False),
        TopicSpec("settle.completed", "psn_no", _RESULT),
        TopicSpec("settle.advance", "insured province-treatment province", ("yibao.settle.AdvanceFundWarning.v1",),
                  consumed=False),
        TopicSpec("monitor.alerts", "fixmedins_code", ("yibao.monitor.AlertRaised.v1",), consumed=False),
        TopicSpec("ops.faults", "service", ("yibao.ops.FaultsChanged.v1",), partitions=1, consumed=False,
                  compact=True),
        TopicSpec("ops.audit", "operator name", ("yibao.ops.OperatorAction.v1",), partitions=1, consumed=False,
                  retention_ms=365 * DAY_MS),
    )
}

REPLY_PREFIX = "settle.reply."  # one single-partition reply topic per API instance


def topic(name: str) -> TopicSpec:
    """The spec of a registered topic, or of the .retry/.dlq topic derived from one."""
    base = name.removesuffix(RETRY_SUFFIX).removesuffix(DLQ_SUFFIX)
    return TOPICS[base]


def all_topic_names(partitions: int | None = None) -> list[tuple[str, int]]:
    """Every topic to create at start-up, with its partition count: the registry's, or a
    deployment's `partitions` for every topic the registry gives more than one."""
    out: list[tuple[str, int]] = []
    for spec in TOPICS.values():
        n = partitions if partitions and spec.partitions > 1 else spec.partitions
        out.append((spec.name, n))
        if spec.consumed:
            out += [(spec.retry, n), (spec.dlq, n)]
    return out


def topic_configs(name: str) -> dict[str, str]:
    """Broker configs of a topic at creation: retention and cleanup policy from the registry."""
    if name.startswith(REPLY_PREFIX):
        return {"retention.ms": str(REPLY_RETENTION_MS)}
    if name == "yibao.epoch":  # its token at offset 0 names the broker's epoch: kept for ever
        return {"retention.ms": "-1"}
    base = name.removesuffix(RETRY_SUFFIX).removesuffix(DLQ_SUFFIX)
    spec = TOPICS.get(base)
    if spec is None:
        return {}
    if name.endswith(DLQ_SUFFIX):
        return {"retention.ms": str(DLQ_RETENTION_MS)}
    if spec.compact:
        return {"cleanup.policy": "compact"}
    return {"retention.ms": str(spec.retention_ms)}
