//! The stored data the cost-growth benchmark grows: what it is made of
//! ([`StepPlan`], [`Chunk`]) and the SQL that writes one chunk of it
//! ([`chunk_sql`]).
//!
//! Every chunk writes, in one transaction, events shaped like the command
//! side's (products before the orders that reference them, each aggregate's
//! sequence contiguous from 1, only legal status changes, the payloads and
//! metadata the services read) and the read-model rows the projector would
//! have written for them: `customer_order_history` (one row per order event),
//! `order_summary` (one per order) and `product_catalog` (one per product).
//! `daily_sales` is left out: its rows sum a day's orders, so its size does
//! not follow the event count, and no measured query reads it.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use chrono::{DateTime, Datelike, Months, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

use crate::catchup::ORDER_PATTERNS;

/// Orders of each customer: about 54 history rows, half of them in the
/// history query's default window (90 days of [`HISTORY_MONTHS`]).
pub const ORDERS_PER_CUSTOMER: u64 = 20;
/// Orders per product of a chunk (at least [`MIN_PRODUCTS`] per chunk).
pub const ORDERS_PER_PRODUCT: u64 = 50;
/// `ProductPriceChanged` events per product, after its `ProductCreated`.
pub const PRICE_CHANGES_PER_PRODUCT: u64 = 4;
/// Products of the smallest chunk: an order's three lines and its added
/// line name four distinct products.
pub const MIN_PRODUCTS: u64 = 4;
/// The orders' business time runs from the first day of the month this many
/// months back to two days ago, so the history spreads over that many
/// monthly partitions plus the current one.
pub const HISTORY_MONTHS: u32 = 6;
/// Events written per statement (one transaction each).
pub const CHUNK_EVENTS: u64 = 250_000;
/// The relay's cursor row (`command_service::relay::RELAY_NAME`).
pub const RELAY_NAME: &str = "main";

/// A range of orders (`first_order..=last_order`, numbered within their
/// step) and the products they are made of, written by one statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chunk {
    pub first_order: u64,
    pub last_order: u64,
    /// Products `first_product..first_product + products` of the step.
    pub first_product: u64,
    pub products: u64,
}

impl Chunk {
    pub fn orders(&self) -> u64 {
        self.last_order + 1 - self.first_order
    }

    /// How many of the chunk's orders have `i % 10 == pattern`.
    fn orders_with_pattern(&self, pattern: u64) -> u64 {
        let upto = |n: u64| n / 10 + u64::from(pattern != 0 && pattern <= n % 10);
        upto(self.last_order) - upto(self.first_order - 1)
    }

    pub fn order_events(&self) -> u64 {
        (0..10u64)
            .map(|p| self.orders_with_pattern(p) * ORDER_PATTERNS[p as usize].len() as u64)
            .sum()
    }

    pub fn product_events(&self) -> u64 {
        self.products * (1 + PRICE_CHANGES_PER_PRODUCT)
    }

    pub fn events(&self) -> u64 {
        self.order_events() + self.product_events()
    }

    /// Events of each type the chunk writes.
    pub fn events_by_type(&self) -> BTreeMap<String, u64> {
        let mut counts = BTreeMap::from([
            ("ProductCreated".to_owned(), self.products),
            (
                "ProductPriceChanged".to_owned(),
                self.products * PRICE_CHANGES_PER_PRODUCT,
            ),
        ]);
        for (p, events) in ORDER_PATTERNS.iter().enumerate() {
            for event in *events {
                *counts.entry((*event).to_owned()).or_default() +=
                    self.orders_with_pattern(p as u64);
            }
        }
        counts
    }
}

/// One growth step: `orders` orders of `customers` customers (order `i`
/// belongs to customer `i % customers`, so every customer's orders spread
/// over the whole time span and over the chunks, as a real customer's are
/// interleaved with everyone else's), written in `chunks`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepPlan {
    /// Part of every id, so that the steps' aggregates never collide.
    pub step: u32,
    pub orders: u64,
    pub customers: u64,
    pub chunks: Vec<Chunk>,
}

impl StepPlan {
    /// The smallest step of the standard shape with at least `target`
    /// events, in as many equal chunks as it takes to keep each at about
    /// `chunk_events` events or fewer.
    pub fn for_events(step: u32, target: u64, chunk_events: u64) -> Self {
        let count = target.div_ceil(chunk_events.max(1)).max(1);
        // Events are monotonic in the order count: binary search.
        let (mut low, mut high) = (0, target);
        while low < high {
            let mid = low + (high - low) / 2;
            if events_of(&chunks(mid, count)) >= target {
                high = mid;
            } else {
                low = mid + 1;
            }
        }
        Self::with_orders(step, low, count)
    }

