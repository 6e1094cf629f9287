//! From observations to ranked findings: a pure function, no I/O.
//!
//! Every rule compares one observation with a threshold and scores the
//! finding by how far past it the observation is (`score` 1 = just at the
//! threshold). Scores fall into three severities (warning < 3 ≤ high < 10 ≤
//! critical). Findings are ranked by severity, then, within a severity, in
//! the order of the levers: database, pool, cache, replicas, instances,
//! partitions, then symptoms (consequences such as an open breaker, which
//! are not levers of their own); the score breaks the remaining ties. So a
//! missing index outranks a pool that looks saturated by the slow queries
//! it causes, unless the pool is clearly the worse problem.

use serde::{Deserialize, Serialize};

use crate::observations::{
    median, DatabaseObservation, DatabaseRole, Observations, ServiceObservation, StatementActivity,
};

/// Which lever a finding calls for, in the order to try them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    Database,
    Pool,
    Cache,
    Replicas,
    Instances,
    Partitions,
    /// A consequence of something else (or something the doctor could not
    /// see), listed last.
    Symptom,
}

/// How bad, from the score.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Warning,
    High,
    Critical,
}

impl Severity {
    fn of(score: f64) -> Self {
        if score >= 10.0 {
            Self::Critical
        } else if score >= 3.0 {
            Self::High
        } else {
            Self::Warning
        }
    }
}

/// What kind of bottleneck.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FindingKind {
    /// Sequential scans read many rows of a large table.
    MissingIndex,
    /// A statement whose calls take long on average.
    SlowStatement,
    /// Client connections near `max_connections`.
    ConnectionLimit,
    /// A service's connection pool fully in use most of the window.
    PoolSaturated,
    /// Cacheable reads mostly answered by databases.
    CacheMisses,
    /// A replica replays far behind the primary.
    ReplicaLag,
    /// The projector applies nothing while its lag stands or grows.
    ProjectorStalled,
    /// The projector applies, but its lag grows.
    ProjectorBehind,
    /// Committed events wait long for the relay to publish them.
    OutboxLag,
    /// A circuit breaker was open for much of the window.
    BreakerOpen,
    /// A configured source did not answer.
    SourceUnreachable,
}

/// One ranked finding.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Finding {
    /// 1 for the first.
    pub rank: usize,
    pub kind: FindingKind,
    pub category: Category,
    pub severity: Severity,
    /// How far past its threshold (1 = at it).
    pub score: f64,
    /// What it is about: a table, `query-service pool replica-1`,
    /// `replica-1`, `projector`, ...
    pub subject: String,
    /// What is slow, in a sentence.
    pub slow: String,
    /// Why, from the evidence.
    pub why: String,
    /// The numbers.
    pub evidence: Vec<String>,
    /// The lever that fits.
    pub lever: String,
}

/// Where each rule fires. The defaults are meant to stay quiet on a healthy
/// stack under load on a slow, shared machine, and to fire on the real
/// thing by a wide margin.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Thresholds {
    /// Rows per second read by sequential scans of one table.
    pub seq_rows_per_sec: f64,
    /// Rows per sequential scan for the table to count as large.
    pub seq_rows_per_scan: f64,
    /// Mean milliseconds per call of a statement.
    pub statement_mean_ms: f64,
    /// Calls in the window for a statement's mean to count.
    pub statement_min_calls: i64,
    /// Share of `max_connections` in use.
    pub connections_share: f64,
    /// Share of samples with every connection of a pool in use.
    pub pool_saturated_share: f64,
    /// Share of a cacheable endpoint's reads served by caches, below which
    /// the cache is a lever.
    pub cache_hit_share: f64,
    /// Reads per second of an endpoint for its hit share to count.
    pub cache_min_reads_per_sec: f64,
    /// Share of samples with a pool of the read path fully in use from
    /// which cache misses matter.
    pub cache_pressure_pool_share: f64,
    /// Median replica lag, seconds.
    pub replica_lag_secs: f64,
    /// Consumer lag (messages) at the end of the window for a projector
    /// that applies but falls behind.
    pub consumer_lag_events: f64,
    /// Median outbox lag, seconds.
    pub outbox_lag_secs: f64,
    /// Share of samples with a breaker open.
    pub breaker_open_share: f64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self {
            seq_rows_per_sec: 100_000.0,
            seq_rows_per_scan: 10_000.0,
            statement_mean_ms: 100.0,
            statement_min_calls: 3,
            connections_share: 0.9,
            pool_saturated_share: 0.25,
            cache_hit_share: 0.5,
            cache_min_reads_per_sec: 10.0,
            cache_pressure_pool_share: 0.1,
            replica_lag_secs: 0.5,
            consumer_lag_events: 1000.0,
            outbox_lag_secs: 2.0,
            breaker_open_share: 0.2,
        }
    }
}

/// Score of consequences (open breakers, unreachable sources): kept in the
/// warning band, so a cause of the same or higher severity ranks first.
const SYMPTOM_SCORE_CAP: f64 = 2.9;

/// Score of a projector that applies nothing while messages wait: it is
/// not slow, it is stopped.
const STALLED_SCORE: f64 = 10.0;

/// The findings of `observations`, ranked (see the module docs).
pub fn diagnose(observations: &Observations, thresholds: &Thresholds) -> Vec<Finding> {
    let window = observations.window_secs.max(0.001);
    let mut findings = Vec::new();
    missing_indexes(&observations.databases, window, thresholds, &mut findings);
    slow_statements(&observations.databases, thresholds, &mut findings);
    connection_limits(&observations.databases, thresholds, &mut findings);
    for service in &observations.services {
        saturated_pools(service, thresholds, &mut findings);
        cache_misses(service, observations, window, thresholds, &mut findings);
        outbox_lag(service, thresholds, &mut findings);
        open_breakers(service, thresholds, &mut findings);
    }
    replica_lag(observations, thresholds, &mut findings);
    let projector_named = projector(observations, thresholds, &mut findings);
    unreachable(observations, projector_named, &mut findings);
    rank(findings)
}

