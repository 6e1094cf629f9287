//! Validation of query parameters: ranges and page sizes. Pure functions, so
//! the rules are unit-tested without a server.

use chrono::{DateTime, NaiveDate, SecondsFormat, TimeDelta, Utc};

use crate::error::QueryError;

/// A half-open time range `[from, to)`, at most [`TimeRange::MAX_SPAN_DAYS`] long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeRange {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
}

impl TimeRange {
    /// Span used when `from` is omitted.
    pub const DEFAULT_SPAN_DAYS: i64 = 90;
    /// Longest range accepted.
    pub const MAX_SPAN_DAYS: i64 = 366;
    /// How far past `now` the default `to` reaches. Events are stamped with the
    /// writer's clock, which may run ahead of ours.
    pub const DEFAULT_LOOKAHEAD_DAYS: i64 = 1;

    /// Fills in the defaults (`to = now + 1 day`, `from = to − 90 days`) and
    /// checks that the range is non-empty and at most 366 days long.
    pub fn resolve(
        from: Option<DateTime<Utc>>,
        to: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Result<Self, QueryError> {
        let out_of_range = || QueryError::InvalidRange("timestamp out of range".to_owned());
        let to = match to {
            Some(to) => to,
            None => now
                .checked_add_signed(TimeDelta::days(Self::DEFAULT_LOOKAHEAD_DAYS))
                .ok_or_else(out_of_range)?,
        };
        let from = match from {
            Some(from) => from,
            None => to
                .checked_sub_signed(TimeDelta::days(Self::DEFAULT_SPAN_DAYS))
                .ok_or_else(out_of_range)?,
        };
        if from >= to {
            return Err(QueryError::InvalidRange(format!(
                "from ({}) must be before to ({})",
                from.to_rfc3339_opts(SecondsFormat::AutoSi, true),
                to.to_rfc3339_opts(SecondsFormat::AutoSi, true)
            )));
        }
        if to - from > TimeDelta::days(Self::MAX_SPAN_DAYS) {
            return Err(QueryError::InvalidRange(format!(
                "the range may span at most {} days",
                Self::MAX_SPAN_DAYS
            )));
        }
        Ok(Self { from, to })
    }
}

/// An inclusive range of calendar days, at most [`DateRange::MAX_DAYS`] days.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DateRange {
    pub from: NaiveDate,
    pub to: NaiveDate,
}

impl DateRange {
    /// Most days one request may cover, both ends counted.
    pub const MAX_DAYS: i64 = 366;

    /// Both ends are required; `from` may equal `to` (one day).
    pub fn new(from: Option<NaiveDate>, to: Option<NaiveDate>) -> Result<Self, QueryError> {
        let missing = |name: &'static str| QueryError::InvalidParameter {
            name,
            reason: "is required (YYYY-MM-DD)".to_owned(),
        };
        let from = from.ok_or_else(|| missing("from"))?;
        let to = to.ok_or_else(|| missing("to"))?;
        if from > to {
            return Err(QueryError::InvalidRange(format!(
                "from ({from}) must not be after to ({to})"
            )));
        }
        if (to - from).num_days() + 1 > Self::MAX_DAYS {
            return Err(QueryError::InvalidRange(format!(
                "the range may cover at most {} days",
                Self::MAX_DAYS
            )));
        }
        Ok(Self { from, to })
    }
}

