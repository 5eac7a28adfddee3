//! `timectl report RUN.jsonl -o report.html`: one self-contained HTML page with the verdict,
//! the findings and inline SVG plots of a stability run. Works on a run still in progress.

use crate::context::Ctx;
use crate::error::EXIT_OK;
use crate::monitor::{self, summary_rows, Analysis, Finding, Record, Severity, MAX_FINDINGS_SHOWN};
use crate::output::{human_duration, rfc3339};
use crate::svg::{escape, Band, Chart, Marker, Series, Style};
use anyhow::Context as _;
use clap::Args;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  timectl report run.jsonl -o report.html
  timectl report stability-20251223T093000Z.jsonl      writes stability-...html beside it")]
pub struct ReportArgs {
    /// A run log written by `timectl stability`.
    #[arg(value_name = "RUN.jsonl")]
    pub log: PathBuf,
    /// Output HTML file [default: the log's name with .html].
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
}

/// Time axis in seconds, minutes or hours, whichever keeps the tick labels short.
struct TimeAxis {
    start_ms: u64,
    per: f64,
    label: &'static str,
}

impl TimeAxis {
    fn new(a: &Analysis) -> Self {
        if a.duration_secs <= 300 {
            TimeAxis { start_ms: a.started_ms, per: 1000.0, label: "seconds since start" }
        } else if a.duration_secs > 3 * 3600 {
            TimeAxis { start_ms: a.started_ms, per: 3_600_000.0, label: "hours since start" }
        } else {
            TimeAxis { start_ms: a.started_ms, per: 60_000.0, label: "minutes since start" }
        }
    }

    fn x(&self, t_ms: u64) -> f64 {
        t_ms.saturating_sub(self.start_ms) as f64 / self.per
    }
}

/// One series per node over the ticks, from a per-observation value.
fn per_node(records: &[Record], axis: &TimeAxis, value: impl Fn(&monitor::NodeObs) -> Option<f64>) -> Vec<Series> {
    let mut by_node: BTreeMap<String, Vec<(f64, Option<f64>)>> = BTreeMap::new();
    let mut order: Vec<String> = Vec::new();
    for r in records {
        if let Record::Tick(t) = r {
            for o in &t.nodes {
                if !by_node.contains_key(&o.name) {
                    order.push(o.name.clone());
                }
                by_node.entry(o.name.clone()).or_default().push((axis.x(t.t_ms), value(o)));
            }
        }
    }
    order
        .into_iter()
        .map(|name| Series { points: by_node.remove(&name).unwrap_or_default(), name, style: Style::Line, color: None })
        .collect()
}

/// CPU % per node from consecutive cpu_seconds readings.
fn cpu_series(records: &[Record], axis: &TimeAxis) -> Vec<Series> {
    let mut last: BTreeMap<String, (u64, f64)> = BTreeMap::new();
    let mut out: BTreeMap<String, Vec<(f64, Option<f64>)>> = BTreeMap::new();
    let mut order = Vec::new();
    for r in records {
        let Record::Tick(t) = r else { continue };
        for o in &t.nodes {
            if !out.contains_key(&o.name) {
                order.push(o.name.clone());
            }
            let v = match (o.cpu_seconds, last.get(&o.name)) {
                (Some(c), Some(&(t0, c0))) if t.t_ms > t0 && c >= c0 => {
                    Some((c - c0) / ((t.t_ms - t0) as f64 / 1000.0) * 100.0)
                }
                _ => None,
            };
            match o.cpu_seconds {
                Some(c) => {
                    last.insert(o.name.clone(), (t.t_ms, c));
                }
                None => {
                    last.remove(&o.name);
                }
            }
            out.entry(o.name.clone()).or_default().push((axis.x(t.t_ms), v));
        }
    }
    order
        .into_iter()
        .map(|name| Series { points: out.remove(&name).unwrap_or_default(), name, style: Style::Line, color: None })
        .collect()
}

fn has_data(series: &[Series]) -> bool {
    series.iter().any(|s| s.points.iter().any(|p| p.1.is_some()))
}

