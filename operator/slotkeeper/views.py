"""Readable tables of a ModelEndpoint for people at a terminal (``slotkeeper status|history``). Pure."""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

from .api import SLOTS


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers]] + [["" if v is None else str(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in cells)


def format_status(endpoint: Mapping[str, Any], events: Sequence[Mapping[str, Any]] = ()) -> str:
    meta, status = endpoint.get("metadata", {}), endpoint.get("status") or {}
    lines = [
        f"ModelEndpoint {meta.get('namespace')}/{meta.get('name')}: {status.get('phase', 'Pending')}",
        f"  url:       {status.get('url', '-')}",
        f"  stable:    {status.get('stableRevision') or '-'} (slot {status.get('activeSlot') or '-'})",
        f"  candidate: {status.get('candidateRevision') or '-'}"
        + (f" (slot {status['candidateSlot']}, step {status['rollout']['step']})" if status.get("rollout") else ""),
    ]
    route = _route_line(endpoint)
    if route:
        lines.append(route)
    if status.get("failedRevision"):
        lines.append(f"  failed:    {status['failedRevision']} (not retried until the spec changes or `retry`)")
    slots, traffic = status.get("slots") or {}, status.get("traffic") or {}
    lines += ["", table(["SLOT", "REVISION", "REPLICAS", "READY", "TRAFFIC", "AUTOSCALED"], [
        [slot, (slots.get(slot) or {}).get("revision") or "-", (slots.get(slot) or {}).get("replicas", 0),
         (slots.get(slot) or {}).get("readyReplicas", 0), f"{traffic.get(slot, 0)}%",
         "yes" if (slots.get(slot) or {}).get("autoscaled") else "-"] for slot in SLOTS])]
    if status.get("checks"):
        lines += ["", table(["CHECK", "REVISION", "VERDICT", "VALUE", "FAILURES", "MESSAGE"], [
            [c.get("name"), c.get("revision"), c.get("verdict"), c.get("lastValue"), c.get("consecutiveFailures", 0),
             c.get("message", "")] for c in status["checks"]])]
    if status.get("conditions"):
        lines += ["", table(["CONDITION", "STATUS", "REASON", "MESSAGE"], [
            [c.get("type"), c.get("status"), c.get("reason"), c.get("message", "")] for c in status["conditions"]])]
    if events:
        recent = sorted(events, key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or "")[-5:]
        lines += ["", table(["LAST SEEN", "TYPE", "REASON", "MESSAGE"], [
            [e.get("lastTimestamp") or e.get("eventTime"), e.get("type"), e.get("reason"), e.get("message")]
            for e in recent])]
    return "\n".join(lines)


def _route_line(endpoint: Mapping[str, Any]) -> str | None:
    """With Gateway API traffic: the HTTPRoute (named like the endpoint), its parents, and its weights
    as the cluster shows them (status.trafficSummary: "route not accepted" until every parent accepts)."""
    gateway = ((endpoint.get("spec") or {}).get("traffic") or {}).get("gatewayAPI")
    if not gateway:
        return None
    meta = endpoint.get("metadata", {})
    parents = ", ".join(
        f"{p.get('kind', 'Gateway')} {p.get('namespace') or meta.get('namespace')}/{p.get('name')}"
        + (f" ({p['sectionName']})" if p.get("sectionName") else "")
        for p in gateway.get("parentRefs") or ())
    summary = (endpoint.get("status") or {}).get("trafficSummary") or "not reported yet"
    return f"  route:     HTTPRoute {meta.get('name')} via {parents or '-'}: {summary}"


def format_history(endpoint: Mapping[str, Any]) -> str:
    history = (endpoint.get("status") or {}).get("history") or []
    if not history:
        return "no history yet"
    return table(["TIME", "REVISION", "OUTCOME", "REASON", "MODEL", "MESSAGE"], [
        [h.get("time"), h.get("revision"), h.get("outcome"), h.get("reason"), h.get("modelUri"), h.get("message")]
        for h in reversed(history)])


def format_batch(endpoint: Mapping[str, Any]) -> str:
    """``slotkeeper batch list``: the schedules and their pinned revision, then the runs, newest first."""
    batch = (endpoint.get("status") or {}).get("batch") or {}
    lines = []
    if batch.get("schedules"):
        lines += [table(["SCHEDULE", "CRONJOB", "REVISION"], [
            [s.get("name"), s.get("cronJob"), s.get("revision")] for s in batch["schedules"]]), ""]
    if batch.get("waiting"):
        lines += [f"waiting: {batch['waiting']}", ""]
    runs = batch.get("runs") or []
    if not runs:
        return "\n".join(lines + ["no batch runs yet"])
    lines.append(table(["RUN", "JOB", "REVISION", "STARTED", "ENDED", "ROWS", "FAILED", "OUTCOME", "REASON"], [
        [r.get("jobName"), r.get("job") or "-", r.get("revision"), r.get("startTime") or r.get("created"),
         r.get("completionTime"), r.get("rows"), r.get("failedRows"), r.get("outcome"), r.get("reason")]
        for r in reversed(runs)]))
    return "\n".join(lines)
