//! Per-workload SVG charts: throughput and p99 latency over each measured
//! run, one line per target and round, so that stalls and slow starts show
//! (a single number per run hides them).

use std::fmt::Write as _;

use serde::Serialize;

/// One second of a measured run.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Point {
    /// Seconds since the measured window began (the bin's start).
    pub second: u32,
    /// Operations that started in this second and succeeded.
    pub ops: u64,
    /// Their 99th percentile latency, microseconds (0 without operations).
    pub p99_us: u64,
}

/// Bins `(start ms since the window began, latency µs)` samples into one
/// [`Point`] per second of a window `seconds` long.
pub fn series(samples: &[(u32, u32)], seconds: u32) -> Vec<Point> {
    let mut bins: Vec<Vec<u32>> = vec![Vec::new(); seconds as usize];
    for &(start_ms, latency_us) in samples {
        if let Some(bin) = bins.get_mut((start_ms / 1000) as usize) {
            bin.push(latency_us);
        }
    }
    bins.into_iter()
        .zip(0u32..)
        .map(|(mut latencies, second)| {
            latencies.sort_unstable();
            let p99_us = match latencies.len() {
                0 => 0,
                n => u64::from(latencies[((n * 99).div_ceil(100)).saturating_sub(1)]),
            };
            Point {
                second,
                ops: latencies.len() as u64,
                p99_us,
            }
        })
        .collect()
}

/// One line of a chart.
#[derive(Debug)]
pub struct Line<'a> {
    /// Legend text, e.g. "atoll r1".
    pub label: String,
    /// `atoll` or `etcd`: picks the color.
    pub target: &'a str,
    /// The points, one per second.
    pub points: &'a [Point],
}

const WIDTH: f64 = 760.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 150.0;
const PANEL: f64 = 180.0;
const GAP: f64 = 50.0;
const TOP: f64 = 40.0;