fn markers(a: &Analysis, axis: &TimeAxis) -> Vec<Marker> {
    a.findings
        .iter()
        .filter(|f| matches!(f, Finding::Fork { .. } | Finding::Stall { .. }))
        .map(|f| Marker {
            x: axis.x(f.t_ms()),
            label: match f {
                Finding::Stall { node, .. } => format!("stall {node}"),
                other => other.kind().to_string(),
            },
            color: if matches!(f, Finding::Fork { .. }) { "#d62728" } else { "#e68a00" },
        })
        .collect()
}

/// One band per perturbation, from its start to its heal (or the end of the log).
fn bands(a: &Analysis, axis: &TimeAxis) -> Vec<Band> {
    a.perturbations
        .iter()
        .filter(|p| p.error.is_none())
        .map(|p| Band {
            x0: axis.x(p.start_ms),
            x1: axis.x(p.end_ms.unwrap_or(a.last_ms)),
            label: format!("{} {}", p.action, p.nodes.join(",")),
            color: match p.action.as_str() {
                "kill" => "#d62728",
                "restart" => "#9467bd",
                "partition" => "#1f77b4",
                _ => "#e68a00",
            },
        })
        .collect()
}

pub fn charts(records: &[Record], a: &Analysis) -> Vec<Chart> {
    let mut out = charts_without_bands(records, a);
    let b = bands(a, &TimeAxis::new(a));
    for c in &mut out {
        c.bands = b.clone();
    }
    out
}

fn charts_without_bands(records: &[Record], a: &Analysis) -> Vec<Chart> {
    let axis = TimeAxis::new(a);
    let marks = markers(a, &axis);
    let mut out = vec![
        Chart {
            title: "Block height per node".into(),
            x_label: axis.label.into(),
            y_label: "height".into(),
            series: per_node(records, &axis, |o| o.height.map(|h| h as f64)),
            markers: marks.clone(),
            bands: Vec::new(),
        },
        Chart {
            title: "Mempool size per node".into(),
            x_label: axis.label.into(),
            y_label: "transactions".into(),
            series: per_node(records, &axis, |o| o.mempool.map(|m| m as f64)),
            markers: Vec::new(),
            bands: Vec::new(),
        },
    ];

    let sent: BTreeMap<u64, &monitor::ProbeSent> = records
        .iter()
        .filter_map(|r| match r {
            Record::ProbeSent(p) if p.txid.is_some() => Some((p.id, p)),
            _ => None,
        })
        .collect();
    if !sent.is_empty() {
        let mut final_pts = Vec::new();
        let mut lost_pts = Vec::new();
        let mut cut_off_pts = Vec::new();
        let timeout_s = records
            .iter()
            .find_map(|r| match r {
                Record::Start(s) => Some(s.probe_timeout_secs),
                _ => None,
            })
            .unwrap_or(60.0);
        for r in records {
            if let Record::ProbeResult(res) = r {
                let Some(p) = sent.get(&res.id) else { continue };
                match (res.finalized, res.latency_ms) {
                    (true, Some(l)) => final_pts.push((axis.x(p.t_ms), Some(l as f64 / 1000.0))),
                    // Sent on the cut-off side of a partition: not final there is the
                    // expected outcome, not a loss (the summary counts it apart too).
                    _ if p.minority_of.is_some() => cut_off_pts.push((axis.x(p.t_ms), Some(timeout_s))),
                    _ => lost_pts.push((axis.x(p.t_ms), Some(timeout_s))),
                }
            }
        }
        let mut series =
            vec![Series { name: "finalized".into(), points: final_pts, style: Style::Points, color: Some("#2ca02c") }];
        if !cut_off_pts.is_empty() {
            series.push(Series {
                name: "cut off, not final (expected)".into(),
                points: cut_off_pts,
                style: Style::Points,
                color: Some("#7f7f7f"),
            });
        }
        if !lost_pts.is_empty() {
            series.push(Series {
                name: "lost (at timeout)".into(),
                points: lost_pts,
                style: Style::Points,
                color: Some("#d62728"),
            });
        }
        out.push(Chart {
            title: "Probe transaction finality latency".into(),
            x_label: format!("{} (when sent)", axis.label),
            y_label: "seconds".into(),
            series,
            markers: Vec::new(),
            bands: Vec::new(),
        });
    }

    let rss = per_node(records, &axis, |o| o.rss_bytes.map(|b| b as f64 / 1048576.0));
    if has_data(&rss) {
        out.push(Chart {
            title: "Memory (RSS) per node".into(),
            x_label: axis.label.into(),
            y_label: "MiB".into(),
            series: rss,
            markers: Vec::new(),
            bands: Vec::new(),
        });
    }
    let cpu = cpu_series(records, &axis);
    if has_data(&cpu) {
        out.push(Chart {
            title: "CPU per node (100 % = one core)".into(),
            x_label: axis.label.into(),
            y_label: "%".into(),
            series: cpu,
            markers: Vec::new(),
            bands: Vec::new(),
        });
    }
    out
}