    /// The probe customers' step: `customers` customers with the standard
    /// history, in one chunk.
    pub fn probe(step: u32, customers: u64) -> Self {
        Self::with_orders(step, customers * ORDERS_PER_CUSTOMER, 1)
    }

    fn with_orders(step: u32, orders: u64, chunk_count: u64) -> Self {
        Self {
            step,
            orders,
            customers: (orders / ORDERS_PER_CUSTOMER).max(1),
            chunks: chunks(orders, chunk_count),
        }
    }

    pub fn events(&self) -> u64 {
        events_of(&self.chunks)
    }

    pub fn products(&self) -> u64 {
        self.chunks.iter().map(|c| c.products).sum()
    }

    /// History rows: one per order event.
    pub fn history_rows(&self) -> u64 {
        self.chunks.iter().map(Chunk::order_events).sum()
    }
}

/// `orders` orders split into `count` chunks of equal size (the first
/// `orders % count` one order larger); none for no order.
fn chunks(orders: u64, count: u64) -> Vec<Chunk> {
    let count = count.clamp(1, orders.max(1));
    let mut out = Vec::new();
    let mut first = 1;
    let mut first_product = 0;
    for n in 0..count {
        let size = orders / count + u64::from(n < orders % count);
        if size == 0 {
            break;
        }
        let last = first + size - 1;
        let products = size.div_ceil(ORDERS_PER_PRODUCT).max(MIN_PRODUCTS);
        out.push(Chunk {
            first_order: first,
            last_order: last,
            first_product,
            products,
        });
        first = last + 1;
        first_product += products;
    }
    out
}

fn events_of(chunks: &[Chunk]) -> u64 {
    chunks.iter().map(Chunk::events).sum()
}

/// The business time of a step's orders: `[start, end]`, whole seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Span {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

impl Span {
    /// From the first day of the month [`HISTORY_MONTHS`] before `now` to two
    /// days before `now` (so that every event, shipping a day later
    /// included, is in the past).
    pub fn ending(now: DateTime<Utc>) -> Self {
        let today = now.date_naive();
        let first = today
            .checked_sub_months(Months::new(HISTORY_MONTHS))
            .and_then(|d| NaiveDate::from_ymd_opt(d.year(), d.month(), 1))
            .unwrap_or(today);
        let start = first.and_time(chrono::NaiveTime::MIN).and_utc();
        let end = now - chrono::TimeDelta::days(2);
        let end = DateTime::from_timestamp(end.timestamp(), 0).unwrap_or(end);
        Self { start, end }
    }

    fn literal(at: DateTime<Utc>) -> String {
        format!("'{}'::timestamptz", at.format("%Y-%m-%d %H:%M:%S+00"))
    }

    fn seconds(&self) -> i64 {
        (self.end - self.start).num_seconds().max(0)
    }
}

/// `md5('<tag>-<step>-<kind>-' || (<index>))::uuid`: deterministic ids, so
/// that the same chunk always writes the same aggregates.
fn id(tag: &str, step: u32, kind: &str, index: &str) -> String {
    format!("md5('{tag}-{step}-{kind}-' || ({index}))::uuid")
}

/// The base price of product number `index` (minor units).
fn price(index: &str) -> String {
    format!("(500 + (({index}) * 37) % 5000)")
}