/// Orders findings (severity, then category, then score) and numbers them.
pub fn rank(mut findings: Vec<Finding>) -> Vec<Finding> {
    findings.sort_by(|a, b| {
        b.severity
            .cmp(&a.severity)
            .then(a.category.cmp(&b.category))
            .then(b.score.total_cmp(&a.score))
            .then(a.subject.cmp(&b.subject))
    });
    for (i, finding) in findings.iter_mut().enumerate() {
        finding.rank = i + 1;
    }
    findings
}

#[allow(clippy::too_many_arguments)]
fn finding(
    kind: FindingKind,
    category: Category,
    score: f64,
    subject: String,
    slow: String,
    why: String,
    evidence: Vec<String>,
    lever: String,
) -> Finding {
    Finding {
        rank: 0,
        kind,
        category,
        severity: Severity::of(score),
        score: (score * 100.0).round() / 100.0,
        subject,
        slow,
        why,
        evidence,
        lever,
    }
}

/// Transaction control and session statements: their time is commit
/// latency (fsync) or nothing, never an index's business.
fn is_utility(query: &str) -> bool {
    let first = query
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_ascii_uppercase();
    matches!(
        first.as_str(),
        "BEGIN"
            | "COMMIT"
            | "ROLLBACK"
            | "START"
            | "END"
            | "SAVEPOINT"
            | "RELEASE"
            | "SET"
            | "SHOW"
            | "RESET"
            | "DISCARD"
            | "DEALLOCATE"
            | "LISTEN"
            | "UNLISTEN"
            | "NOTIFY"
            | "VACUUM"
            | "ANALYZE"
            | "CHECKPOINT"
    )
}

/// Whether `query` names `table` as a whole word.
fn mentions(query: &str, table: &str) -> bool {
    let bare = table.rsplit('.').next().unwrap_or(table);
    let lower = query.to_ascii_lowercase();
    let needle = bare.to_ascii_lowercase();
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    lower.match_indices(&needle).any(|(i, _)| {
        let before = lower[..i].chars().next_back();
        let after = lower[i + needle.len()..].chars().next();
        !before.is_some_and(word) && !after.is_some_and(word)
    })
}

/// Shortens a statement for one line of text.
fn short(query: &str, max: usize) -> String {
    let flat = query.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() <= max {
        flat
    } else {
        let cut: String = flat.chars().take(max).collect();
        format!("{cut}…")
    }
}

/// Columns a statement filters on, equality ones first: the likely key of
/// the missing index. Reads the WHERE clause's `column op` pairs; a row
/// comparison or an expression is skipped, which is fine for a hint.
pub fn filter_columns(query: &str) -> Vec<String> {
    let lower = query.to_ascii_lowercase();
    let Some(start) = find_keyword(&lower, "where") else {
        return Vec::new();
    };
    let mut clause = &lower[start + "where".len()..];
    for end in [
        "order by",
        "group by",
        "limit",
        "returning",
        "for update",
        ";",
    ] {
        if let Some(i) = find_keyword(clause, end) {
            clause = &clause[..i];
        }
    }
    let mut equal = Vec::new();
    let mut range = Vec::new();
    let tokens = tokenize(clause);
    for pair in tokens.windows(2) {
        let (ident, op) = (&pair[0], pair[1].as_str());
        if !ident.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_') || is_sql_word(ident) {
            continue;
        }
        let column = ident.rsplit('.').next().unwrap_or(ident).to_owned();
        let target = match op {
            "=" | "in" => &mut equal,
            "<" | "<=" | ">" | ">=" | "between" | "like" => &mut range,
            _ => continue,
        };
        if !target.contains(&column) {
            target.push(column);
        }
    }
    range.retain(|c| !equal.contains(c));
    equal.extend(range);
    equal
}

fn find_keyword(text: &str, keyword: &str) -> Option<usize> {
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    text.match_indices(keyword).map(|(i, _)| i).find(|&i| {
        let before = text[..i].chars().next_back();
        let after = text[i + keyword.len()..].chars().next();
        // A keyword ending in a letter must end a word too (`limit`, not
        // `limited`); `;` may touch anything.
        let ends_word = !keyword.ends_with(char::is_alphabetic) || !after.is_some_and(word);
        !before.is_some_and(word) && ends_word
    })
}

fn tokenize(text: &str) -> Vec<String> {
    let mut tokens = Vec::new();
    let mut current = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '$' {
            current.push(c);
            continue;
        }
        if !current.is_empty() {
            tokens.push(std::mem::take(&mut current));
        }
        match c {
            '<' | '>' | '!' => {
                if chars.peek() == Some(&'=') {
                    chars.next();
                    tokens.push(format!("{c}="));
                } else if c == '<' && chars.peek() == Some(&'>') {
                    chars.next();
                    tokens.push("<>".to_owned());
                } else {
                    tokens.push(c.to_string());
                }
            }
            '=' => tokens.push("=".to_owned()),
            c if c.is_whitespace() => {}
            other => tokens.push(other.to_string()),
        }
    }
    if !current.is_empty() {
        tokens.push(current);
    }
    tokens
}

