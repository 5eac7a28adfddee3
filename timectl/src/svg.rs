//! Hand-made SVG line and point charts for the HTML report: axes with round-number ticks, one
//! colour per series, a legend, and vertical markers for findings. No scripts, no external
//! assets, so the report opens anywhere and survives being mailed around.

use std::fmt::Write as _;

const PALETTE: [&str; 8] = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f"];

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Style {
    Line,
    Points,
}

#[derive(Clone, Debug)]
pub struct Series {
    pub name: String,
    /// None breaks the line (the node did not answer then).
    pub points: Vec<(f64, Option<f64>)>,
    pub style: Style,
    /// Overrides the palette (e.g. red for lost probes).
    pub color: Option<&'static str>,
}

#[derive(Clone, Debug)]
pub struct Marker {
    pub x: f64,
    pub label: String,
    pub color: &'static str,
}

/// A span of time shaded behind the data (a perturbation, from its start to its heal).
#[derive(Clone, Debug)]
pub struct Band {
    pub x0: f64,
    pub x1: f64,
    pub label: String,
    pub color: &'static str,
}

#[derive(Clone, Debug, Default)]
pub struct Chart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<Series>,
    pub markers: Vec<Marker>,
    pub bands: Vec<Band>,
}

pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Tick positions at 1, 2 or 5 times a power of ten, about `n` of them over [lo, hi].
pub fn nice_ticks(lo: f64, hi: f64, n: usize) -> Vec<f64> {
    if hi.partial_cmp(&lo) != Some(std::cmp::Ordering::Greater) || !lo.is_finite() || !hi.is_finite() {
        return vec![lo];
    }
    let raw = (hi - lo) / n.max(1) as f64;
    let mag = 10f64.powf(raw.log10().floor());
    // The round step nearest to the raw one (by ratio), so the count stays close to `n`.
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .min_by(|a, b| (a / raw).max(raw / a).total_cmp(&(b / raw).max(raw / b)))
        .unwrap_or(mag);
    let first = (lo / step).ceil() * step;
    let mut ticks = Vec::new();
    let mut v = first;
    // Snap away float noise such as 0.6000000000000001 by rounding to the step's decimals.
    let decimals = (-step.log10().floor()).max(0.0) as usize;
    while v <= hi + step * 1e-9 {
        ticks.push(format!("{v:.decimals$}").parse().unwrap_or(v));
        v += step;
    }
    ticks
}

fn fmt_tick(v: f64) -> String {
    if v.abs() >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if (v - v.round()).abs() < 1e-9 {
        format!("{}", v.round() as i64)
    } else if v.abs() >= 1.0 {
        format!("{v:.1}")
    } else {
        let s = format!("{v:.3}");
        s.trim_end_matches('0').to_string()
    }
}

const W: f64 = 1000.0;
const H: f64 = 320.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 170.0;
const TOP: f64 = 34.0;
const BOTTOM: f64 = 48.0;

impl Chart {
    fn bounds(&self) -> Option<(f64, f64, f64, f64)> {
        let pts = self
            .series
            .iter()
            .flat_map(|s| s.points.iter())
            .filter_map(|&(x, y)| y.map(|y| (x, y)))
            .filter(|(x, y)| x.is_finite() && y.is_finite());
        let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
        let mut any = false;
        for (x, y) in pts {
            any = true;
            x0 = x0.min(x);
            x1 = x1.max(x);
            y0 = y0.min(y);
            y1 = y1.max(y);
        }
        if !any {
            return None;
        }
        for m in &self.markers {
            x0 = x0.min(m.x);
            x1 = x1.max(m.x);
        }
        // Counts and latencies read best from zero; heights near zero too.
        y0 = y0.min(0.0);
        if y1 <= y0 {
            y1 = y0 + 1.0;
        }
        if x1 <= x0 {
            x1 = x0 + 1.0;
        }
        Some((x0, x1, y0, y1 + (y1 - y0) * 0.05))
    }