/// The statements that write `chunk` of `plan` (one transaction: psql runs
/// a multi-statement `-c` string as one) and print one JSON object:
/// `{"xid", "by_type", "history_rows", "summaries", "products", "cursor"}`.
///
/// The relay's cursor moves past the chunk's events in the same
/// transaction. The relay would otherwise publish millions of made-up
/// events to Kafka before any measurement could start; with the cursor
/// moved it starts after them and publishes only what the measured appends
/// write, as a relay keeping up with its store does. Events of earlier
/// appends that it had not published when command-service was stopped are
/// skipped with them: nobody consumes the benchmark's topics.
/// `tag` is plain hex (`[0-9a-f]`): it is formatted into string literals.
pub fn chunk_sql(tag: &str, plan: &StepPlan, chunk: &Chunk, span: &Span) -> String {
    let step = plan.step;
    let Chunk {
        first_order,
        last_order,
        first_product,
        products,
    } = *chunk;
    let orders = plan.orders.max(1);
    let customers = plan.customers.max(1);
    let line_product = |j: &str| format!("{first_product} + (o.i * 7 + {j}) % {products}");
    let order_id = id(tag, step, "order", "i");
    let customer_id = id(tag, step, "customer", &format!("i % {customers}"));
    let line_id = id(tag, step, "product", &line_product("x.j"));
    let line_price = price(&line_product("x.j"));
    let added_id = id(tag, step, "product", &line_product("3"));
    let added_price = price(&line_product("3"));
    let product_id = id(tag, step, "product", "p");
    let product_price = price("p");
    let start = Span::literal(span.start);
    let span_seconds = span.seconds();
    let last_product = first_product + products - 1;
    let changes = PRICE_CHANGES_PER_PRODUCT;
    let mut sql = String::new();
    // Infallible: writing to a String.
    let _ = write!(
        sql,
        r#"SET TimeZone = 'UTC';
SET work_mem = '256MB';
CREATE TEMP TABLE cg_order ON COMMIT DROP AS
SELECT o.i, o.id, o.customer_id, o.placed_at, o.i % 10 AS pattern,
       l.lines, l.summary_lines, l.total,
       a.line AS added_line, a.summary_line AS added_summary,
       l.total + CASE WHEN o.i % 10 = 8 THEN a.amount ELSE 0 END AS final_total
  FROM (SELECT i, {order_id} AS id, {customer_id} AS customer_id,
               {start} + interval '1 second' * ((i - 1)::float8 * {span_seconds} / {orders}) AS placed_at
          FROM generate_series({first_order}, {last_order}) AS i) AS o
  CROSS JOIN LATERAL (
      SELECT json_agg(json_build_object(
                 'product_id', x.product_id, 'quantity', x.quantity,
                 'unit_price', json_build_object('amount_minor', x.price, 'currency', 'EUR'))
                 ORDER BY x.j) AS lines,
             jsonb_agg(jsonb_build_object(
                 'product_id', x.product_id, 'quantity', x.quantity,
                 'unit_price', jsonb_build_object('amount_minor', x.price, 'currency', 'EUR'),
                 'amount', jsonb_build_object('amount_minor', x.quantity * x.price, 'currency', 'EUR'))
                 ORDER BY x.j) AS summary_lines,
             sum(x.quantity * x.price)::bigint AS total
        FROM (SELECT x.j, {line_id} AS product_id, 1 + (o.i + x.j) % 5 AS quantity,
                     {line_price} AS price
                FROM generate_series(0, o.i % 3) AS x(j)) AS x) AS l
  CROSS JOIN LATERAL (
      SELECT json_build_object(
                 'product_id', p.id, 'quantity', 1,
                 'unit_price', json_build_object('amount_minor', p.price, 'currency', 'EUR')) AS line,
             jsonb_build_object(
                 'product_id', p.id, 'quantity', 1,
                 'unit_price', jsonb_build_object('amount_minor', p.price, 'currency', 'EUR'),
                 'amount', jsonb_build_object('amount_minor', p.price, 'currency', 'EUR')) AS summary_line,
             p.price::bigint AS amount
        FROM (SELECT {added_id} AS id, {added_price} AS price) AS p) AS a;
CREATE TEMP TABLE cg_event ON COMMIT DROP AS
SELECT o.id, o.customer_id, e.sequence, e.event_type, e.event_version, e.payload, e.at, e.kind, e.amount
  FROM cg_order o
  CROSS JOIN LATERAL (VALUES
      (1, 'OrderPlaced', '1',
       json_build_object('OrderPlaced', json_build_object('customer_id', o.customer_id, 'lines', o.lines)),
       o.placed_at, 'placed', o.total, true),
      (2, 'OrderLineAdded', '1',
       json_build_object('OrderLineAdded', json_build_object('line', o.added_line)),
       o.placed_at + interval '30 seconds', 'line_added', o.final_total, o.pattern = 8),
      (CASE WHEN o.pattern = 8 THEN 3 ELSE 2 END, 'OrderConfirmed', '1',
       json_build_object('OrderConfirmed', json_build_object()),
       o.placed_at + (1 + o.i % 50) * interval '1 minute', 'confirmed', o.final_total,
       o.pattern IN (0, 1, 2, 3, 4, 5, 6, 8)),
      (3, 'OrderShipped', '1',
       json_build_object('OrderShipped', json_build_object()),
       o.placed_at + interval '1 day' + (o.i % 24) * interval '1 hour', 'shipped', o.final_total,
       o.pattern <= 5),
      (3, 'OrderCancelled', '2',
       json_build_object('OrderCancelled', json_build_object('reason', 'out of stock', 'cancelled_by', 'merchant')),
       o.placed_at + interval '2 hours', 'cancelled', o.final_total, o.pattern = 6),
      (2, 'OrderCancelled', '2',
       json_build_object('OrderCancelled', json_build_object('reason', 'changed my mind', 'cancelled_by', 'customer')),
       o.placed_at + interval '30 minutes', 'cancelled', o.final_total, o.pattern = 7)
  ) AS e(sequence, event_type, event_version, payload, at, kind, amount, applies)
 WHERE e.applies;
CREATE TEMP TABLE cg_product ON COMMIT DROP AS
SELECT p, {product_id} AS id, {product_price} AS price,
       (SELECT min(placed_at) FROM cg_order) - interval '1 day' + (p - {first_product}) * interval '1 second' AS created_at
  FROM generate_series({first_product}, {last_product}) AS p;
INSERT INTO customer_order_history (customer_id, occurred_at, order_id, version, kind, amount_minor, currency)
SELECT customer_id, at, id, sequence, kind, amount, 'EUR' FROM cg_event ORDER BY at;
INSERT INTO order_summary (order_id, customer_id, status, lines, total_minor, currency, placed_at, updated_at, version)
SELECT o.id, o.customer_id,
       CASE WHEN o.pattern <= 5 THEN 'shipped' WHEN o.pattern IN (6, 7) THEN 'cancelled'
            WHEN o.pattern = 8 THEN 'confirmed' ELSE 'placed' END,
       CASE WHEN o.pattern = 8 THEN o.summary_lines || jsonb_build_array(o.added_summary)
            ELSE o.summary_lines END,
       o.final_total, 'EUR', o.placed_at, last.at, last.sequence
  FROM cg_order o
  JOIN (SELECT id, max(at) AS at, max(sequence) AS sequence FROM cg_event GROUP BY id) AS last
    ON last.id = o.id
 ORDER BY o.placed_at;
INSERT INTO product_catalog (product_id, sku, name, price_minor, currency, discontinued, version, updated_at)
SELECT id, 'CG-{tag}-{step}-' || p, 'Cost growth product ' || p,
       500 + (p * 37 + {changes} * 11) % 5000, 'EUR', false, 1 + {changes},
       created_at + {changes} * interval '1 hour'
  FROM cg_product;
WITH inserted AS (
    INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
    SELECT aggregate_type, id::text, sequence, event_type, event_version, payload,
           json_build_object('command_id', command_id,
                             'occurred_at', to_char(at, 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
                             'traceparent', '00-' || replace(command_id::text, '-', '')
                                            || '-' || left(md5(command_id::text), 16) || '-01')
      -- gen_random_uuid() in a subquery's target list: once per row (a
      -- volatile target list keeps the subquery from being flattened).
      FROM (SELECT e.*, gen_random_uuid() AS command_id FROM (
            SELECT 'Order' AS aggregate_type, id, sequence, event_type, event_version, payload, at
              FROM cg_event
            UNION ALL
            SELECT 'Product', id, 1, 'ProductCreated', '1',
                   json_build_object('ProductCreated', json_build_object(
                       'sku', 'CG-{tag}-{step}-' || p, 'name', 'Cost growth product ' || p,
                       'price', json_build_object('amount_minor', price, 'currency', 'EUR'))),
                   created_at
              FROM cg_product
            UNION ALL
            SELECT 'Product', pr.id, 1 + k, 'ProductPriceChanged', '1',
                   json_build_object('ProductPriceChanged', json_build_object(
                       'price', json_build_object('amount_minor', 500 + (pr.p * 37 + k * 11) % 5000,
                                                  'currency', 'EUR'))),
                   pr.created_at + k * interval '1 hour'
              FROM cg_product pr, generate_series(1, {changes}) AS k) AS e) AS e
     ORDER BY at, aggregate_type, id, sequence
    RETURNING event_type, position
), moved AS (
    INSERT INTO outbox_cursor (relay, transaction_id, position, updated_at)
    SELECT '{RELAY_NAME}', pg_current_xact_id(), max(position), now() FROM inserted HAVING count(*) > 0
    ON CONFLICT (relay) DO UPDATE
       SET transaction_id = EXCLUDED.transaction_id, position = EXCLUDED.position,
           updated_at = EXCLUDED.updated_at
    RETURNING position
)
SELECT json_build_object(
           'xid', pg_current_xact_id()::text,
           'by_type', (SELECT json_object_agg(event_type, n)
                         FROM (SELECT event_type, count(*) AS n FROM inserted GROUP BY 1) AS c),
           'history_rows', (SELECT count(*) FROM cg_event),
           'summaries', (SELECT count(*) FROM cg_order),
           'products', (SELECT count(*) FROM cg_product),
           'cursor', (SELECT position FROM moved));"#
    );
    sql
}