fn is_sql_word(token: &str) -> bool {
    matches!(
        token,
        "and"
            | "or"
            | "not"
            | "null"
            | "true"
            | "false"
            | "is"
            | "in"
            | "exists"
            | "select"
            | "from"
            | "where"
            | "any"
            | "all"
            | "coalesce"
            | "case"
            | "when"
            | "then"
            | "else"
    )
}

fn rate(n: f64) -> String {
    if n >= 1_000_000.0 {
        format!("{:.1}M", n / 1_000_000.0)
    } else if n >= 10_000.0 {
        format!("{:.0}k", n / 1_000.0)
    } else if n >= 1_000.0 {
        format!("{:.1}k", n / 1_000.0)
    } else {
        format!("{n:.0}")
    }
}

fn statement_line(s: &StatementActivity) -> String {
    let calls = s.calls.max(1) as f64;
    format!(
        "{} calls, mean {:.1} ms, {:.0} rows/call, {:.0} blocks/call: {}",
        s.calls,
        s.mean_ms(),
        s.rows as f64 / calls,
        s.blocks as f64 / calls,
        short(&s.query, 160)
    )
}

fn missing_indexes(
    databases: &[DatabaseObservation],
    window: f64,
    t: &Thresholds,
    out: &mut Vec<Finding>,
) {
    // One finding per table, across every server that scans it.
    let mut tables: Vec<String> = Vec::new();
    for db in databases {
        for table in &db.tables {
            if !tables.contains(&table.table) {
                tables.push(table.table.clone());
            }
        }
    }
    for table in tables {
        let mut seq_rows = 0i64;
        let mut seq_scans = 0i64;
        let mut index_scans = 0i64;
        let mut where_seen = Vec::new();
        let mut partitions: Vec<String> = Vec::new();
        let mut hot: Option<(&StatementActivity, &str)> = None;
        for db in databases {
            let Some(activity) = db.tables.iter().find(|a| a.table == table) else {
                continue;
            };
            if activity.seq_scans == 0 {
                continue;
            }
            seq_rows += activity.seq_rows;
            seq_scans += activity.seq_scans;
            index_scans += activity.index_scans;
            where_seen.push(format!(
                "{}: {} seq scans reading {} rows ({} rows/s), {} index scans",
                db.name,
                activity.seq_scans,
                rate(activity.seq_rows as f64),
                rate(activity.seq_rows as f64 / window),
                activity.index_scans
            ));
            for p in &activity.partitions {
                if !partitions.contains(p) {
                    partitions.push(p.clone());
                }
            }
            let names: Vec<&str> = std::iter::once(table.as_str())
                .chain(activity.partitions.iter().map(String::as_str))
                .collect();
            for s in &db.statements {
                if is_utility(&s.query) || !names.iter().any(|n| mentions(&s.query, n)) {
                    continue;
                }
                if hot.is_none_or(|(h, _)| s.total_ms > h.total_ms) {
                    hot = Some((s, db.name.as_str()));
                }
            }
        }
        if seq_scans == 0 {
            continue;
        }
        let per_sec = seq_rows as f64 / window;
        let per_scan = seq_rows as f64 / seq_scans as f64;
        if per_sec < t.seq_rows_per_sec || per_scan < t.seq_rows_per_scan {
            continue;
        }
        let score = per_sec / t.seq_rows_per_sec;
        let mut evidence = where_seen;
        if !partitions.is_empty() {
            evidence.push(format!("partitions scanned: {}", partitions.join(", ")));
        }
        let (columns, hot_text) = match hot {
            Some((s, db)) => {
                evidence.push(format!("hot statement on {db}: {}", statement_line(s)));
                (filter_columns(&s.query), Some(short(&s.query, 100)))
            }
            None => (Vec::new(), None),
        };
        let key = if columns.is_empty() {
            "the columns of its hot statement's WHERE clause".to_owned()
        } else {
            format!("({})", columns.join(", "))
        };
        let likely = columns
            .first()
            .map(|c| format!("; likely column {c}"))
            .unwrap_or_default();
        out.push(finding(
            FindingKind::MissingIndex,
            Category::Database,
            score,
            table.clone(),
            match hot_text {
                Some(q) => format!("reads of {table}: {q}"),
                None => format!("reads of {table}"),
            },
            format!(
                "sequential scans read {} rows/s ({} rows per scan, {} scans, {} index scans) \
                 where an index would read a few{likely}",
                rate(per_sec),
                rate(per_scan),
                seq_scans,
                index_scans
            ),
            evidence,
            format!("add an index: CREATE INDEX CONCURRENTLY ON {table} {key}"),
        ));
    }
}

fn slow_statements(databases: &[DatabaseObservation], t: &Thresholds, out: &mut Vec<Finding>) {
    for db in databases {
        for s in &db.statements {
            if is_utility(&s.query) || s.calls < t.statement_min_calls {
                continue;
            }
            let mean = s.mean_ms();
            if mean < t.statement_mean_ms {
                continue;
            }
            out.push(finding(
                FindingKind::SlowStatement,
                Category::Database,
                mean / t.statement_mean_ms,
                format!("{}: {}", db.name, short(&s.query, 60)),
                format!("a statement on {} takes {mean:.0} ms per call", db.name),
                format!(
                    "{:.0} blocks and {:.0} rows per call",
                    s.blocks as f64 / s.calls.max(1) as f64,
                    s.rows as f64 / s.calls.max(1) as f64
                ),
                vec![statement_line(s)],
                "EXPLAIN (ANALYZE, BUFFERS) it: add the index it lacks or read less (a \
                 narrower range, a cache in front)"
                    .to_owned(),
            ));
        }
    }
}