/// A page size: `default` when absent, at most `max` (larger requests are
/// clamped, not refused, so a client asking for "everything" still gets a
/// page), and at least 1.
pub fn page_limit(requested: Option<u32>, default: u32, max: u32) -> Result<i64, QueryError> {
    match requested {
        Some(0) => Err(QueryError::InvalidParameter {
            name: "limit",
            reason: "must be at least 1".to_owned(),
        }),
        Some(n) => Ok(i64::from(n.min(max))),
        None => Ok(i64::from(default.min(max))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .expect("timestamp")
            .with_timezone(&Utc)
    }

    fn day(s: &str) -> NaiveDate {
        s.parse().expect("date")
    }

    #[test]
    fn time_range_defaults_to_ninety_days_ending_tomorrow() {
        let now = at("2026-03-10T12:00:00Z");
        let range = TimeRange::resolve(None, None, now).expect("range");
        assert_eq!(range.to, at("2026-03-11T12:00:00Z"));
        assert_eq!(range.from, at("2025-12-11T12:00:00Z"));
    }

    #[test]
    fn time_range_default_from_counts_back_from_given_to() {
        let now = at("2026-03-10T12:00:00Z");
        let range = TimeRange::resolve(None, Some(at("2026-01-31T00:00:00Z")), now).expect("range");
        assert_eq!(range.from, at("2025-11-02T00:00:00Z"));
    }

    #[test]
    fn time_range_keeps_explicit_bounds() {
        let (from, to) = (at("2026-01-01T00:00:00Z"), at("2026-02-01T00:00:00Z"));
        let range = TimeRange::resolve(Some(from), Some(to), Utc::now()).expect("range");
        assert_eq!((range.from, range.to), (from, to));
    }

    #[test]
    fn time_range_rejects_empty_reversed_and_too_long() {
        let t = at("2026-01-01T00:00:00Z");
        let now = Utc::now();
        for (from, to) in [
            (t, t),
            (t, t - TimeDelta::seconds(1)),
            (t, t + TimeDelta::days(366) + TimeDelta::seconds(1)),
        ] {
            let result = TimeRange::resolve(Some(from), Some(to), now);
            assert!(
                matches!(result, Err(QueryError::InvalidRange(_))),
                "{from}..{to}"
            );
        }
        assert!(TimeRange::resolve(Some(t), Some(t + TimeDelta::days(366)), now).is_ok());
    }

    #[test]
    fn time_range_rejects_from_after_default_to() {
        let now = at("2026-03-10T12:00:00Z");
        let result = TimeRange::resolve(Some(at("2026-04-01T00:00:00Z")), None, now);
        assert!(matches!(result, Err(QueryError::InvalidRange(_))));
    }

    #[test]
    fn date_range_is_inclusive_and_at_most_366_days() {
        assert!(DateRange::new(Some(day("2026-01-01")), Some(day("2026-01-01"))).is_ok());
        // 2024 is a leap year: Jan 1 to Dec 31 is 366 days.
        assert!(DateRange::new(Some(day("2024-01-01")), Some(day("2024-12-31"))).is_ok());
        assert!(matches!(
            DateRange::new(Some(day("2024-01-01")), Some(day("2025-01-01"))),
            Err(QueryError::InvalidRange(_))
        ));
        assert!(matches!(
            DateRange::new(Some(day("2026-01-02")), Some(day("2026-01-01"))),
            Err(QueryError::InvalidRange(_))
        ));
    }

    #[test]
    fn date_range_requires_both_ends() {
        for (from, to, name) in [
            (None, Some(day("2026-01-01")), "from"),
            (Some(day("2026-01-01")), None, "to"),
        ] {
            match DateRange::new(from, to) {
                Err(QueryError::InvalidParameter { name: n, .. }) => assert_eq!(n, name),
                other => panic!("expected missing {name}, got {other:?}"),
            }
        }
    }

    #[test]
    fn page_limit_defaults_clamps_and_rejects_zero() {
        assert_eq!(page_limit(None, 500, 1000).ok(), Some(500));
        assert_eq!(page_limit(Some(20), 500, 1000).ok(), Some(20));
        assert_eq!(page_limit(Some(5000), 500, 1000).ok(), Some(1000));
        assert_eq!(page_limit(Some(u32::MAX), 50, 200).ok(), Some(200));
        assert!(matches!(
            page_limit(Some(0), 50, 200),
            Err(QueryError::InvalidParameter { name: "limit", .. })
        ));
    }
}
