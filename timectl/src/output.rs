//! How results reach the operator: tables or JSON on stdout, progress on stderr, colour only
//! when a person is looking (a TTY and no `NO_COLOR`).

use comfy_table::{presets, Cell, Color, ContentArrangement, Table};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use std::io::IsTerminal;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[derive(Clone, Copy, Debug)]
pub struct Ui {
    pub json: bool,
    pub color: bool,
    pub progress: bool,
}

fn no_color_env() -> bool {
    std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty())
}

impl Ui {
    pub fn detect(json: bool) -> Self {
        Ui {
            json,
            color: !json && !no_color_env() && std::io::stdout().is_terminal(),
            progress: !json && std::io::stderr().is_terminal(),
        }
    }

    /// Whether log lines on stderr may carry ANSI colours.
    pub fn stderr_color() -> bool {
        !no_color_env() && std::io::stderr().is_terminal()
    }

    pub fn table(&self, header: &[&str]) -> Table {
        let mut t = Table::new();
        t.load_preset(presets::UTF8_FULL_CONDENSED);
        if self.color {
            t.set_content_arrangement(ContentArrangement::Dynamic);
        } else {
            // Without a terminal, never wrap or style: output must be stable for scripts.
            t.force_no_tty();
            t.set_content_arrangement(ContentArrangement::Disabled);
        }
        t.set_header(header.to_vec());
        t
    }

    pub fn colored(&self, text: impl ToString, color: Color) -> Cell {
        let c = Cell::new(text);
        if self.color {
            c.fg(color)
        } else {
            c
        }
    }

    pub fn spinner(&self, msg: impl Into<String>) -> ProgressBar {
        if !self.progress {
            return ProgressBar::hidden();
        }
        let pb = ProgressBar::new_spinner();
        pb.set_style(ProgressStyle::with_template("{spinner} {msg} [{elapsed}]").expect("template"));
        pb.set_message(msg.into());
        pb.enable_steady_tick(Duration::from_millis(120));
        pb
    }

    pub fn bar(&self, len: u64, msg: impl Into<String>) -> ProgressBar {
        if !self.progress {
            return ProgressBar::hidden();
        }
        let pb = ProgressBar::new(len);
        pb.set_style(ProgressStyle::with_template("{bar:30} {percent:>3}% {msg}").expect("template"));
        pb.set_message(msg.into());
        pb
    }

    pub fn print_json<T: Serialize + ?Sized>(&self, value: &T) {
        println!("{}", serde_json::to_string_pretty(value).expect("serializable output"));
    }
}

/// One progress line per host showing its current step (indicatif `MultiProgress`) in a
/// terminal; one JSON event per line on stdout with `--json`; nothing otherwise.
pub struct HostProgress {
    json: bool,
    multi: Option<indicatif::MultiProgress>,
    bars: std::sync::Mutex<Vec<(String, ProgressBar)>>,
}

impl HostProgress {
    pub fn new(ui: Ui) -> Self {
        HostProgress {
            json: ui.json,
            multi: ui.progress.then(indicatif::MultiProgress::new),
            bars: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// Removes the lines (before a summary table is printed).
    pub fn finish(&self) {
        for (_, b) in self.bars.lock().expect("progress lock").drain(..) {
            b.finish_and_clear();
        }
    }
}

impl crate::providers::Progress for HostProgress {
    fn step(&self, host: &str, step: &str) {
        if self.json {
            let ev = serde_json::json!({ "event": "step", "host": host, "step": step, "t_ms": now_ms() });
            println!("{ev}");
            return;
        }
        let Some(multi) = &self.multi else {
            tracing::info!("{host}: {step}");
            return;
        };
        let mut bars = self.bars.lock().expect("progress lock");
        if let Some((_, b)) = bars.iter().find(|(h, _)| h == host) {
            b.set_message(step.to_string());
            return;
        }
        let b = multi.add(ProgressBar::new_spinner());
        b.set_style(ProgressStyle::with_template("{spinner} {prefix:24} {msg} [{elapsed}]").expect("template"));
        b.set_prefix(host.to_string());
        b.set_message(step.to_string());
        b.enable_steady_tick(Duration::from_millis(120));
        bars.push((host.to_string(), b));
    }
}

/// PASS/WARN/FAIL of a measurement against a target and an acceptable bound.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Verdict {
    Pass,
    Warn,
    Fail,
}

impl Verdict {
    pub fn label(self) -> &'static str {
        match self {
            Verdict::Pass => "PASS",
            Verdict::Warn => "WARN",
            Verdict::Fail => "FAIL",
        }
    }

    pub fn color(self) -> Color {
        match self {
            Verdict::Pass => Color::Green,
            Verdict::Warn => Color::Yellow,
            Verdict::Fail => Color::Red,
        }
    }
}

pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// RFC 3339 UTC with seconds, from Unix milliseconds (std has no calendar, so the civil date
/// is computed from the day count).
pub fn rfc3339(ms: u64) -> String {
    let secs = ms / 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// Compact form for file names: 20251223T093000Z.
pub fn compact_timestamp(ms: u64) -> String {
    rfc3339(ms).replace(['-', ':'], "")
}

// Howard Hinnant's days-to-civil algorithm (proleptic Gregorian calendar).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// "3d04h", "1h02m", "4m05s", "12s".
pub fn human_duration(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs % 86_400 / 3600, secs % 3600 / 60, secs % 60);
    if d > 0 {
        format!("{d}d{h:02}h")
    } else if h > 0 {
        format!("{h}h{m:02}m")
    } else if m > 0 {
        format!("{m}m{s:02}s")
    } else {
        format!("{s}s")
    }
}

/// First 12 hex digits: enough to tell hashes apart by eye.
pub fn short_hash(h: &str) -> String {
    h.chars().take(12).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_times() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_766_448_000_000), "2025-12-23T00:00:00Z");
        assert_eq!(rfc3339(951_782_400_000 + 3_723_000), "2000-02-29T01:02:03Z");
        assert_eq!(compact_timestamp(1_766_448_000_000), "20251223T000000Z");
        assert_eq!(human_duration(5), "5s");
        assert_eq!(human_duration(245), "4m05s");
        assert_eq!(human_duration(3720), "1h02m");
        assert_eq!(human_duration(3 * 86_400 + 4 * 3600), "3d04h");
    }
}
