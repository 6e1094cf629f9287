//! Never trust the broker to start where asked.
//!
//! After an assignment the projector asks for each partition's stored offset
//! S. A Kafka broker answers with the record batch containing S (the client
//! drops the records before S). Tansu 0.6 instead skips to the next batch
//! when S lies inside one, so the first message delivered is past S and the
//! messages in between would never be applied: the fault test lost orders
//! that way. So the first message of each partition after a start is
//! checked: if it is past S, the partition is sought back (S − 1,024, then 4×
//! further each time, down to 0) until a message at or before S shows up,
//! which proves nothing between S and the stream is missing. Messages before
//! S are then dropped by the batch as already applied. A real gap (the log
//! starts after S) ends the search at offset 0.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// What to do with a received message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Pass it on.
    Admit,
    /// Drop it and seek the partition to this offset (it will come again).
    SeekTo(i64),
}

#[derive(Debug, Clone, Copy)]
struct Pending {
    /// The offset the partition must be read from (its stored offset).
    want: i64,
    /// Where the partition was last asked to start.
    asked: i64,
}

/// Per-partition start checks, shared by the rebalance callback (which
/// starts them) and the consume loop (which settles them).
#[derive(Debug, Clone, Default)]
pub struct StartChecks {
    pending: Arc<Mutex<HashMap<(String, i32), Pending>>>,
}

impl StartChecks {
    /// Partitions were assigned, each to start at `offsets`.
    pub fn started(&self, offsets: impl IntoIterator<Item = ((String, i32), i64)>) {
        if let Ok(mut pending) = self.pending.lock() {
            pending.clear();
            pending.extend(
                offsets
                    .into_iter()
                    .map(|(key, want)| (key, Pending { want, asked: want })),
            );
        }
    }

    /// Judges a message of `topic`/`partition` at `offset`.
    pub fn check(&self, topic: &str, partition: i32, offset: i64) -> Verdict {
        let Ok(mut pending) = self.pending.lock() else {
            return Verdict::Admit;
        };
        let key = (topic.to_owned(), partition);
        let Some(check) = pending.get_mut(&key) else {
            return Verdict::Admit;
        };
        if offset <= check.want || check.asked == 0 {
            // Read from at or before the stored offset (or from the very
            // start of the log): nothing after it can be missing.
            pending.remove(&key);
            return Verdict::Admit;
        }
        let back = (check.want - check.asked).max(256) * 4;
        check.asked = (check.want - back).max(0);
        Verdict::SeekTo(check.asked)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checks(want: i64) -> StartChecks {
        let checks = StartChecks::default();
        checks.started([(("t".to_owned(), 0), want)]);
        checks
    }

    #[test]
    fn a_start_at_the_stored_offset_is_admitted_and_later_messages_are_not_checked() {
        let c = checks(539);
        assert_eq!(c.check("t", 0, 539), Verdict::Admit);
        assert_eq!(c.check("t", 0, 900), Verdict::Admit);
        assert_eq!(c.check("t", 1, 5), Verdict::Admit, "unchecked partition");
    }

    #[test]
    fn a_start_past_the_stored_offset_seeks_back_further_each_time_down_to_zero() {
        let c = checks(5_000);
        assert_eq!(c.check("t", 0, 5_055), Verdict::SeekTo(3_976));
        assert_eq!(c.check("t", 0, 5_055), Verdict::SeekTo(904));
        assert_eq!(c.check("t", 0, 5_055), Verdict::SeekTo(0));
        // From 0 the log itself starts after the stored offset: accept.
        assert_eq!(c.check("t", 0, 5_055), Verdict::Admit);
    }

    #[test]
    fn an_earlier_message_after_seeking_back_settles_the_check() {
        let c = checks(539);
        assert_eq!(c.check("t", 0, 594), Verdict::SeekTo(0));
        assert_eq!(c.check("t", 0, 512), Verdict::Admit);
        assert_eq!(c.check("t", 0, 594), Verdict::Admit);
    }
}