/// What [`chunk_sql`] reports.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ChunkWritten {
    pub xid: String,
    pub by_type: BTreeMap<String, u64>,
    pub history_rows: u64,
    pub summaries: u64,
    pub products: u64,
    pub cursor: Option<i64>,
}

/// Deletes everything the benchmark measures against: the event store, the
/// relay's cursor and the read models (the monthly partitions stay).
pub const RESET_SQL: &str = "TRUNCATE events, snapshots, idempotency_keys, outbox_cursor, \
     product_catalog, order_summary, customer_order_history, daily_sales";

/// The relations whose sizes the report shows, each as the sum of its
/// partitions: name → bytes, as one JSON object.
pub const RELATION_SIZES_SQL: &str = "SELECT json_object_agg(name, bytes) FROM (
    SELECT c.relname::text AS name, pg_relation_size(c.oid) AS bytes
      FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE n.nspname = 'public'
       AND c.relname IN ('events', 'events_pkey', 'events_position_key', 'events_outbox_order',
                         'order_summary', 'order_summary_pkey', 'order_summary_by_customer')
    UNION ALL
    SELECT 'customer_order_history', coalesce(sum(pg_relation_size(relid)), 0)::bigint
      FROM pg_partition_tree('customer_order_history')
    UNION ALL
    SELECT 'customer_order_history_pkey', coalesce(sum(pg_relation_size(relid)), 0)::bigint
      FROM pg_partition_tree('customer_order_history_pkey')) AS s";

