//! A small reader for the Prometheus text exposition format (and the OpenMetrics flavour the
//! node's exporter writes): samples with labels, and histogram quantiles estimated the way
//! Prometheus' `histogram_quantile` does, by linear interpolation inside a bucket.

use std::collections::BTreeMap;

#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

#[derive(Debug, PartialEq, thiserror::Error)]
#[error("metrics line {line}: {message}")]
pub struct ParseError {
    pub line: usize,
    pub message: String,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Metrics {
    pub samples: Vec<Sample>,
}

fn parse_value(s: &str) -> Option<f64> {
    match s {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ => s.parse().ok(),
    }
}

/// Parses `{a="x",b="y\"z"}` starting after the `{`; returns the labels and the rest.
fn parse_labels(mut s: &str) -> Result<(BTreeMap<String, String>, &str), String> {
    let mut labels = BTreeMap::new();
    loop {
        s = s.trim_start_matches([' ', ',']);
        if let Some(rest) = s.strip_prefix('}') {
            return Ok((labels, rest));
        }
        let eq = s.find('=').ok_or("label without '='")?;
        let key = s[..eq].trim().to_string();
        s = s[eq + 1..].trim_start();
        s = s.strip_prefix('"').ok_or("label value not quoted")?;
        let mut value = String::new();
        let mut chars = s.char_indices();
        let end = loop {
            match chars.next() {
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c)) => value.push(c),
                    None => return Err("unterminated escape".into()),
                },
                Some((_, c)) => value.push(c),
                None => return Err("unterminated label value".into()),
            }
        };
        labels.insert(key, value);
        s = &s[end + 1..];
    }
}

pub fn parse(text: &str) -> Result<Metrics, ParseError> {
    let mut samples = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let err = |message: String| ParseError { line: i + 1, message };
        let name_end = line.find(['{', ' ', '\t']).unwrap_or(line.len());
        let name = line[..name_end].to_string();
        if name.is_empty() {
            return Err(err("missing metric name".into()));
        }
        let mut rest = &line[name_end..];
        let mut labels = BTreeMap::new();
        if let Some(after) = rest.strip_prefix('{') {
            let (l, r) = parse_labels(after).map_err(err)?;
            labels = l;
            rest = r;
        }
        // OpenMetrics exemplars follow " # "; they are not part of the value.
        let rest = rest.split(" # ").next().unwrap_or_default();
        let value_text = rest.split_whitespace().next().ok_or_else(|| err(format!("{name} has no value")))?;
        let value = parse_value(value_text).ok_or_else(|| err(format!("bad value {value_text:?}")))?;
        samples.push(Sample { name, labels, value });
    }
    Ok(Metrics { samples })
}

/// Cumulative buckets (upper bound, count) sorted by bound, with the total.
#[derive(Clone, Debug, PartialEq)]
pub struct Histogram {
    pub buckets: Vec<(f64, f64)>,
    pub sum: f64,
    pub count: f64,
}

impl Histogram {
    /// The q-quantile (0..=1) by linear interpolation within the bucket that holds it. A
    /// quantile in the +Inf bucket is reported as the highest finite bound, as Prometheus does.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.buckets.last().map(|b| b.1).unwrap_or(self.count);
        if total <= 0.0 || self.buckets.is_empty() {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * total;
        let mut prev_bound = 0.0;
        let mut prev_count = 0.0;
        for &(bound, count) in &self.buckets {
            if count >= rank {
                if bound.is_infinite() {
                    return Some(prev_bound);
                }
                let in_bucket = count - prev_count;
                if in_bucket <= 0.0 {
                    return Some(bound);
                }
                return Some(prev_bound + (bound - prev_bound) * (rank - prev_count) / in_bucket);
            }
            prev_bound = bound;
            prev_count = count;
        }
        Some(prev_bound)
    }

    /// Adds another histogram with the same buckets (different label sets of one metric).
    fn merge(&mut self, other: &Histogram) {
        for (b, o) in self.buckets.iter_mut().zip(&other.buckets) {
            b.1 += o.1;
        }
        self.sum += other.sum;
        self.count += other.count;
    }
}

impl Metrics {
    /// Sum of every sample named `name` (or `name_total`, the OpenMetrics counter spelling),
    /// over all label sets. None when the metric is absent.
    pub fn value(&self, name: &str) -> Option<f64> {
        let alt = format!("{name}_total");
        let alt2 = name.strip_suffix("_total");
        let mut found = None;
        for s in &self.samples {
            if s.name == name || s.name == alt || Some(s.name.as_str()) == alt2 {
                *found.get_or_insert(0.0) += s.value;
            }
        }
        found
    }

