//! A reader for the Prometheus text exposition format (version 0.0.4), as
//! the services' `/metrics` serve it: enough to look series up by name and
//! labels. Comments (`# HELP`, `# TYPE`) are skipped; a line that does not
//! parse is skipped too rather than failing the whole scrape, because one
//! odd series must not hide all the others.

use std::collections::BTreeMap;

/// One sample: a metric name, its labels and its value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

impl Sample {
    /// The value of label `name`, or `""` if the sample has none.
    pub fn label(&self, name: &str) -> &str {
        self.labels.get(name).map_or("", String::as_str)
    }
}

/// Every sample of one scrape.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Scrape {
    pub samples: Vec<Sample>,
}

impl Scrape {
    /// Parses a scrape body.
    pub fn parse(text: &str) -> Self {
        Self {
            samples: text.lines().filter_map(parse_line).collect(),
        }
    }

    /// The samples named `name`.
    pub fn series<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| s.name == name)
    }

    /// The value of the sample named `name` whose labels include every
    /// `(label, value)` pair of `labels`; the sum if several match.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut found = None;
        for sample in self.series(name) {
            if labels.iter().all(|(k, v)| sample.label(k) == *v) {
                found = Some(found.unwrap_or(0.0) + sample.value);
            }
        }
        found
    }
}

fn parse_line(line: &str) -> Option<Sample> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line
        .find(|c: char| c == '{' || c.is_whitespace())
        .unwrap_or(line.len());
    let name = &line[..name_end];
    if name.is_empty() {
        return None;
    }
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(after_brace) = rest.strip_prefix('{') {
        let (parsed, remainder) = parse_labels(after_brace)?;
        labels = parsed;
        rest = remainder;
    }
    // The value, then an optional timestamp.
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" | "Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        other => other.parse().ok()?,
    };
    Some(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// Parses `k="v",k2="v2"}` (the opening brace already consumed); returns the
/// labels and what follows the closing brace.
fn parse_labels(mut text: &str) -> Option<(BTreeMap<String, String>, &str)> {
    let mut labels = BTreeMap::new();
    loop {
        text = text.trim_start_matches([' ', ',']);
        if let Some(rest) = text.strip_prefix('}') {
            return Some((labels, rest));
        }
        let eq = text.find('=')?;
        let key = text[..eq].trim().to_owned();
        text = text[eq + 1..].trim_start().strip_prefix('"')?;
        let mut value = String::new();
        let mut chars = text.char_indices();
        let end = loop {
            let (i, c) = chars.next()?;
            match c {
                '\\' => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                '"' => break i,
                other => value.push(other),
            }
        };
        labels.insert(key, value);
        text = &text[end + 1..];
    }
}

/// Quantile `q` (0..1) of a histogram from its cumulative bucket counts
/// `(upper bound, count)`, interpolated linearly inside the bucket it falls
/// in, as Prometheus' `histogram_quantile` does. None without observations.
pub fn histogram_quantile(q: f64, buckets: &[(f64, f64)]) -> Option<f64> {
    let mut buckets: Vec<(f64, f64)> = buckets.to_vec();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut lower_bound = 0.0;
    let mut lower_count = 0.0;
    for (bound, count) in buckets {
        if count >= rank {
            if bound.is_infinite() {
                // Past the largest finite bucket: its bound is all we know.
                return Some(lower_bound);
            }
            let in_bucket = count - lower_count;
            if in_bucket <= 0.0 {
                return Some(bound);
            }
            return Some(lower_bound + (bound - lower_bound) * (rank - lower_count) / in_bucket);
        }
        lower_bound = bound;
        lower_count = count;
    }
    Some(lower_bound)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# HELP db_pool_connections Pooled connections by state
# TYPE db_pool_connections gauge
db_pool_connections{pool="replica-1",state="idle"} 3
db_pool_connections{pool="replica-1",state="in_use"} 1
db_pool_max_connections{pool="replica-1"} 16
outbox_lag_seconds 0.25
http_request_duration_seconds_bucket{method="GET",route="/orders/{id}",le="+Inf"} 7
weird{msg="a \"quoted\" \\ value, with comma"} 2 1700000000000
broken line here
"#;

    #[test]
    fn reads_names_labels_and_values() {
        let scrape = Scrape::parse(TEXT);
        assert_eq!(
            scrape.value(
                "db_pool_connections",
                &[("pool", "replica-1"), ("state", "in_use")]
            ),
            Some(1.0)
        );
        assert_eq!(
            scrape.value("db_pool_connections", &[("pool", "replica-1")]),
            Some(4.0)
        );
        assert_eq!(scrape.value("outbox_lag_seconds", &[]), Some(0.25));
        assert_eq!(
            scrape.value("http_request_duration_seconds_bucket", &[("le", "+Inf")]),
            Some(7.0)
        );
        let weird = scrape.series("weird").next().expect("weird");
        assert_eq!(weird.label("msg"), r#"a "quoted" \ value, with comma"#);
        assert_eq!(weird.value, 2.0);
        assert_eq!(scrape.value("missing", &[]), None);
        assert!(scrape.series("broken").next().is_none());
    }

    #[test]
    fn quantiles_interpolate_inside_the_bucket() {
        let buckets = [
            (0.001, 0.0),
            (0.01, 50.0),
            (0.1, 100.0),
            (f64::INFINITY, 100.0),
        ];
        let p50 = histogram_quantile(0.5, &buckets).expect("p50");
        assert!((p50 - 0.01).abs() < 1e-9, "{p50}");
        let p75 = histogram_quantile(0.75, &buckets).expect("p75");
        assert!((p75 - 0.055).abs() < 1e-9, "{p75}");
        assert_eq!(
            histogram_quantile(0.5, &[(0.1, 0.0), (f64::INFINITY, 0.0)]),
            None
        );
        let beyond = [(0.1, 0.0), (f64::INFINITY, 10.0)];
        assert_eq!(histogram_quantile(0.99, &beyond), Some(0.1));
    }
}