    pub fn render(&self) -> String {
        let mut s = String::new();
        let _ = write!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" role="img" aria-label="{}" font-family="sans-serif" font-size="12">"#,
            escape(&self.title)
        );
        let _ =
            write!(s, r#"<text x="{LEFT}" y="20" font-size="15" font-weight="bold">{}</text>"#, escape(&self.title));
        let Some((x0, x1, y0, y1)) = self.bounds() else {
            let _ = write!(s, r##"<text x="{}" y="{}" fill="#666">no data</text></svg>"##, W / 2.0 - 30.0, H / 2.0);
            return s;
        };
        let pw = W - LEFT - RIGHT;
        let ph = H - TOP - BOTTOM;
        let sx = |x: f64| LEFT + (x - x0) / (x1 - x0) * pw;
        let sy = |y: f64| TOP + ph - (y - y0) / (y1 - y0) * ph;

        // Grid and tick labels.
        for t in nice_ticks(y0, y1, 5) {
            let y = sy(t);
            let _ = write!(
                s,
                r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#e5e5e5"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
                LEFT + pw,
                LEFT - 6.0,
                y + 4.0,
                fmt_tick(t)
            );
        }
        for t in nice_ticks(x0, x1, 8) {
            let x = sx(t);
            let _ = write!(
                s,
                r##"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{:.1}" stroke="#f0f0f0"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
                TOP + ph,
                TOP + ph + 16.0,
                fmt_tick(t)
            );
        }
        // Axes.
        let _ = write!(
            s,
            r##"<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{b:.1}" stroke="#333"/><line x1="{LEFT}" y1="{b:.1}" x2="{r:.1}" y2="{b:.1}" stroke="#333"/>"##,
            b = TOP + ph,
            r = LEFT + pw
        );
        let _ = write!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            LEFT + pw / 2.0,
            H - 8.0,
            escape(&self.x_label)
        );
        let _ = write!(
            s,
            r#"<text transform="translate(16 {:.1}) rotate(-90)" text-anchor="middle">{}</text>"#,
            TOP + ph / 2.0,
            escape(&self.y_label)
        );

        // Perturbation bands, under everything else; clipped to the plot.
        for (i, b) in self.bands.iter().enumerate() {
            let (bx0, bx1) = (sx(b.x0.max(x0)), sx(b.x1.min(x1)));
            let w = (bx1 - bx0).max(1.5);
            let _ = write!(
                s,
                r#"<rect class="band" x="{bx0:.1}" y="{TOP}" width="{w:.1}" height="{ph:.1}" fill="{c}" fill-opacity="0.13"><title>{t}</title></rect><text x="{:.1}" y="{:.1}" fill="{c}" font-size="9">{t}</text>"#,
                bx0 + 2.0,
                TOP + ph - 4.0 - (i % 3) as f64 * 10.0,
                c = b.color,
                t = escape(&b.label)
            );
        }

        // Finding markers under the data.
        for (i, m) in self.markers.iter().enumerate() {
            let x = sx(m.x);
            // Staggered labels stay readable when findings start at the same moment.
            let label_y = TOP + 10.0 + (i % 6) as f64 * 12.0;
            let _ = write!(
                s,
                r#"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{:.1}" stroke="{c}" stroke-dasharray="5 3"><title>{t}</title></line><text x="{:.1}" y="{:.1}" fill="{c}" font-size="10">{t}</text>"#,
                TOP + ph,
                x + 3.0,
                label_y,
                c = m.color,
                t = escape(&m.label)
            );
        }

        let n_series = self.series.len();
        for (i, series) in self.series.iter().enumerate() {
            // Earlier series are drawn wider, so lines that coincide (nodes agreeing) still
            // show every colour at the edges.
            let width = 1.6 + 1.2 * (n_series - 1 - i).min(4) as f64;
            let color = series.color.unwrap_or(PALETTE[i % PALETTE.len()]);
            match series.style {
                Style::Line => {
                    // One polyline per unbroken run of points.
                    let mut run: Vec<String> = Vec::new();
                    let flush = |run: &mut Vec<String>, s: &mut String| {
                        if run.len() == 1 {
                            let xy: Vec<&str> = run[0].split(',').collect();
                            let _ = write!(s, r#"<circle cx="{}" cy="{}" r="2" fill="{color}"/>"#, xy[0], xy[1]);
                        } else if run.len() > 1 {
                            let _ = write!(
                                s,
                                r#"<polyline fill="none" stroke="{color}" stroke-width="{width:.1}" stroke-linejoin="round" points="{}"/>"#,
                                run.join(" ")
                            );
                        }
                        run.clear();
                    };
                    for &(x, y) in &series.points {
                        match y {
                            Some(y) if y.is_finite() => run.push(format!("{:.1},{:.1}", sx(x), sy(y))),
                            _ => flush(&mut run, &mut s),
                        }
                    }
                    flush(&mut run, &mut s);
                }
                Style::Points => {
                    for &(x, y) in &series.points {
                        if let Some(y) = y.filter(|y| y.is_finite()) {
                            let _ = write!(
                                s,
                                r#"<circle cx="{:.1}" cy="{:.1}" r="3.5" fill="{color}" fill-opacity="0.8"/>"#,
                                sx(x),
                                sy(y)
                            );
                        }
                    }
                }
            }
            // Legend entry.
            let ly = TOP + 8.0 + i as f64 * 18.0;
            let lx = LEFT + pw + 16.0;
            let _ = write!(
                s,
                r#"<rect x="{lx:.1}" y="{:.1}" width="14" height="4" fill="{color}"/><text x="{:.1}" y="{:.1}">{}</text>"#,
                ly - 2.0,
                lx + 20.0,
                ly + 4.0,
                escape(&series.name)
            );
        }
        s.push_str("</svg>");
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round() {
        assert_eq!(nice_ticks(0.0, 10.0, 5), vec![0.0, 2.0, 4.0, 6.0, 8.0, 10.0]);
        assert_eq!(nice_ticks(0.0, 0.9, 3), vec![0.0, 0.2, 0.4, 0.6, 0.8]);
        assert_eq!(nice_ticks(13.0, 97.0, 4), vec![20.0, 40.0, 60.0, 80.0]);
        assert_eq!(fmt_tick(0.25), "0.25");
        assert_eq!(fmt_tick(2_500_000.0), "2.5M");
    }

    #[test]
    fn chart_is_well_formed_xml_with_escaped_names() {
        let c = Chart {
            title: "Heights <by node> & more".into(),
            x_label: "minutes".into(),
            y_label: "height".into(),
            series: vec![
                Series {
                    name: "n1 \"a\"".into(),
                    points: vec![(0.0, Some(1.0)), (1.0, None), (2.0, Some(3.0)), (3.0, Some(4.0))],
                    style: Style::Line,
                    color: None,
                },
                Series {
                    name: "lost".into(),
                    points: vec![(1.5, Some(2.0))],
                    style: Style::Points,
                    color: Some("#d62728"),
                },
            ],
            markers: vec![Marker { x: 2.0, label: "fork".into(), color: "#d62728" }],
            bands: vec![Band { x0: 0.5, x1: 1.5, label: "kill <n2>".into(), color: "#9467bd" }],
        };
        let svg = c.render();
        let doc = roxmltree::Document::parse(&svg).unwrap();
        assert_eq!(doc.root_element().tag_name().name(), "svg");
        // A break in the data gives a dot and a separate line, not one line across the gap.
        assert_eq!(svg.matches("<polyline").count(), 1);
        assert!(svg.contains("Heights &lt;by node&gt; &amp; more"));
        assert_eq!(svg.matches(r#"class="band""#).count(), 1);
        assert!(svg.contains("kill &lt;n2&gt;"));
        let empty = Chart { title: "t".into(), ..Default::default() }.render();
        assert!(roxmltree::Document::parse(&empty).is_ok());
        assert!(empty.contains("no data"));
    }
}