fn connection_limits(databases: &[DatabaseObservation], t: &Thresholds, out: &mut Vec<Finding>) {
    for db in databases {
        let (Some(peak), Some(max)) = (db.peak_connections, db.max_connections) else {
            continue;
        };
        if max <= 0 {
            continue;
        }
        let share = peak as f64 / max as f64;
        if share < t.connections_share {
            continue;
        }
        out.push(finding(
            FindingKind::ConnectionLimit,
            Category::Pool,
            share / t.connections_share * (1.0 + 20.0 * (share - t.connections_share).max(0.0)),
            format!("{} connections", db.name),
            format!("new connections to {} are about to be refused", db.name),
            format!("{peak} of max_connections {max} in use"),
            vec![format!("peak client connections {peak} / {max}")],
            "smaller pools per service instance, or a transaction pooler (PgBouncer) in front"
                .to_owned(),
        ));
    }
}

fn saturated_pools(service: &ServiceObservation, t: &Thresholds, out: &mut Vec<Finding>) {
    for pool in &service.pools {
        let samples = pool.in_use.len();
        if samples == 0 || pool.max <= 0 {
            continue;
        }
        let saturated = pool.saturated_samples();
        let share = saturated as f64 / samples as f64;
        if share < t.pool_saturated_share {
            continue;
        }
        let mean = pool.in_use.iter().sum::<i64>() as f64 / samples as f64;
        let mut evidence = vec![format!(
            "all {} connections in use in {saturated} of {samples} samples (mean in use {mean:.1})",
            pool.max
        )];
        evidence.extend(slowest_routes(service, 2));
        evidence.extend(open_breaker_evidence(service));
        out.push(finding(
            FindingKind::PoolSaturated,
            Category::Pool,
            share / t.pool_saturated_share,
            format!("{} pool {}", service.service, pool.pool),
            format!(
                "{} requests that need pool {} wait for a connection",
                service.service, pool.pool
            ),
            format!(
                "the pool (max {}) was fully in use in {:.0}% of the window's samples",
                pool.max,
                share * 100.0
            ),
            evidence,
            format!(
                "resize the pool: raise {}'s {} pool size above {} (mind max_connections), \
                 or take load off it (cache)",
                service.service, pool.pool, pool.max
            ),
        ));
    }
}

/// Evidence lines for the service's breakers that were open in any sample.
fn open_breaker_evidence(service: &ServiceObservation) -> impl Iterator<Item = String> + '_ {
    service
        .breakers
        .iter()
        .filter(|b| b.open_samples > 0)
        .map(|b| {
            format!(
                "breaker {} open in {} of {} samples",
                b.breaker, b.open_samples, b.samples
            )
        })
}

fn slowest_routes(service: &ServiceObservation, n: usize) -> Vec<String> {
    let mut routes: Vec<_> = service
        .routes
        .iter()
        .filter(|r| r.requests > 0.0 && r.p99_ms.is_some())
        .collect();
    routes.sort_by(|a, b| {
        b.p99_ms
            .unwrap_or_default()
            .total_cmp(&a.p99_ms.unwrap_or_default())
    });
    routes
        .into_iter()
        .take(n)
        .map(|r| {
            format!(
                "{} {} {} p99 {:.0} ms over {:.0} requests",
                service.service,
                r.method,
                r.route,
                r.p99_ms.unwrap_or_default(),
                r.requests
            )
        })
        .collect()
}

fn cache_misses(
    service: &ServiceObservation,
    observations: &Observations,
    window: f64,
    t: &Thresholds,
    out: &mut Vec<Finding>,
) {
    let mut endpoints: Vec<&str> = Vec::new();
    for read in &service.reads {
        if !endpoints.contains(&read.endpoint.as_str()) {
            endpoints.push(&read.endpoint);
        }
    }
    for endpoint in endpoints {
        let reads: Vec<_> = service
            .reads
            .iter()
            .filter(|r| r.endpoint == endpoint)
            .collect();
        let cached: f64 = reads
            .iter()
            .filter(|r| r.source == "local" || r.source == "redis")
            .map(|r| r.reads)
            .sum();
        let total: f64 = reads.iter().map(|r| r.reads).sum();
        // An endpoint no cache ever answered is uncached by design (lists,
        // reports): no cache lever there.
        if cached <= 0.0 || total / window < t.cache_min_reads_per_sec {
            continue;
        }
        // Misses on a read path with room to spare cost nothing yet (and
        // clients asking for fresh data miss on purpose): the cache is a
        // lever only once the path feels it.
        let Some(pressure) = read_pressure(service, t) else {
            continue;
        };
        let hit = cached / total;
        if hit >= t.cache_hit_share {
            continue;
        }
        let miss = 1.0 - hit;
        let mut evidence: Vec<String> = reads
            .iter()
            .map(|r| format!("{}: {:.0} reads from {}", endpoint, r.reads, r.source))
            .collect();
        evidence.push(pressure);
        if let Some(redis) = observations.redis {
            let lookups = redis.hits + redis.misses;
            if lookups > 0 {
                evidence.push(format!(
                    "redis keyspace: {} hits, {} misses ({:.0}% hits), {} evicted",
                    redis.hits,
                    redis.misses,
                    redis.hits as f64 * 100.0 / lookups as f64,
                    redis.evicted
                ));
            }
        }
        out.push(finding(
            FindingKind::CacheMisses,
            Category::Cache,
            miss / (1.0 - t.cache_hit_share),
            format!("{} cache {endpoint}", service.service),
            format!("{endpoint} reads go to the databases"),
            format!(
                "only {:.0}% of {:.0} reads/s were answered by a cache tier",
                hit * 100.0,
                total / window
            ),
            evidence,
            "cache: longer TTLs (LOCAL_CACHE_TTL_MS, REDIS_CACHE_TTL_S), a larger local cache \
             (LOCAL_CACHE_CAPACITY); clients sending Cache-Control: no-cache skip it on purpose"
                .to_owned(),
        ));
    }
}