/// Tables `VACUUM ANALYZE`d after every growth step (one statement each:
/// VACUUM cannot run inside psql's multi-statement transaction).
pub const VACUUMED: [&str; 5] = [
    "events",
    "customer_order_history",
    "order_summary",
    "product_catalog",
    "outbox_cursor",
];

/// The history query of query-service (`read_model::customer_order_history`
/// without a cursor), with its parameters as literals, under `EXPLAIN
/// (ANALYZE, BUFFERS, FORMAT JSON)`.
pub fn explain_history_sql(
    customer: &str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    limit: u32,
) -> String {
    let at = |t: DateTime<Utc>| format!("'{}'::timestamptz", t.format("%Y-%m-%d %H:%M:%S%.6f+00"));
    format!(
        "SET TimeZone = 'UTC';
EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON)
SELECT occurred_at, order_id, version, kind, amount_minor, currency
  FROM customer_order_history
 WHERE customer_id = '{customer}'::uuid
   AND occurred_at >= {}
   AND occurred_at < {}
 ORDER BY occurred_at, order_id, version
 LIMIT {limit}",
        at(from),
        at(to)
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_step_has_the_smallest_order_count_reaching_its_target() {
        for target in [1, 999, 10_000, 1_000_000] {
            let plan = StepPlan::for_events(1, target, CHUNK_EVENTS);
            assert!(plan.events() >= target, "{target}: {plan:?}");
            let count = plan.chunks.len() as u64;
            let smaller = StepPlan::with_orders(1, plan.orders - 1, count);
            assert!(smaller.events() < target, "{target}: not the smallest");
        }
        assert_eq!(StepPlan::for_events(1, 0, CHUNK_EVENTS).events(), 0);
    }

    #[test]
    fn a_million_events_come_in_chunks_of_about_a_quarter_million() {
        let plan = StepPlan::for_events(1, 1_000_000, CHUNK_EVENTS);
        assert_eq!(plan.chunks.len(), 4);
        for chunk in &plan.chunks {
            let events = chunk.events();
            assert!((240_000..=260_000).contains(&events), "{events}");
        }
        // Contiguous orders and products, no gap, no overlap.
        for pair in plan.chunks.windows(2) {
            assert_eq!(pair[1].first_order, pair[0].last_order + 1);
            assert_eq!(
                pair[1].first_product,
                pair[0].first_product + pair[0].products
            );
        }
        assert_eq!(plan.chunks[0].first_order, 1);
        assert_eq!(plan.chunks.last().unwrap().last_order, plan.orders);
        assert_eq!(plan.customers, plan.orders / ORDERS_PER_CUSTOMER);
    }

    #[test]
    fn event_counts_match_a_literal_count() {
        let chunk = Chunk {
            first_order: 7,
            last_order: 1234,
            first_product: 10,
            products: 25,
        };
        let literal: u64 = (7..=1234u64)
            .map(|i| ORDER_PATTERNS[(i % 10) as usize].len() as u64)
            .sum();
        assert_eq!(chunk.order_events(), literal);
        let by_type = chunk.events_by_type();
        assert_eq!(by_type.values().sum::<u64>(), chunk.events());
        assert_eq!(by_type["OrderPlaced"], chunk.orders());
        assert_eq!(by_type["ProductCreated"], 25);
        assert_eq!(by_type["ProductPriceChanged"], 100);
    }

    #[test]
    fn the_probe_is_one_chunk_of_standard_customers() {
        let plan = StepPlan::probe(0, 8);
        assert_eq!(plan.customers, 8);
        assert_eq!(plan.orders, 160);
        assert_eq!(plan.chunks.len(), 1);
        assert_eq!(plan.chunks[0].products, MIN_PRODUCTS);
        assert_eq!(plan.history_rows(), 160 * 27 / 10);
    }

    #[test]
    fn the_span_starts_on_the_first_of_a_month_and_ends_two_days_ago() {
        let now = DateTime::parse_from_rfc3339("2026-03-31T10:11:12.5Z")
            .unwrap()
            .with_timezone(&Utc);
        let span = Span::ending(now);
        assert_eq!(span.start.to_rfc3339(), "2025-09-01T00:00:00+00:00");
        assert_eq!(span.end.to_rfc3339(), "2026-03-29T10:11:12+00:00");
    }

    #[test]
    fn the_chunk_sql_is_filled_in_and_moves_the_relay_cursor() {
        let plan = StepPlan::for_events(2, 600_000, CHUNK_EVENTS);
        let chunk = plan.chunks[1];
        let now = DateTime::parse_from_rfc3339("2026-11-23T04:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let sql = chunk_sql("abc123", &plan, &chunk, &Span::ending(now));
        for unfilled in ["{tag}", "{step}", "{first_order}", "{orders}", "{products}"] {
            assert!(!sql.contains(unfilled), "{unfilled} left in {sql}");
        }
        assert!(
            sql.contains(&format!(
                "generate_series({}, {})",
                chunk.first_order, chunk.last_order
            )),
            "{sql}"
        );
        assert!(sql.contains("md5('abc123-2-order-' || (i))::uuid"), "{sql}");
        assert!(
            sql.contains(&format!(
                "md5('abc123-2-customer-' || (i % {}))::uuid",
                plan.customers
            )),
            "{sql}"
        );
        assert!(
            sql.contains("'2026-05-01 00:00:00+00'::timestamptz"),
            "{sql}"
        );
        assert!(sql.contains("INSERT INTO outbox_cursor"), "{sql}");
        assert!(sql.contains("SELECT 'main', pg_current_xact_id()"), "{sql}");
        // Lines name products of the chunk only.
        assert!(
            sql.contains(&format!(
                "{} + (o.i * 7 + x.j) % {}",
                chunk.first_product, chunk.products
            )),
            "{sql}"
        );
    }

    #[test]
    fn the_explained_query_is_query_services() {
        let at = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
        let sql = explain_history_sql(
            "00000000-0000-0000-0000-000000000001",
            at("2026-08-25T04:00:00.123456Z"),
            at("2026-11-23T04:00:00.123456Z"),
            501,
        );
        assert!(sql.contains("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON)"));
        assert!(sql.contains("occurred_at >= '2026-08-25 04:00:00.123456+00'::timestamptz"));
        assert!(sql.contains("occurred_at < '2026-11-23 04:00:00.123456+00'::timestamptz"));
        assert!(sql.contains("ORDER BY occurred_at, order_id, version\n LIMIT 501"));
    }
}