const STYLE: &str = "body{font-family:sans-serif;max-width:1040px;margin:24px auto;color:#222}\
h1{font-size:22px}h2{font-size:17px;margin-top:28px}\
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ccc;padding:4px 10px;text-align:left;vertical-align:top}\
th{background:#f4f4f4}.bad{color:#b00000;font-weight:bold}.good{color:#1a7f37;font-weight:bold}\
.warn{color:#9a6700}.info{color:#0550ae}.badge{padding:2px 10px;border-radius:4px;color:#fff}\
.pass{background:#1a7f37}.fail{background:#b00000}figure{margin:12px 0}figure svg{max-width:100%;height:auto}footer{color:#777;font-size:12px;margin-top:30px}";

pub fn render_html(records: &[Record], source: &str) -> String {
    let a = monitor::analyze(records);
    let mut h = String::new();
    let title = format!("Stability run: {}", a.network);
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"/><title>{}</title><style>{STYLE}</style></head><body>",
        escape(&title)
    );
    let (badge, class) = if a.passed() { ("PASS", "pass") } else { ("FAIL", "fail") };
    let _ = write!(
        h,
        "<h1>{} <span class=\"badge {class}\">{badge}</span></h1><p>Started {} · ran {} · {}</p>",
        escape(&title),
        rfc3339(a.started_ms),
        human_duration(a.duration_secs),
        match &a.ended {
            Some(r) => format!("ended: {}", escape(r)),
            None => "still running (or stopped without an end record)".into(),
        }
    );

    h.push_str("<h2>Summary</h2><table>");
    for (label, value, bad) in summary_rows(&a) {
        let class = if bad {
            " class=\"bad\""
        } else if label == "result" {
            " class=\"good\""
        } else {
            ""
        };
        let _ = write!(h, "<tr><th>{}</th><td{class}>{}</td></tr>", escape(&label), escape(&value));
    }
    h.push_str("</table>");

    h.push_str("<h2>Findings</h2>");
    if a.findings.is_empty() {
        h.push_str("<p>None: no forks, stalls, lost transactions or unreachable nodes.</p>");
    } else {
        h.push_str("<table><tr><th>at</th><th>severity</th><th>finding</th><th>detail</th></tr>");
        for f in a.findings.iter().take(MAX_FINDINGS_SHOWN) {
            let (sev, class) = match f.severity() {
                Severity::Error => ("error", "bad"),
                Severity::Warning => ("warning", "warn"),
                Severity::Info => ("expected", "info"),
            };
            let _ = write!(
                h,
                "<tr><td>+{}</td><td class=\"{class}\">{sev}</td><td>{}</td><td>{}</td></tr>",
                human_duration(f.t_ms().saturating_sub(a.started_ms) / 1000),
                escape(f.kind()),
                escape(&f.describe())
            );
        }
        h.push_str("</table>");
        if let Some(more) = a.findings.len().checked_sub(MAX_FINDINGS_SHOWN).filter(|m| *m > 0) {
            let _ = write!(h, "<p>... and {more} more findings, all in the run log.</p>");
        }
    }

    if !a.perturbations.is_empty() {
        h.push_str(
            "<h2>Perturbations</h2><table><tr><th>#</th><th>at</th><th>action</th><th>nodes</th><th>lasted</th>\
             <th>reconverged after</th><th>detail</th></tr>",
        );
        let secs = |ms: u64| format!("{:.1} s", ms as f64 / 1000.0);
        for p in &a.perturbations {
            let lasted = p.end_ms.map_or("not healed".into(), |e| secs(e.saturating_sub(p.start_ms)));
            let (reconv, class) = match (p.reconverge_ms, &p.error) {
                (_, Some(_)) => ("not applied".to_string(), "warn"),
                (Some(ms), None) => (secs(ms), ""),
                (None, None) => ("-".to_string(), "bad"),
            };
            let _ = write!(
                h,
                "<tr><td>{}</td><td>+{}</td><td>{}</td><td>{}</td><td>{lasted}</td><td class=\"{class}\">{reconv}</td><td>{}</td></tr>",
                p.id,
                human_duration(p.start_ms.saturating_sub(a.started_ms) / 1000),
                escape(&p.action),
                escape(&p.nodes.join(", ")),
                escape(p.error.as_deref().unwrap_or(&p.detail))
            );
        }
        h.push_str("</table>");
    }

    h.push_str("<h2>Plots</h2>");
    for c in charts(records, &a) {
        let _ = write!(h, "<figure>{}</figure>", c.render());
    }
    let _ = writeln!(
        h,
        "<footer>Generated by timectl {} from {}.</footer></body></html>",
        env!("CARGO_PKG_VERSION"),
        escape(source)
    );
    h
}