/// Why the read path of `service` is under pressure, if it is: one of its
/// pools fully in use in a noticeable share of samples. (Not latency alone:
/// on a busy machine that swings for reasons a cache does not fix.)
fn read_pressure(service: &ServiceObservation, t: &Thresholds) -> Option<String> {
    service.pools.iter().find_map(|pool| {
        let samples = pool.in_use.len();
        let saturated = pool.saturated_samples();
        (samples > 0 && saturated as f64 / samples as f64 >= t.cache_pressure_pool_share).then(
            || {
                format!(
                    "pressure: pool {} fully in use in {saturated} of {samples} samples",
                    pool.pool
                )
            },
        )
    })
}

fn replica_lag(observations: &Observations, t: &Thresholds, out: &mut Vec<Finding>) {
    for db in &observations.databases {
        if db.role != DatabaseRole::Replica {
            continue;
        }
        let Some(replication) = &db.replication else {
            continue;
        };
        let Some(lag) = median(&replication.lag_secs) else {
            continue;
        };
        if lag < t.replica_lag_secs {
            continue;
        }
        let max = replication.lag_secs.iter().copied().fold(0.0_f64, f64::max);
        let unreplayed = median_i64(&replication.unreplayed_bytes);
        let unreceived = median_i64(&replication.unreceived_bytes);
        let mut evidence = vec![
            format!(
                "replay lag median {lag:.2} s, max {max:.2} s over {} samples",
                replication.lag_secs.len()
            ),
            format!(
                "WAL received but not replayed: median {} bytes; not yet received: median {} bytes",
                unreplayed, unreceived
            ),
        ];
        for service in &observations.services {
            for view in service
                .database_lag
                .iter()
                .filter(|v| v.database == db.name)
            {
                if let Some(seen) = median(&view.lag_secs) {
                    let unhealthy = view.healthy.iter().filter(|h| !**h).count();
                    evidence.push(format!(
                        "{} sees {} {seen:.2} s behind, unhealthy in {unhealthy} of {} samples",
                        service.service,
                        db.name,
                        view.healthy.len()
                    ));
                }
            }
        }
        let delay = replication.apply_delay_ms.filter(|ms| *ms > 0);
        let (why, lever) = match delay {
            Some(ms) => (
                format!(
                    "recovery_min_apply_delay = {ms} ms on {} holds replay back: WAL arrives, \
                     commits become visible {:.1} s late",
                    db.name,
                    ms as f64 / 1000.0
                ),
                format!(
                    "remove the apply delay on {} (ALTER SYSTEM SET recovery_min_apply_delay = 0; \
                     SELECT pg_reload_conf(); locally `stack replica-delay N off`); until then \
                     reads route to the other replicas: add a replica if they cannot carry them",
                    db.name
                ),
            ),
            None if unreplayed > unreceived => (
                format!("{} receives WAL but replays it slowly (busy replica, or replay waiting on conflicting queries)", db.name),
                "relieve the replica (move reads to other replicas, add a replica) or cap \
                 conflicting queries (max_standby_streaming_delay)"
                    .to_owned(),
            ),
            None => (
                format!("WAL reaches {} late (network, or the primary's WAL sender)", db.name),
                "check the replica's network path and the primary's WAL volume; add a replica \
                 closer to the primary"
                    .to_owned(),
            ),
        };
        out.push(finding(
            FindingKind::ReplicaLag,
            Category::Replicas,
            lag / t.replica_lag_secs,
            db.name.clone(),
            format!(
                "reads from {} ({}) are {lag:.1} s stale",
                db.name, db.address
            ),
            why,
            evidence,
            lever,
        ));
    }
}

fn median_i64(values: &[i64]) -> i64 {
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    sorted.get(sorted.len() / 2).copied().unwrap_or(0)
}

