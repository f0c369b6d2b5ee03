"""Copilot's Prometheus metrics, in one registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry()

ROUTES = Gauge("copilot_routes", "HTTP routes known to Copilot", registry=REGISTRY)
BACKENDS = Gauge("copilot_backends", "Serving app instances known to Copilot", registry=REGISTRY)
HOSTS_REJECTED = Counter("copilot_hosts_rejected_total", "Host rebuilds skipped because of invalid input", registry=REGISTRY)
INVALID_INPUT = Counter(
    "copilot_invalid_input_total",
    "Input items Copilot dropped rather than route (an instance, a port mapping, a route entry, an endpoint), "
    "each counted once when first seen, by source and field (copilot.invalid_input)",
    ["source", "field"],
    registry=REGISTRY,
)
PUSHES = Counter("copilot_pushes_total", "Responses sent to istiod", ["type_url"], registry=REGISTRY)
PUSH_LATENCY = Histogram(
    "copilot_push_latency_seconds",
    "From a change in the snapshot to the response carrying it",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
    registry=REGISTRY,
)
UNUSED_SERVICES = Gauge(
    "copilot_unused_services",
    "Shared services (a DestinationRule and a ServiceEntry each) no route uses any more, kept until their delayed removal",
    registry=REGISTRY,
)
PUBLISH_SECONDS = Histogram(
    "copilot_publish_seconds",
    "Time to rebuild the Istio objects of changed hosts",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1, 5),
    registry=REGISTRY,
)
BBS_EVENTS = Counter("copilot_bbs_events_total", "BBS events applied", ["type"], registry=REGISTRY)
BBS_ERRORS = Counter(
    "copilot_bbs_errors_total", "BBS failures (connect, list, stream, malformed payload)", ["kind"], registry=REGISTRY
)
BBS_STALENESS = Gauge(
    "copilot_bbs_staleness_seconds", "Seconds since BBS last confirmed Copilot's state (0 while subscribed)", registry=REGISTRY
)
BBS_SYNCS = Counter("copilot_bbs_syncs_total", "Full listings of BBS applied", registry=REGISTRY)
BBS_WITHDRAWAL_HELD = Gauge(
    "copilot_bbs_withdrawal_held",
    "1 while a BBS listing that would withdraw most routes is held (bbs.withdrawal_hold_seconds), else 0",
    registry=REGISTRY,
)
BBS_WITHDRAWAL_HOLDS = Counter(
    "copilot_bbs_withdrawal_holds_total",
    "Mass withdrawals by a BBS listing: held (a hold began), applied (it persisted past the hold), "
    "cleared (a later listing no longer withdrew most routes)",
    ["outcome"],
    registry=REGISTRY,
)
BBS_UNRECOGNIZED = Counter(
    "copilot_bbs_unrecognized_total",
    "Values from BBS that Copilot does not know (error type, event type, state, presence), by field",
    ["field"],
    registry=REGISTRY,
)
REGISTRAR_CONNECTIONS_REFUSED = Counter(
    "copilot_registrar_connections_refused_total",
    "Registrar API connections closed unanswered: over a connection limit, TLS handshake failed or too slow, "
    "request not received in time",
    ["reason"],
    registry=REGISTRY,
)
ISTIOD_NACKS = Counter(
    "copilot_istiod_nacks_total",
    "Responses istiod rejected (a request with error_detail), by type",
    ["type_url"],
    registry=REGISTRY,
)