pub fn run(a: ReportArgs, ctx: &Ctx) -> anyhow::Result<u8> {
    let ui = ctx.ui;
    let records = monitor::read_log(&a.log)?;
    let out = a.output.clone().unwrap_or_else(|| a.log.with_extension("html"));
    let html = render_html(&records, &a.log.display().to_string());
    std::fs::write(&out, html).with_context(|| format!("cannot write {}", out.display()))?;
    let analysis = monitor::analyze(&records);
    if ui.json {
        ui.print_json(&serde_json::json!({ "output": out, "passed": analysis.passed() }));
    } else {
        println!("wrote {}", out.display());
    }
    Ok(EXIT_OK)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::monitor::tests::{clean_run, start, tick};

    use crate::svg_check::svgs_parse;

    #[test]
    fn clean_report_has_all_plots() {
        let html = render_html(&clean_run(), "run.jsonl");
        // height, mempool, probes, memory, cpu
        assert_eq!(svgs_parse(&html), 5);
        assert!(html.contains("badge pass"));
        assert!(html.contains("None: no forks"));
        assert!(!html.contains("<script"));
        // Self-contained: nothing loaded from elsewhere.
        assert!(!html.contains("src=") && !html.contains("href="));
    }

    #[test]
    fn fork_report_shows_finding_and_marker() {
        let mut r = vec![start(&["n1", "n2"])];
        for s in 0..4 {
            r.push(tick(s, &[Some(s + 1), Some(s + 1)], &["a", if s > 1 { "b" } else { "a" }]));
        }
        let html = render_html(&r, "f&.jsonl");
        assert!(svgs_parse(&html) >= 2);
        assert!(html.contains("badge fail"));
        assert!(html.contains("stroke-dasharray"));
        assert!(html.contains("f&amp;.jsonl"));
    }

    #[test]
    fn a_probe_cut_off_by_a_partition_is_not_drawn_as_lost() {
        use crate::monitor::{ProbeResult, ProbeSent};
        let mut r = clean_run();
        let sent = |id: u64, minority_of: Option<u64>| {
            Record::ProbeSent(ProbeSent {
                id,
                t_ms: 2_000,
                from: "n1".into(),
                to: "n2".into(),
                checker: "n1".into(),
                txid: Some(format!("{id:064x}")),
                error: None,
                minority_of,
            })
        };
        let pending = |id: u64| {
            Record::ProbeResult(ProbeResult {
                id,
                t_ms: 9_000,
                finalized: false,
                status: "pending".into(),
                latency_ms: None,
                node_finality_ms: None,
            })
        };
        r.extend([sent(901, Some(0)), pending(901)]);
        let html = render_html(&r, "run.jsonl");
        assert!(html.contains("cut off, not final (expected)"));
        assert!(!html.contains("lost (at timeout)"));
        r.extend([sent(902, None), pending(902)]);
        assert!(render_html(&r, "run.jsonl").contains("lost (at timeout)"));
    }
}