/// The projector: consumer lag on the broker plus its own metrics. Returns
/// whether a finding names it (then its unreachable endpoint is evidence,
/// not a finding of its own).
fn projector(observations: &Observations, t: &Thresholds, out: &mut Vec<Finding>) -> bool {
    let Some(consumer) = &observations.consumer else {
        return false;
    };
    let (Some(first), Some(last)) = (consumer.samples.first(), consumer.samples.last()) else {
        return false;
    };
    let service = observations
        .services
        .iter()
        .find(|s| s.service == "projector");
    let unreachable = observations
        .unreachable
        .iter()
        .find(|u| u.source.starts_with("projector"));
    let applied = service.and_then(|s| s.applied_events);
    let produced = last.end - first.end;
    let committed = last.committed - first.committed;
    let lag_start = first.lag();
    let lag_end = last.lag();
    let elapsed = (last.at_secs - first.at_secs).max(0.001);
    let mut evidence = vec![
        format!(
            "group {}: lag {} → {} messages over {:.1} s ({} produced, {} applied)",
            consumer.group, lag_start, lag_end, elapsed, produced, committed
        ),
        format!(
            "{} partitions in {}; {}",
            consumer.partitions,
            consumer.topics.join(", "),
            match consumer.members {
                Some(n) => format!("{n} group members"),
                None => "group members unknown".to_owned(),
            }
        ),
    ];
    if let Some(applied) = applied {
        evidence.push(format!("projector_applied_events_total +{applied:.0}"));
    }
    if let Some(u) = unreachable {
        evidence.push(format!(
            "{} at {} unreachable: {}",
            u.source, u.address, u.error
        ));
    }
    let instances_lever = format!(
        "more projector instances in group {} (useful up to the partition count, {})",
        consumer.group, consumer.partitions
    );
    if lag_end > 0 && committed == 0 && (produced > 0 || lag_start > 0) {
        let why = match unreachable {
            Some(_) => "the group applies nothing and the projector's endpoint does not answer: \
                        it is stopped, hung or gone"
                .to_owned(),
            None => "the group applies nothing although messages wait: it is stuck (a failing \
                     batch, a lost assignment)"
                .to_owned(),
        };
        out.push(finding(
            FindingKind::ProjectorStalled,
            Category::Instances,
            STALLED_SCORE * (1.0 + (lag_end as f64 / t.consumer_lag_events).min(9.0) / 10.0),
            "projector".to_owned(),
            format!(
                "read models fall behind: {lag_end} events wait for the projector (group {})",
                consumer.group
            ),
            why,
            evidence,
            format!("restart the projector (its log says why it stopped); then {instances_lever}"),
        ));
        return true;
    }
    let growing = lag_end > lag_start;
    if growing && lag_end as f64 >= t.consumer_lag_events {
        let at_limit = consumer
            .members
            .is_some_and(|m| consumer.partitions > 0 && m >= consumer.partitions);
        let (category, lever) = if at_limit {
            (
                Category::Partitions,
                format!(
                    "more partitions: the group already has as many members as partitions ({}); \
                     add partitions, then projector instances",
                    consumer.partitions
                ),
            )
        } else {
            (Category::Instances, instances_lever)
        };
        let rate_in = produced as f64 / elapsed;
        let rate_out = committed as f64 / elapsed;
        out.push(finding(
            FindingKind::ProjectorBehind,
            category,
            lag_end as f64 / t.consumer_lag_events,
            "projector".to_owned(),
            format!(
                "read models fall behind: {lag_end} events wait (group {})",
                consumer.group
            ),
            format!(
                "events arrive at {rate_in:.0}/s and are applied at {rate_out:.0}/s: lag grows"
            ),
            evidence,
            lever,
        ));
        return true;
    }
    false
}

fn outbox_lag(service: &ServiceObservation, t: &Thresholds, out: &mut Vec<Finding>) {
    let Some(lag) = median(&service.outbox_lag_secs) else {
        return;
    };
    if lag < t.outbox_lag_secs {
        return;
    }
    let mut evidence = vec![format!(
        "outbox_lag_seconds median {lag:.1} s over {} samples",
        service.outbox_lag_secs.len()
    )];
    evidence.extend(open_breaker_evidence(service));
    out.push(finding(
        FindingKind::OutboxLag,
        Category::Instances,
        lag / t.outbox_lag_secs,
        format!("{} relay", service.service),
        "committed events reach the broker late (and so the read models)".to_owned(),
        format!("the oldest unpublished event is {lag:.1} s old"),
        evidence,
        "check the broker and the relay's kafka-producer breaker; the relay is one leader, so \
         more command-service instances do not help: a larger RELAY_BATCH_SIZE does"
            .to_owned(),
    ));
}

fn open_breakers(service: &ServiceObservation, t: &Thresholds, out: &mut Vec<Finding>) {
    for breaker in &service.breakers {
        if breaker.samples == 0 {
            continue;
        }
        let share = breaker.open_samples as f64 / breaker.samples as f64;
        if share < t.breaker_open_share {
            continue;
        }
        out.push(finding(
            FindingKind::BreakerOpen,
            Category::Symptom,
            (share / t.breaker_open_share).min(SYMPTOM_SCORE_CAP),
            format!("{} breaker {}", service.service, breaker.breaker),
            format!(
                "{} skips {} while its breaker is open",
                service.service, breaker.breaker
            ),
            "calls through it failed or timed out: the dependency is down, slow, or its pool is \
             exhausted (see the findings above)"
                .to_owned(),
            vec![format!(
                "open or half-open in {} of {} samples",
                breaker.open_samples, breaker.samples
            )],
            "fix the dependency behind it; the breaker only limits the damage".to_owned(),
        ));
    }
}