fn color(target: &str) -> &'static str {
    match target {
        "atoll" => "#1f77b4",
        "etcd" => "#ff7f0e",
        _ => "#555555",
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A standalone SVG document titled `title`: throughput (ops/s, linear) on
/// top, p99 latency (ms, log scale) below, over seconds of the run.
pub fn svg(title: &str, lines: &[Line<'_>]) -> String {
    let seconds = lines
        .iter()
        .flat_map(|l| l.points.iter().map(|p| p.second + 1))
        .max()
        .unwrap_or(1)
        .max(1);
    let max_ops = lines
        .iter()
        .flat_map(|l| l.points.iter().map(|p| p.ops))
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let latencies = || {
        lines
            .iter()
            .flat_map(|l| l.points.iter().filter(|p| p.ops > 0).map(|p| p.p99_us))
    };
    // Log scale over whole decades around the p99 values seen.
    let lo_decade = latencies()
        .min()
        .map_or(2.0, |us| (us.max(1) as f64).log10().floor());
    let hi_decade = latencies()
        .max()
        .map_or(lo_decade + 1.0, |us| (us.max(1) as f64).log10().ceil())
        .max(lo_decade + 1.0);
    let plot_w = WIDTH - LEFT - RIGHT;
    let x = |s: f64| LEFT + plot_w * s / f64::from(seconds);
    let y_ops = |ops: f64| TOP + PANEL * (1.0 - ops / max_ops);
    let lat_top = TOP + PANEL + GAP;
    let y_lat = |us: u64| {
        let v = (us.max(1) as f64).log10().clamp(lo_decade, hi_decade);
        lat_top + PANEL * (1.0 - (v - lo_decade) / (hi_decade - lo_decade))
    };
    let height = lat_top + PANEL + 40.0;
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        out,
        r#"<text x="{LEFT}" y="20" font-size="14">{}</text>"#,
        escape(title)
    );
    // Axes, grid and labels of both panels.
    for (top, label) in [(TOP, "ops/s"), (lat_top, "p99 ms (log)")] {
        let _ = writeln!(
            out,
            r##"<rect x="{LEFT}" y="{top}" width="{plot_w}" height="{PANEL}" fill="none" stroke="#999"/>"##
        );
        let _ = writeln!(
            out,
            r#"<text x="10" y="{}" >{label}</text>"#,
            top + PANEL / 2.0
        );
    }
    for i in 0..=4 {
        let ops = max_ops * f64::from(i) / 4.0;
        let y = y_ops(ops);
        let _ = writeln!(
            out,
            r##"<line x1="{LEFT}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="#eee"/><text x="{}" y="{:.1}" text-anchor="end">{ops:.0}</text>"##,
            LEFT + plot_w,
            LEFT - 4.0,
            y + 4.0
        );
    }
    let mut decade = lo_decade;
    while decade <= hi_decade {
        let us = 10f64.powf(decade) as u64;
        let y = y_lat(us);
        let _ = writeln!(
            out,
            r##"<line x1="{LEFT}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="#eee"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
            LEFT + plot_w,
            LEFT - 4.0,
            y + 4.0,
            us as f64 / 1000.0
        );
        decade += 1.0;
    }
    let step = (seconds / 10).max(1);
    for s in (0..=seconds).step_by(step as usize) {
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{s}s</text>"#,
            x(f64::from(s)),
            lat_top + PANEL + 16.0
        );
    }
    // One polyline per run in each panel, and the legend.
    for (i, line) in lines.iter().enumerate() {
        let c = color(line.target);
        let dash = if i % 2 == 1 {
            r#" stroke-dasharray="4 2""#
        } else {
            ""
        };
        let ops: Vec<String> = line
            .points
            .iter()
            .map(|p| {
                format!(
                    "{:.1},{:.1}",
                    x(f64::from(p.second) + 0.5),
                    y_ops(p.ops as f64)
                )
            })
            .collect();
        let lat: Vec<String> = line
            .points
            .iter()
            .filter(|p| p.ops > 0)
            .map(|p| format!("{:.1},{:.1}", x(f64::from(p.second) + 0.5), y_lat(p.p99_us)))
            .collect();
        for points in [ops, lat] {
            let _ = writeln!(
                out,
                r#"<polyline fill="none" stroke="{c}" stroke-width="1.5"{dash} points="{}"/>"#,
                points.join(" ")
            );
        }
        let ly = TOP + 14.0 * i as f64;
        let lx = LEFT + plot_w + 10.0;
        let _ = writeln!(
            out,
            r#"<line x1="{lx}" x2="{}" y1="{ly}" y2="{ly}" stroke="{c}" stroke-width="2"{dash}/><text x="{}" y="{}">{}</text>"#,
            lx + 20.0,
            lx + 24.0,
            ly + 4.0,
            escape(&line.label)
        );
    }
    out.push_str("</svg>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_binned_by_second_with_their_p99() {
        let mut samples: Vec<(u32, u32)> = (1..=100).map(|i| (10, i)).collect();
        samples.push((1500, 7));
        samples.push((5000, 9)); // past the window: dropped
        let points = series(&samples, 3);
        assert_eq!(points.len(), 3);
        assert_eq!((points[0].ops, points[0].p99_us), (100, 99));
        assert_eq!((points[1].ops, points[1].p99_us), (1, 7));
        assert_eq!((points[2].ops, points[2].p99_us), (0, 0));
    }

    #[test]
    fn the_chart_is_one_svg_document_with_a_line_per_run() {
        let points = series(&[(0, 1000), (1200, 5000)], 2);
        let lines = [
            Line {
                label: "atoll r1".into(),
                target: "atoll",
                points: &points,
            },
            Line {
                label: "etcd <r1>".into(),
                target: "etcd",
                points: &points,
            },
        ];
        let doc = svg("w & friends", &lines);
        assert!(doc.starts_with("<svg") && doc.trim_end().ends_with("</svg>"));
        assert_eq!(doc.matches("<polyline").count(), 4);
        assert!(doc.contains("w &amp; friends") && doc.contains("etcd &lt;r1&gt;"));
    }
}
