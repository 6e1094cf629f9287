//! Monthly partitions of `customer_order_history`, created before the first
//! row of a month is written.

use std::collections::HashSet;

use chrono::{DateTime, Datelike, NaiveDate, Utc};
use sqlx::PgPool;

/// A calendar month in UTC, the unit of partitioning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Month {
    pub year: i32,
    pub month: u32,
}

impl Month {
    pub fn of(at: DateTime<Utc>) -> Self {
        Self {
            year: at.year(),
            month: at.month(),
        }
    }

    fn first_day(self) -> Option<NaiveDate> {
        NaiveDate::from_ymd_opt(self.year, self.month, 1)
    }

    fn next(self) -> Self {
        if self.month == 12 {
            Self {
                year: self.year + 1,
                month: 1,
            }
        } else {
            Self {
                year: self.year,
                month: self.month + 1,
            }
        }
    }

    /// `customer_order_history_p2026_11`
    pub fn partition_name(self) -> String {
        format!("customer_order_history_p{:04}_{:02}", self.year, self.month)
    }

    /// The DDL creating this month's partition if it is missing. Only integers
    /// from a `Month` are formatted into it, never input.
    fn create_statement(self) -> Option<String> {
        let from = self.first_day()?;
        let to = self.next().first_day()?;
        Some(format!(
            "CREATE TABLE IF NOT EXISTS {name} PARTITION OF customer_order_history \
             FOR VALUES FROM ('{from} 00:00:00+00') TO ('{to} 00:00:00+00')",
            name = self.partition_name()
        ))
    }
}

/// Remembers which partitions exist so that the common case costs nothing.
#[derive(Debug, Default)]
pub struct PartitionKeeper {
    known: HashSet<Month>,
}

impl PartitionKeeper {
    /// Makes sure every month in `months` has its partition.
    pub async fn ensure(&mut self, pool: &PgPool, months: &[Month]) -> Result<(), sqlx::Error> {
        for &month in months {
            if self.known.contains(&month) {
                continue;
            }
            let Some(ddl) = month.create_statement() else {
                continue;
            };
            // CREATE TABLE IF NOT EXISTS is not safe against a concurrent
            // create of the same name; projector instances serialise on an
            // advisory lock for the few milliseconds DDL takes.
            let mut tx = pool.begin().await?;
            sqlx::query(
                "SELECT pg_advisory_xact_lock(hashtext('customer_order_history partitions'))",
            )
            .execute(&mut *tx)
            .await?;
            sqlx::query(&ddl).execute(&mut *tx).await?;
            tx.commit().await?;
            tracing::info!(partition = %month.partition_name(), "partition ready");
            self.known.insert(month);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn december_rolls_into_next_year() {
        let dec = Month {
            year: 2026,
            month: 12,
        };
        let ddl = dec.create_statement().expect("ddl");
        assert!(ddl.contains("customer_order_history_p2026_12"));
        assert!(ddl.contains("FROM ('2026-12-01 00:00:00+00') TO ('2027-01-01 00:00:00+00')"));
    }
}
