//! Every metric flaghook exposes: its name, kind and help text, in one table.
//!
//! Names follow Prometheus's conventions: a `flaghook_` prefix, counters end in `_total`,
//! base units (`_seconds`, `_bytes`). A label set is bounded: a component's name, a reason
//! class, a status class; never a file path or a peer. To add a metric, add its constant
//! here and to [`ALL`] (so it gets its HELP and TYPE), then set it in
//! `Telemetry::sync` (from the counters the component keeps) or record it where it happens.

/// What kind of series a metric is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// One metric: its name, kind and `# HELP` text.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Metric {
    pub(crate) name: &'static str,
    pub(crate) kind: Kind,
    pub(crate) help: &'static str,
}

const fn counter(name: &'static str, help: &'static str) -> Metric {
    Metric {
        name,
        kind: Kind::Counter,
        help,
    }
}

const fn gauge(name: &'static str, help: &'static str) -> Metric {
    Metric {
        name,
        kind: Kind::Gauge,
        help,
    }
}

// Sources (label `source`).
pub(crate) const SOURCE_EVENTS_READ: Metric = counter(
    "flaghook_source_events_read_total",
    "Lines a source read and handed to its sinks.",
);
pub(crate) const SOURCE_LAG_BYTES: Metric = gauge(
    "flaghook_source_lag_bytes",
    "Bytes not yet delivered by every sink: of a file source's files, or of a TCP or stdin source's journal segments (sizes minus saved offsets), summed.",
);
pub(crate) const SOURCE_EVENTS_JOURNALED: Metric = counter(
    "flaghook_source_events_journaled_total",
    "TCP and stdin sources: lines written to the source's journal.",
);
pub(crate) const SOURCE_JOURNAL_BYTES: Metric = gauge(
    "flaghook_source_journal_bytes",
    "TCP and stdin sources: bytes of the journal's segments on the disk (delivered lines included until their segment is deleted; journal_max_bytes caps it).",
);

// Sinks (label `sink`).
pub(crate) const SINK_EVENTS_DELIVERED: Metric = counter(
    "flaghook_sink_events_delivered_total",
    "Events the endpoint accepted (2xx; for a nats sink, stored by JetStream).",
);
pub(crate) const SINK_EVENTS_REJECTED: Metric = counter(
    "flaghook_sink_events_rejected_total",
    "Lines and events rejected and dead-lettered, by reason class (invalid, oversized, unreadable, endpoint, expired).",
);
pub(crate) const SINK_EVENTS_SKIPPED: Metric = counter(
    "flaghook_sink_events_skipped_total",
    "Lines read that hold no event to send, by reason (blank; filtered: an event of a type the sink's event_types leaves out).",
);
pub(crate) const SINK_EVENTS_DEAD_LETTERED: Metric = counter(
    "flaghook_sink_events_dead_lettered_total",
    "Records written to the sink's dead-letter file.",
);
pub(crate) const SINK_EVENTS_NOT_DELIVERED: Metric = counter(
    "flaghook_sink_events_not_delivered_total",
    "Events left for the next start when a sink stopped (in their files or journals).",
);
pub(crate) const SINK_REQUESTS: Metric = counter(
    "flaghook_sink_requests_total",
    "Requests sent, by status class of the response (2xx, 3xx, 4xx, 5xx; error: no response). A nats sink's publish counts as 2xx once PubAcked, as error otherwise.",
);
pub(crate) const SINK_RETRIES: Metric = counter(
    "flaghook_sink_retries_total",
    "Batches whose request failed and that were put back to be sent again.",
);
pub(crate) const SINK_REQUEST_DURATION: Metric = Metric {
    name: "flaghook_sink_request_duration_seconds",
    kind: Kind::Histogram,
    help: "Time from sending a request to its response (or its failure).",
};
pub(crate) const SINK_EVENTS_IN_MEMORY: Metric = gauge(
    "flaghook_sink_events_in_memory",
    "Events the sink holds in memory (read, not yet delivered or dead-lettered).",
);
pub(crate) const SINK_BYTES_IN_MEMORY: Metric = gauge(
    "flaghook_sink_bytes_in_memory",
    "Bytes of the lines the sink holds in memory.",
);
pub(crate) const SINK_LAST_DELIVERY: Metric = gauge(
    "flaghook_sink_last_delivery_timestamp_seconds",
    "When the endpoint last accepted a request (Unix time); 0 before the first.",
);

// The process.
pub(crate) const BUILD_INFO: Metric = gauge(
    "flaghook_build_info",
    "Always 1; the labels name the version of flaghook running.",
);

/// Every metric, so that each gets its HELP and TYPE.
pub(crate) const ALL: &[Metric] = &[
    SOURCE_EVENTS_READ,
    SOURCE_LAG_BYTES,
    SOURCE_EVENTS_JOURNALED,
    SOURCE_JOURNAL_BYTES,
    SINK_EVENTS_DELIVERED,
    SINK_EVENTS_REJECTED,
    SINK_EVENTS_SKIPPED,
    SINK_EVENTS_DEAD_LETTERED,
    SINK_EVENTS_NOT_DELIVERED,
    SINK_REQUESTS,
    SINK_RETRIES,
    SINK_REQUEST_DURATION,
    SINK_EVENTS_IN_MEMORY,
    SINK_BYTES_IN_MEMORY,
    SINK_LAST_DELIVERY,
    BUILD_INFO,
];

/// The request duration histogram's buckets, in seconds: from a loopback answer to a
/// timeout.
pub(crate) const DURATION_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