fn unreachable(observations: &Observations, projector_named: bool, out: &mut Vec<Finding>) {
    for source in &observations.unreachable {
        if projector_named && source.source.starts_with("projector") {
            continue;
        }
        out.push(finding(
            FindingKind::SourceUnreachable,
            Category::Symptom,
            SYMPTOM_SCORE_CAP,
            source.source.clone(),
            format!("{} did not answer", source.source),
            source.error.clone(),
            vec![format!("{} at {}", source.source, source.address)],
            "check that it runs (deploy/local/stack status) and answers; nothing it would tell \
             is in this report"
                .to_owned(),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observations::{
        ConsumerObservation, ConsumerSample, PoolObservation, ReplicationObservation,
        TableActivity, UnreachableSource,
    };

    fn database(name: &str, role: DatabaseRole) -> DatabaseObservation {
        DatabaseObservation {
            name: name.to_owned(),
            address: format!("127.0.0.1:1/{name}"),
            role,
            statements: Vec::new(),
            tables: Vec::new(),
            peak_connections: Some(20),
            max_connections: Some(200),
            replication: (role == DatabaseRole::Replica).then(|| ReplicationObservation {
                lag_secs: vec![0.0, 0.01, 0.0],
                unreplayed_bytes: vec![0, 0, 0],
                unreceived_bytes: vec![0, 0, 0],
                apply_delay_ms: Some(0),
            }),
        }
    }

    fn healthy() -> Observations {
        Observations {
            window_secs: 5.0,
            rounds: 10,
            databases: vec![
                database("primary", DatabaseRole::Primary),
                database("replica-1", DatabaseRole::Replica),
                database("replica-2", DatabaseRole::Replica),
            ],
            services: vec![
                ServiceObservation {
                    service: "query-service".to_owned(),
                    pools: vec![PoolObservation {
                        pool: "replica-1".to_owned(),
                        max: 16,
                        in_use: vec![1, 2, 0, 3, 1, 0, 1, 2, 1, 0],
                    }],
                    ..ServiceObservation::default()
                },
                ServiceObservation {
                    service: "projector".to_owned(),
                    applied_events: Some(400.0),
                    ..ServiceObservation::default()
                },
            ],
            consumer: Some(ConsumerObservation {
                group: "projector".to_owned(),
                topics: vec!["events.order".to_owned()],
                partitions: 4,
                members: Some(1),
                samples: vec![
                    ConsumerSample {
                        at_secs: 0.0,
                        committed: 1000,
                        end: 1003,
                    },
                    ConsumerSample {
                        at_secs: 5.0,
                        committed: 1400,
                        end: 1401,
                    },
                ],
            }),
            ..Observations::default()
        }
    }

    fn hot_history(db: &mut DatabaseObservation) {
        db.tables.push(TableActivity {
            table: "customer_order_history".to_owned(),
            partitions: vec!["customer_order_history_p2026_11".to_owned()],
            seq_scans: 60,
            seq_rows: 12_000_000,
            index_scans: 0,
        });
        db.statements.push(StatementActivity {
            query:
                "SELECT occurred_at, order_id FROM customer_order_history WHERE customer_id = $1 \
                    AND occurred_at >= $2 AND occurred_at < $3 ORDER BY occurred_at LIMIT $4"
                    .to_owned(),
            calls: 60,
            total_ms: 1500.0,
            rows: 60,
            blocks: 60 * 2500,
        });
        db.statements.push(StatementActivity {
            query: "COMMIT".to_owned(),
            calls: 900,
            total_ms: 4000.0,
            rows: 0,
            blocks: 0,
        });
    }

    fn saturate_pool(o: &mut Observations) {
        o.services[0].pools[0] = PoolObservation {
            pool: "replica-1".to_owned(),
            max: 1,
            in_use: vec![1, 1, 1, 0, 1, 1, 1, 1, 0, 1],
        };
    }

    fn delay_replica(o: &mut Observations) {
        o.databases[1].replication = Some(ReplicationObservation {
            lag_secs: vec![3.1, 3.2, 3.0, 3.3],
            unreplayed_bytes: vec![90_000, 80_000, 100_000, 95_000],
            unreceived_bytes: vec![0, 0, 120, 0],
            apply_delay_ms: Some(3000),
        });
    }

    fn stop_projector(o: &mut Observations) {
        o.consumer = Some(ConsumerObservation {
            group: "projector".to_owned(),
            topics: vec!["events.order".to_owned()],
            partitions: 4,
            members: Some(1),
            samples: vec![
                ConsumerSample {
                    at_secs: 0.0,
                    committed: 1000,
                    end: 1100,
                },
                ConsumerSample {
                    at_secs: 5.0,
                    committed: 1000,
                    end: 1350,
                },
            ],
        });
        o.services[1].applied_events = None;
        o.services[1].failed_scrapes = 10;
        o.unreachable.push(UnreachableSource {
            source: "projector /metrics".to_owned(),
            address: "http://127.0.0.1:3/metrics".to_owned(),
            error: "timed out".to_owned(),
        });
    }

    fn kinds(findings: &[Finding]) -> Vec<FindingKind> {
        findings.iter().map(|f| f.kind).collect()
    }

    #[test]
    fn a_healthy_window_has_no_findings() {
        let findings = diagnose(&healthy(), &Thresholds::default());
        assert!(findings.is_empty(), "{findings:#?}");
    }

    #[test]
    fn seq_scans_of_a_large_table_name_the_table_and_the_column() {
        let mut o = healthy();
        hot_history(&mut o.databases[1]);
        let findings = diagnose(&o, &Thresholds::default());
        let first = &findings[0];
        assert_eq!(first.kind, FindingKind::MissingIndex);
        assert_eq!(first.subject, "customer_order_history");
        assert_eq!(first.severity, Severity::Critical);
        assert!(
            first.why.contains("likely column customer_id"),
            "{}",
            first.why
        );
        assert!(
            first
                .lever
                .contains("customer_order_history (customer_id, occurred_at)"),
            "{}",
            first.lever
        );
        // COMMIT's fsync time is no statement to index.
        assert!(!kinds(&findings).contains(&FindingKind::SlowStatement));
    }

    #[test]
    fn small_tables_scanned_often_are_no_missing_index() {
        let mut o = healthy();
        o.databases[0].tables.push(TableActivity {
            table: "outbox_cursor".to_owned(),
            partitions: Vec::new(),
            seq_scans: 100_000,
            seq_rows: 1_000_000,
            index_scans: 0,
        });
        assert!(diagnose(&o, &Thresholds::default()).is_empty());
    }

    #[test]
    fn a_pool_full_most_of_the_window_names_service_and_pool() {
        let mut o = healthy();
        saturate_pool(&mut o);
        let findings = diagnose(&o, &Thresholds::default());
        assert_eq!(kinds(&findings), vec![FindingKind::PoolSaturated]);
        assert_eq!(findings[0].subject, "query-service pool replica-1");
        assert!(findings[0].lever.contains("resize the pool"));
    }

    #[test]
    fn a_delayed_replica_names_the_replica_and_its_apply_delay() {
        let mut o = healthy();
        delay_replica(&mut o);
        let findings = diagnose(&o, &Thresholds::default());
        assert_eq!(kinds(&findings), vec![FindingKind::ReplicaLag]);
        assert_eq!(findings[0].subject, "replica-1");
        assert!(findings[0]
            .why
            .contains("recovery_min_apply_delay = 3000 ms"));
    }

    #[test]
    fn a_stopped_projector_is_one_finding_with_its_silent_endpoint_as_evidence() {
        let mut o = healthy();
        stop_projector(&mut o);
        let findings = diagnose(&o, &Thresholds::default());
        assert_eq!(kinds(&findings), vec![FindingKind::ProjectorStalled]);
        assert_eq!(findings[0].severity, Severity::Critical);
        assert!(findings[0]
            .evidence
            .iter()
            .any(|e| e.contains("unreachable")));
        assert!(findings[0].lever.contains("up to the partition count, 4"));
    }

    #[test]
    fn a_projector_that_applies_but_falls_behind_wants_instances_then_partitions() {
        let mut o = healthy();
        let mut consumer = o.consumer.clone().expect("consumer");
        consumer.samples = vec![
            ConsumerSample {
                at_secs: 0.0,
                committed: 0,
                end: 2_000,
            },
            ConsumerSample {
                at_secs: 5.0,
                committed: 1_000,
                end: 6_000,
            },
        ];
        o.consumer = Some(consumer.clone());
        let findings = diagnose(&o, &Thresholds::default());
        assert_eq!(kinds(&findings), vec![FindingKind::ProjectorBehind]);
        assert_eq!(findings[0].category, Category::Instances);

        consumer.members = Some(4);
        o.consumer = Some(consumer);
        let findings = diagnose(&o, &Thresholds::default());
        assert_eq!(findings[0].category, Category::Partitions);
    }

    #[test]
    fn comparable_severities_rank_database_first_then_the_seed_order() {
        let mut o = healthy();
        // Every injected bottleneck at once, each at a "high" score.
        saturate_pool(&mut o);
        o.services[0].pools[0].in_use = vec![1; 10];
        delay_replica(&mut o);
        hot_history(&mut o.databases[2]);
        // 300k rows/s: 3x the threshold, the same severity as the others.
        if let Some(t) = o.databases[2].tables.first_mut() {
            t.seq_rows = 1_500_000;
            t.seq_scans = 60;
        }
        let findings = diagnose(&o, &Thresholds::default());
        let order: Vec<(FindingKind, Severity)> =
            findings.iter().map(|f| (f.kind, f.severity)).collect();
        assert_eq!(
            order,
            vec![
                (FindingKind::MissingIndex, Severity::High),
                (FindingKind::PoolSaturated, Severity::High),
                (FindingKind::ReplicaLag, Severity::High),
            ]
        );
        assert_eq!(
            findings.iter().map(|f| f.rank).collect::<Vec<_>>(),
            vec![1, 2, 3]
        );
    }

    #[test]
    fn a_much_worse_bottleneck_outranks_the_seed_order() {
        let mut o = healthy();
        stop_projector(&mut o);
        saturate_pool(&mut o);
        o.services[0].pools[0].in_use = vec![1, 1, 1, 0, 0, 0, 0, 0, 0, 0];
        let findings = diagnose(&o, &Thresholds::default());
        assert_eq!(
            kinds(&findings),
            vec![FindingKind::ProjectorStalled, FindingKind::PoolSaturated]
        );
    }

    #[test]
    fn symptoms_rank_after_causes_of_the_same_severity() {
        let mut o = healthy();
        saturate_pool(&mut o);
        o.services[0]
            .breakers
            .push(crate::observations::BreakerObservation {
                breaker: "db-replica-1".to_owned(),
                samples: 10,
                open_samples: 10,
            });
        o.unreachable.push(UnreachableSource {
            source: "redis".to_owned(),
            address: "127.0.0.1:6379".to_owned(),
            error: "connection refused".to_owned(),
        });
        let findings = diagnose(&o, &Thresholds::default());
        assert_eq!(findings[0].kind, FindingKind::PoolSaturated);
        assert!(findings[1..]
            .iter()
            .all(|f| f.category == Category::Symptom));
    }

    #[test]
    fn cache_misses_only_count_for_endpoints_a_cache_answers() {
        let mut o = healthy();
        let reads =
            |endpoint: &str, source: &str, reads: f64| crate::observations::ReadSourceActivity {
                endpoint: endpoint.to_owned(),
                source: source.to_owned(),
                reads,
            };
        o.services[0].reads = vec![
            reads("customer_orders", "replica-1", 5000.0),
            reads("orders", "local", 50.0),
            reads("orders", "replica-2", 400.0),
        ];
        // Plenty of room on the read path: misses cost nothing yet.
        assert!(diagnose(&o, &Thresholds::default()).is_empty());

        o.services[0].pools[0].in_use = vec![16, 16, 3, 4, 1, 0, 1, 2, 1, 0];
        let findings = diagnose(&o, &Thresholds::default());
        assert_eq!(kinds(&findings), vec![FindingKind::CacheMisses]);
        assert_eq!(findings[0].subject, "query-service cache orders");
        assert_eq!(findings[0].severity, Severity::Warning);
        assert!(findings[0]
            .evidence
            .iter()
            .any(|e| e.contains("pool replica-1 fully in use in 2 of 10")));
    }

    #[test]
    fn filter_columns_put_equalities_first() {
        assert_eq!(
            filter_columns(
                "SELECT a FROM t WHERE t.created_at >= $1 AND tenant = $2 AND kind IN ($3) ORDER BY x"
            ),
            vec!["tenant", "kind", "created_at"]
        );
        assert!(filter_columns("SELECT 1").is_empty());
    }
}
