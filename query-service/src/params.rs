//! Validation of query parameters: ranges, page sizes and pagination
//! cursors. Pure functions, so the rules are unit-tested without a server.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::{DateTime, NaiveDate, SecondsFormat, TimeDelta, Utc};
use schema::money::Currency;
use uuid::Uuid;

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

/// A page size: `default` when absent, else between 1 and `max`. A larger
/// request is refused (400) rather than clamped, so a client that asks for
/// "everything" learns the bound instead of silently getting less.
pub fn page_limit(requested: Option<u32>, default: u32, max: u32) -> Result<i64, QueryError> {
    match requested {
        Some(0) => Err(QueryError::InvalidParameter {
            name: "limit",
            reason: "must be at least 1".to_owned(),
        }),
        Some(n) if n > max => Err(QueryError::InvalidParameter {
            name: "limit",
            reason: format!("must be at most {max}"),
        }),
        Some(n) => Ok(i64::from(n)),
        None => Ok(i64::from(default.min(max))),
    }
}

/// A keyset pagination cursor: the sort key of the last item of a page,
/// handed to the client as an opaque `next_after` string and sent back as
/// `after` for the next page.
///
/// Wire form: the unpadded base64url encoding of the key's fields, each in one
/// canonical text form, joined by `|`. Decoding is strict: the string must be
/// at most [`MAX_CURSOR_LEN`] characters, valid unpadded base64url of UTF-8
/// text, have exactly the key's number of fields, each of which parses, and
/// encode back to the very same string (so there is one spelling of each
/// cursor, and a tampered one is refused rather than guessed at). Anything
/// else is a 400 naming `after`. A cursor carries no signature: a client that
/// forges a well-formed one only pages from another place of its own list.
pub trait Cursor: Sized {
    /// The key's fields in their canonical text form; none contains `|`.
    fn fields(&self) -> Vec<String>;

    /// The key from exactly its fields, `None` if one does not parse.
    fn from_fields(fields: &[&str]) -> Option<Self>;

    /// The opaque string clients receive as `next_after`.
    fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.fields().join("|"))
    }

    /// The cursor of an `after` parameter; `InvalidParameter { name: "after" }`
    /// unless it is exactly what [`Cursor::encode`] produces for some key.
    fn decode(raw: &str) -> Result<Self, QueryError> {
        let invalid = |reason: &str| QueryError::InvalidParameter {
            name: "after",
            reason: reason.to_owned(),
        };
        if raw.len() > MAX_CURSOR_LEN {
            return Err(invalid(&format!(
                "is longer than {MAX_CURSOR_LEN} characters"
            )));
        }
        let not_ours = || invalid("is not a cursor of this list (pass next_after as is)");
        let bytes = URL_SAFE_NO_PAD.decode(raw).map_err(|_| not_ours())?;
        let text = String::from_utf8(bytes).map_err(|_| not_ours())?;
        let fields: Vec<&str> = text.split('|').collect();
        let cursor = Self::from_fields(&fields).ok_or_else(not_ours)?;
        if cursor.encode() != raw {
            return Err(not_ours());
        }
        Ok(cursor)
    }

    /// `decode` of an optional parameter.
    fn from_param(raw: Option<&str>) -> Result<Option<Self>, QueryError> {
        raw.map(Self::decode).transpose()
    }
}

/// Longest `after` accepted: far more than any cursor this service issues
/// (about 110 characters), little enough that nothing large gets decoded.
pub const MAX_CURSOR_LEN: usize = 256;

/// Position in a customer's order history: its sort key
/// (`occurred_at`, `order_id`, `version`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryCursor {
    /// Microsecond precision, as Postgres stores it.
    pub occurred_at: DateTime<Utc>,
    pub order_id: Uuid,
    pub version: i64,
}

impl Cursor for HistoryCursor {
    fn fields(&self) -> Vec<String> {
        vec![
            self.occurred_at
                .to_rfc3339_opts(SecondsFormat::Micros, true),
            self.order_id.hyphenated().to_string(),
            self.version.to_string(),
        ]
    }

    fn from_fields(fields: &[&str]) -> Option<Self> {
        let [occurred_at, order_id, version] = fields else {
            return None;
        };
        Some(Self {
            occurred_at: DateTime::parse_from_rfc3339(occurred_at)
                .ok()?
                .with_timezone(&Utc),
            order_id: Uuid::try_parse(order_id).ok()?,
            version: version.parse().ok()?,
        })
    }
}