    /// The histogram `name`, with buckets of all label sets (but `le`) added together.
    pub fn histogram(&self, name: &str) -> Option<Histogram> {
        let bucket_name = format!("{name}_bucket");
        let mut per_series: BTreeMap<Vec<(String, String)>, Histogram> = BTreeMap::new();
        for s in &self.samples {
            let mut key: Vec<(String, String)> =
                s.labels.iter().filter(|(k, _)| k.as_str() != "le").map(|(k, v)| (k.clone(), v.clone())).collect();
            key.sort();
            let entry = || Histogram { buckets: Vec::new(), sum: 0.0, count: 0.0 };
            if s.name == bucket_name {
                let Some(le) = s.labels.get("le").and_then(|v| parse_value(v)) else {
                    continue;
                };
                per_series.entry(key).or_insert_with(entry).buckets.push((le, s.value));
            } else if s.name == format!("{name}_sum") {
                per_series.entry(key).or_insert_with(entry).sum = s.value;
            } else if s.name == format!("{name}_count") {
                per_series.entry(key).or_insert_with(entry).count = s.value;
            }
        }
        let mut out: Option<Histogram> = None;
        for (_, mut h) in per_series {
            h.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
            match &mut out {
                None => out = Some(h),
                Some(acc) if acc.buckets.len() == h.buckets.len() => acc.merge(&h),
                Some(_) => tracing::warn!("{name}: label sets with different buckets, skipped"),
            }
        }
        out.filter(|h| !h.buckets.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# HELP process_resident_memory_bytes Resident memory size in bytes.
# TYPE process_resident_memory_bytes gauge
process_resident_memory_bytes 4.2e7
# TYPE timed_p2p_bytes_sent counter
timed_p2p_bytes_sent_total 1000
timed_p2p_bytes_received_total{peer="a"} 300
timed_p2p_bytes_received_total{peer="b \"quoted\", x"} 200
# TYPE timed_rpc_request_duration_seconds histogram
timed_rpc_request_duration_seconds_bucket{method="getblockcount",le="0.01"} 8
timed_rpc_request_duration_seconds_bucket{method="getblockcount",le="0.1"} 10
timed_rpc_request_duration_seconds_bucket{method="getblockcount",le="+Inf"} 10
timed_rpc_request_duration_seconds_sum{method="getblockcount"} 0.2
timed_rpc_request_duration_seconds_count{method="getblockcount"} 10
timed_rpc_request_duration_seconds_bucket{le="0.01",method="getblock"} 0
timed_rpc_request_duration_seconds_bucket{le="0.1",method="getblock"} 0
timed_rpc_request_duration_seconds_bucket{le="+Inf",method="getblock"} 10 # {trace_id="x"} 3.0
timed_rpc_request_duration_seconds_sum{method="getblock"} 20
timed_rpc_request_duration_seconds_count{method="getblock"} 10
# EOF
"#;

    #[test]
    fn parses_values_labels_and_counters() {
        let m = parse(TEXT).unwrap();
        assert_eq!(m.value("process_resident_memory_bytes"), Some(4.2e7));
        assert_eq!(m.value("timed_p2p_bytes_sent_total"), Some(1000.0));
        assert_eq!(m.value("timed_p2p_bytes_sent"), Some(1000.0));
        assert_eq!(m.value("timed_p2p_bytes_received_total"), Some(500.0));
        let quoted = m.samples.iter().find(|s| s.value == 200.0).unwrap();
        assert_eq!(quoted.labels["peer"], "b \"quoted\", x");
        assert_eq!(m.value("absent"), None);
    }

    #[test]
    fn histogram_merges_label_sets_and_interpolates() {
        let m = parse(TEXT).unwrap();
        let h = m.histogram("timed_rpc_request_duration_seconds").unwrap();
        assert_eq!(h.count, 20.0);
        assert_eq!(h.buckets, vec![(0.01, 8.0), (0.1, 10.0), (f64::INFINITY, 20.0)]);
        // Rank 4 of 20 is half way into the first bucket [0, 0.01].
        assert!((h.quantile(0.2).unwrap() - 0.005).abs() < 1e-12);
        // Rank 9 falls in (0.01, 0.1], half way through its 2 observations.
        assert!((h.quantile(0.45).unwrap() - 0.055).abs() < 1e-12);
        // The p95 sits in +Inf: reported as the largest finite bound.
        assert_eq!(h.quantile(0.95), Some(0.1));
        assert!((h.sum - 20.2).abs() < 1e-12);
    }

    #[test]
    fn empty_histogram_has_no_quantile() {
        let m = parse("x_bucket{le=\"1\"} 0\nx_bucket{le=\"+Inf\"} 0\nx_sum 0\nx_count 0\n").unwrap();
        let h = m.histogram("x").unwrap();
        assert_eq!(h.quantile(0.5), None);
        assert!(m.histogram("y").is_none());
    }

    #[test]
    fn rejects_garbage_with_line_number() {
        let e = parse("ok 1\nbad{le=\"1 2\n").unwrap_err();
        assert_eq!(e.line, 2);
        let e = parse("a 1\nb one\n").unwrap_err();
        assert_eq!(e.line, 2);
        assert!(parse("nan_ok NaN\ninf +Inf\n").is_ok());
    }
}
