//! The projector's read models in a comparable shape, both as stored and as
//! folded from the event store, so a test can check that what the projector
//! built is exactly what the events say (after faults, after a rebuild).

use std::collections::BTreeMap;
use std::fmt;

use schema::envelope::AnyEvent;
use schema::product::ProductEvent;
use schema::views::{OrderStatus, OrderSummary};
use sqlx::PgPool;
use uuid::Uuid;

/// Products as `name|price|version`, orders as `status|total|lines|version`,
/// net units sold per product (`daily_sales` summed over days), and the
/// number of history rows (one per order event).
#[derive(Debug, PartialEq, Eq)]
pub struct ReadModels {
    pub products: BTreeMap<Uuid, String>,
    pub orders: BTreeMap<Uuid, String>,
    pub units: BTreeMap<Uuid, i64>,
    pub history_rows: i64,
}

impl fmt::Display for ReadModels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} products, {} orders, {} history rows",
            self.products.len(),
            self.orders.len(),
            self.history_rows
        )
    }
}

impl ReadModels {
    /// What the projector should have built: every event of the store folded
    /// in sequence order (orders with the projector's own fold, products by
    /// hand).
    pub async fn folded_from_event_store(pool: &PgPool) -> Self {
        let rows: Vec<(String, String, i64, String, String, String, String)> = sqlx::query_as(
            "SELECT aggregate_type, aggregate_id, sequence, event_type, event_version, payload::text,
                    metadata ->> 'occurred_at'
               FROM events ORDER BY aggregate_type, aggregate_id, sequence",
        )
        .fetch_all(pool)
        .await
        .expect("read the event store");
        let mut products: BTreeMap<Uuid, (String, i64, i64)> = BTreeMap::new();
        let mut orders: BTreeMap<Uuid, OrderSummary> = BTreeMap::new();
        let mut order_events = 0;
        for (aggregate_type, id, sequence, event_type, version, payload, at) in rows {
            let id: Uuid = id.parse().expect("uuid aggregate id");
            let at = chrono::DateTime::parse_from_rfc3339(&at)
                .expect("occurred_at")
                .with_timezone(&chrono::Utc);
            let event = AnyEvent::decode_versioned(
                &aggregate_type,
                &event_type,
                &version,
                payload.as_bytes(),
            )
            .expect("stored events decode");
            match event {
                AnyEvent::Product(event) => {
                    let entry = products.entry(id).or_insert((String::new(), 0, 0));
                    match event {
                        ProductEvent::ProductCreated { name, price, .. } => {
                            *entry = (name, price.amount_minor, 0);
                        }
                        ProductEvent::ProductRenamed { name } => entry.0 = name,
                        ProductEvent::ProductPriceChanged { price } => entry.1 = price.amount_minor,
                        ProductEvent::ProductDiscontinued {} => {}
                    }
                    entry.2 = sequence;
                }
                AnyEvent::Order(event) => {
                    order_events += 1;
                    let folded = projector::order_summary::fold(
                        orders.remove(&id),
                        id,
                        &event,
                        at,
                        sequence,
                    )
                    .expect("stored order events fold");
                    orders.insert(id, folded);
                }
            }
        }
        let mut units: BTreeMap<Uuid, i64> = BTreeMap::new();
        for summary in orders.values() {
            if matches!(
                summary.status,
                OrderStatus::Confirmed | OrderStatus::Shipped
            ) {
                for line in &summary.lines {
                    *units.entry(line.product_id).or_insert(0) += i64::from(line.quantity);
                }
            }
        }
        units.retain(|_, n| *n != 0);
        Self {
            products: products
                .into_iter()
                .map(|(id, (name, price, v))| (id, format!("{name}|{price}|{v}")))
                .collect(),
            orders: orders
                .into_iter()
                .map(|(id, s)| {
                    let status = s.status.as_str();
                    let shape = format!(
                        "{status}|{}|{}|{}",
                        s.total.amount_minor,
                        s.lines.len(),
                        s.version
                    );
                    (id, shape)
                })
                .collect(),
            units,
            history_rows: order_events,
        }
    }

    /// The read models as the projector stored them (on `pool`'s database).
    pub async fn stored(pool: &PgPool) -> Self {
        let products = sqlx::query_as::<_, (Uuid, String, i64, i64)>(
            "SELECT product_id, name, price_minor, version FROM product_catalog",
        )
        .fetch_all(pool)
        .await
        .expect("read product_catalog")
        .into_iter()
        .map(|(id, name, price, v)| (id, format!("{name}|{price}|{v}")))
        .collect();
        let orders = sqlx::query_as::<_, (Uuid, String, i64, i64, i64)>(
            "SELECT order_id, status, total_minor, jsonb_array_length(lines)::bigint, version
               FROM order_summary",
        )
        .fetch_all(pool)
        .await
        .expect("read order_summary")
        .into_iter()
        .map(|(id, status, total, lines, v)| (id, format!("{status}|{total}|{lines}|{v}")))
        .collect();
        let units = sqlx::query_as::<_, (Uuid, i64)>(
            "SELECT product_id, sum(units)::bigint FROM daily_sales
              GROUP BY product_id HAVING sum(units) <> 0",
        )
        .fetch_all(pool)
        .await
        .expect("read daily_sales")
        .into_iter()
        .collect();
        let history_rows = sqlx::query_scalar("SELECT count(*) FROM customer_order_history")
            .fetch_one(pool)
            .await
            .expect("count customer_order_history");
        Self {
            products,
            orders,
            units,
            history_rows,
        }
    }

    /// Every way `have` differs from `self` (at most `limit` lines).
    pub fn differences(&self, have: &Self, limit: usize) -> Vec<String> {
        fn diff<V: PartialEq + fmt::Debug>(
            what: &str,
            want: &BTreeMap<Uuid, V>,
            have: &BTreeMap<Uuid, V>,
            out: &mut Vec<String>,
        ) {
            out.extend(
                want.iter()
                    .filter(|(id, v)| have.get(id) != Some(v))
                    .map(|(id, v)| format!("{what} {id}: want {v:?}, have {:?}", have.get(id))),
            );
            out.extend(
                have.keys()
                    .filter(|id| !want.contains_key(id))
                    .map(|id| format!("{what} {id}: not in the event store")),
            );
        }
        let mut out = Vec::new();
        diff("product", &self.products, &have.products, &mut out);
        diff("order", &self.orders, &have.orders, &mut out);
        diff("units of product", &self.units, &have.units, &mut out);
        if self.history_rows != have.history_rows {
            out.push(format!(
                "history rows: want {} (one per order event), have {}",
                self.history_rows, have.history_rows
            ));
        }
        out.truncate(limit);
        out
    }

    /// Panics with the first differences unless `have` equals `self`.
    pub fn assert_equal(&self, have: &Self) {
        let diffs = self.differences(have, 10);
        assert!(
            diffs.is_empty(),
            "read models differ from the fold, e.g.:\n{}",
            diffs.join("\n")
        );
    }
}