/// Position in the daily sales report: its sort key
/// (`day`, `product_id`, `currency`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DailySalesCursor {
    pub day: NaiveDate,
    pub product_id: Uuid,
    /// An ISO 4217 code (three upper-case letters).
    pub currency: String,
}

impl Cursor for DailySalesCursor {
    fn fields(&self) -> Vec<String> {
        vec![
            self.day.format("%Y-%m-%d").to_string(),
            self.product_id.hyphenated().to_string(),
            self.currency.clone(),
        ]
    }

    fn from_fields(fields: &[&str]) -> Option<Self> {
        let [day, product_id, currency] = fields else {
            return None;
        };
        Some(Self {
            day: NaiveDate::parse_from_str(day, "%Y-%m-%d").ok()?,
            product_id: Uuid::try_parse(product_id).ok()?,
            currency: Currency::try_from(*currency).ok()?.as_str().to_owned(),
        })
    }
}

/// Splits the rows of a `limit + 1` fetch into the page (at most `limit`
/// rows) and the `next_after` of the next page: `key` of the page's last row
/// if the extra row came back, `None` on the last page (so a client is never
/// sent to an empty page). Every list pages this way.
pub fn paginate<T, K>(mut rows: Vec<T>, limit: i64, key: impl Fn(&T) -> K) -> (Vec<T>, Option<K>) {
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let has_more = rows.len() > limit;
    rows.truncate(limit);
    let next_after = if has_more { rows.last().map(key) } else { None };
    (rows, next_after)
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
    fn page_limit_defaults_and_rejects_zero_and_too_large() {
        assert_eq!(page_limit(None, 500, 1000).ok(), Some(500));
        assert_eq!(page_limit(Some(20), 500, 1000).ok(), Some(20));
        assert_eq!(page_limit(Some(1000), 500, 1000).ok(), Some(1000));
        for abuse in [0, 1001, u32::MAX] {
            assert!(matches!(
                page_limit(Some(abuse), 500, 1000),
                Err(QueryError::InvalidParameter { name: "limit", .. })
            ));
        }
    }

    fn history_cursor() -> HistoryCursor {
        HistoryCursor {
            occurred_at: at("2026-01-02T03:04:05.123456Z"),
            order_id: Uuid::from_u128(0x1234),
            version: 7,
        }
    }

    fn sales_cursor() -> DailySalesCursor {
        DailySalesCursor {
            day: day("2026-01-02"),
            product_id: Uuid::from_u128(0xabcd),
            currency: "EUR".to_owned(),
        }
    }

    fn encoded(text: &str) -> String {
        URL_SAFE_NO_PAD.encode(text)
    }

    fn is_bad_after<T: std::fmt::Debug>(result: Result<T, QueryError>) -> bool {
        matches!(
            result,
            Err(QueryError::InvalidParameter { name: "after", .. })
        )
    }

    #[test]
    fn cursors_round_trip() {
        let history = history_cursor();
        let raw = history.encode();
        assert_eq!(
            raw,
            encoded("2026-01-02T03:04:05.123456Z|00000000-0000-0000-0000-000000001234|7")
        );
        assert_eq!(HistoryCursor::decode(&raw).ok(), Some(history));

        let sales = sales_cursor();
        let raw = sales.encode();
        assert_eq!(
            raw,
            encoded("2026-01-02|00000000-0000-0000-0000-00000000abcd|EUR")
        );
        assert_eq!(DailySalesCursor::decode(&raw).ok(), Some(sales));

        // Whole seconds still carry six digits: one spelling per instant.
        let whole = HistoryCursor {
            occurred_at: at("2026-01-02T03:04:05Z"),
            ..history
        };
        assert_eq!(HistoryCursor::decode(&whole.encode()).ok(), Some(whole));
        assert!(HistoryCursor::from_param(None).is_ok_and(|c| c.is_none()));
    }

    #[test]
    fn malformed_cursors_are_bad_after() {
        let id = "00000000-0000-0000-0000-000000001234";
        for text in [
            "",
            "2026-01-02T03:04:05.123456Z",
            &format!("2026-01-02T03:04:05.123456Z|{id}"),
            &format!("2026-01-02T03:04:05.123456Z|{id}|7|8"),
            &format!("yesterday|{id}|7"),
            "2026-01-02T03:04:05.123456Z|not-a-uuid|7",
            &format!("2026-01-02T03:04:05.123456Z|{id}|seven"),
            &format!("2026-01-02T03:04:05.123456Z|{id}|99999999999999999999"),
            // Parses, but is not the canonical spelling of that key.
            &format!("2026-01-02T03:04:05.123456+00:00|{id}|7"),
            &format!("2026-01-02T03:04:05.1234567Z|{id}|7"),
            &format!("2026-01-02T03:04:05Z|{id}|7"),
            "2026-01-02T03:04:05.123456Z|00000000-0000-0000-0000-00000000ABCD|7",
            &format!("2026-01-02T03:04:05.123456Z|{}|7", id.replace('-', "")),
            &format!("2026-01-02T03:04:05.123456Z|{id}|+7"),
            &format!("2026-01-02T03:04:05.123456Z|{id}|07"),
        ] {
            assert!(
                is_bad_after(HistoryCursor::decode(&encoded(text))),
                "{text}"
            );
        }
        for text in [
            &format!("2026-01-02|{id}"),
            &format!("2026-1-2|{id}|EUR"),
            &format!("2026-02-30|{id}|EUR"),
            &format!("2026-01-02|{id}|eur"),
            &format!("2026-01-02|{id}|EURO"),
            &format!("2026-01-02|{id}|"),
            &format!("2026-01-02|{id}|EUR|"),
        ] {
            assert!(
                is_bad_after(DailySalesCursor::decode(&encoded(text))),
                "{text}"
            );
        }
        // A cursor of one list is not one of the other.
        assert!(is_bad_after(DailySalesCursor::decode(
            &history_cursor().encode()
        )));
        assert!(is_bad_after(HistoryCursor::decode(
            &sales_cursor().encode()
        )));
    }

    #[test]
    fn tampered_or_oversized_base64_is_bad_after() {
        let raw = history_cursor().encode();
        let mut cases = vec![
            format!("{raw}="),
            format!("{raw}=="),
            format!(" {raw}"),
            raw.replace(|c: char| c.is_ascii_alphanumeric(), "+"),
            format!("{raw}!"),
            raw[..raw.len() - 1].to_owned(),
            "not base64 at all".to_owned(),
            // Valid base64 of bytes that are not UTF-8.
            URL_SAFE_NO_PAD.encode([0xff, 0xfe, 0x7c]),
            "A".repeat(MAX_CURSOR_LEN + 4),
        ];
        // One flipped character somewhere in the middle.
        let mut flipped: Vec<u8> = raw.clone().into_bytes();
        flipped[10] = if flipped[10] == b'A' { b'B' } else { b'A' };
        cases.push(String::from_utf8(flipped).expect("ascii"));
        // Non-canonical trailing bits: 67 bytes end in a group of two
        // characters whose last one has four unused low bits; setting one
        // still decodes to the same bytes in a lenient decoder.
        let long = HistoryCursor {
            version: 10,
            ..history_cursor()
        }
        .encode();
        assert_eq!(long.len() % 4, 2);
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut bits = long.into_bytes();
        if let Some(last) = bits.last_mut() {
            let index = ALPHABET.iter().position(|c| c == last).expect("base64url");
            *last = ALPHABET[index | 1];
        }
        cases.push(String::from_utf8(bits).expect("ascii"));
        for case in cases {
            assert!(is_bad_after(HistoryCursor::decode(&case)), "{case}");
            assert!(is_bad_after(DailySalesCursor::decode(&case)), "{case}");
        }
    }

    #[test]
    fn paginate_cuts_the_extra_row_into_a_cursor() {
        let cursor_of = |n: &u32| DailySalesCursor {
            day: day("2026-01-01"),
            product_id: Uuid::from_u128(u128::from(*n)),
            currency: "EUR".to_owned(),
        };
        let (items, next) = paginate(vec![1, 2, 3], 2, cursor_of);
        assert_eq!(items, vec![1, 2]);
        assert_eq!(next, Some(cursor_of(&2)));

        let (items, next) = paginate(vec![1, 2], 2, cursor_of);
        assert_eq!(items, vec![1, 2]);
        assert_eq!(next, None);

        let (items, next) = paginate(Vec::<u32>::new(), 2, cursor_of);
        assert!(items.is_empty());
        assert_eq!(next, None);
    }
}
