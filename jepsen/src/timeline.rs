//! A run's timeline as an SVG chart, in the manner of Jepsen's rate and
//! latency plots, with the nemesis's fault windows shaded.
//!
//! [`svg`] draws two panels that share one time axis (seconds since the run
//! started, the clock of [`Op::invoke_ns`]):
//!
//! 1. **Throughput**: operations completed per second, one stepped line each
//!    for ok, fail and ambiguous outcomes. Operations are binned by their
//!    completion time into buckets of a round width (1, 2 or 5 × 10ⁿ ms)
//!    chosen so that the run has at most about 100 of them. An operation
//!    with no completion time never completed and is not counted here.
//! 2. **Latency**: one dot per operation at its invocation time, at height
//!    `complete - invoke` on a log scale (latencies under 1 µs are drawn at
//!    1 µs), colored by outcome. An operation with no completion time (an
//!    ambiguous operation the run ended on) has no latency: it is drawn as a
//!    tick in a "no reply" strip above the latency panel instead.
//!
//! The scatter is downsampled deterministically so that a long run stays a
//! small file: the panel is cut into cells of [`CELL_PX`] pixels and each
//! outcome draws at most one dot per cell. No operation is dropped in favour
//! of another outcome: every cell that holds a failed or ambiguous operation
//! shows it, and those are drawn over the ok dots. The size is therefore
//! bounded by the panel's area, whatever the length of the history.
//!
//! Every [`FaultWindow`] is shaded across both panels with its label above
//! them; windows are colored by the first word of their label ("kill",
//! "pause", "partition", ...), so the same fault keeps its color.
//!
//! The output is a standalone, well-formed SVG document (text is escaped for
//! XML) and depends on nothing but its input.

use std::collections::BTreeSet;
use std::fmt::{self, Write as _};

use serde::{Deserialize, Serialize};

use crate::history::{Op, Outcome};

/// A span of time during which a fault was active, in milliseconds since the
/// run started (the clock of [`Op::invoke_ns`]), e.g. "partition {1,2} | {3}"
/// or "kill node 2".
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultWindow {
    /// When the fault began.
    pub start_ms: u64,
    /// When it was healed. A window that ends before it starts is drawn as a
    /// zero-length window at its start; one that runs past the end of the
    /// run is cut at the end.
    pub end_ms: u64,
    /// What the fault was; the first word picks the window's color.
    pub label: String,
}

/// The size, in pixels, of the cells the latency scatter is downsampled to:
/// each outcome draws at most one dot per cell.
pub const CELL_PX: f64 = 2.0;

/// Draws the timeline of `history`, with `faults` shaded, as an SVG
/// document titled `title`. See the [module docs](self) for what it shows.
pub fn svg(history: &[Op], faults: &[FaultWindow], title: &str) -> String {
    let time = TimeAxis::new(run_end_ms(history, faults));
    let counts = OutcomeCounts::of(history);
    let windows = place_windows(faults, &time);
    let lanes = label_lanes(&windows);

    let mut out = String::with_capacity(64 * 1024);
    push(
        &mut out,
        format_args!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{HEIGHT}\" \
             viewBox=\"0 0 {WIDTH} {HEIGHT}\" font-family=\"sans-serif\" font-size=\"11\">\n\
             <rect class=\"background\" width=\"100%\" height=\"100%\" fill=\"#ffffff\"/>\n"
        ),
    );
    draw_title(&mut out, title);
    draw_legend(&mut out, &counts, &windows);
    draw_fault_windows(&mut out, &windows, &lanes);
    draw_time_axis(&mut out, &time);
    let bucket_ms = draw_throughput(&mut out, history, &time);
    let drawn = draw_latency(&mut out, history, &time);
    draw_caption(&mut out, bucket_ms, drawn, history.len());
    if history.is_empty() {
        draw_empty_note(&mut out);
    }
    out.push_str("</svg>\n");
    out
}

// ---------------------------------------------------------------------------
// Layout: one fixed canvas; every y below is a pixel row on it.

const WIDTH: f64 = 1200.0;
const PLOT_LEFT: f64 = 84.0;
const PLOT_RIGHT: f64 = WIDTH - 24.0;
const TITLE_Y: f64 = 26.0;
const LEGEND_Y: f64 = 50.0;
/// Fault labels sit in up to this many lanes above the panels.
const MAX_LANES: usize = 3;
const LANES_TOP: f64 = 62.0;
const LANE_H: f64 = 15.0;
const THROUGHPUT_TOP: f64 = LANES_TOP + LANE_H * MAX_LANES as f64 + 4.0;
const THROUGHPUT_BOTTOM: f64 = THROUGHPUT_TOP + 190.0;
const NO_REPLY_TOP: f64 = THROUGHPUT_BOTTOM + 14.0;
const NO_REPLY_BOTTOM: f64 = NO_REPLY_TOP + 14.0;
const LATENCY_TOP: f64 = NO_REPLY_BOTTOM + 4.0;
const LATENCY_BOTTOM: f64 = LATENCY_TOP + 290.0;
const CAPTION_Y: f64 = LATENCY_BOTTOM + 54.0;
const HEIGHT: f64 = CAPTION_Y + 24.0;

/// Average glyph width as a fraction of the font size, for sans-serif text;
/// generous, so estimated text is never narrower than drawn text.
const CHAR_EM: f64 = 0.6;
const LABEL_FONT: f64 = 11.0;
/// A fault label is cut to this width even when there is room for more.
const MAX_LABEL_PX: f64 = 220.0;
/// Fewer characters than this (with the ellipsis) is no label at all; the
/// window's tooltip still carries it.
const MIN_LABEL_CHARS: usize = 4;

const GRID: &str = "#e4e4e4";
const AXIS: &str = "#444444";
const MUTED: &str = "#666666";

/// Semi-transparent fills for fault windows, picked by label prefix; none is
/// close to an outcome color.
const FAULT_COLORS: [&str; 6] = [
    "#9467bd", "#8c564b", "#17becf", "#bcbd22", "#e377c2", "#7f7f7f",
];
const FAULT_OPACITY: f64 = 0.16;

/// Appends formatted text to `out`. Writing to a `String` cannot fail, so
/// the `fmt::Result` carries nothing.
fn push(out: &mut String, args: fmt::Arguments<'_>) {
    let _ = out.write_fmt(args);
}

/// A coordinate or size for SVG: one decimal, no trailing `.0`, never `NaN`
/// or infinite (those become 0, which no caller produces on purpose).
fn num(v: f64) -> String {
    if !v.is_finite() || v.abs() < 0.05 {
        return "0".to_string();
    }
    let s = format!("{v:.1}");
    match s.strip_suffix(".0") {
        Some(whole) => whole.to_string(),
        None => s,
    }
}

// ---------------------------------------------------------------------------
// Outcomes.

/// The three outcomes the chart distinguishes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Class {
    Ok,
    Fail,
    Ambiguous,
}

impl Class {
    /// Drawing order: the rare outcomes go on top.
    const DRAW_ORDER: [Class; 3] = [Class::Ok, Class::Ambiguous, Class::Fail];

    fn of(outcome: &Outcome) -> Class {
        match outcome {
            Outcome::Ok(_) => Class::Ok,
            Outcome::Fail => Class::Fail,
            Outcome::Ambiguous => Class::Ambiguous,
        }
    }

    fn index(self) -> usize {
        self as usize
    }

    fn name(self) -> &'static str {
        match self {
            Class::Ok => "ok",
            Class::Fail => "fail",
            Class::Ambiguous => "ambiguous",
        }
    }

    fn color(self) -> &'static str {
        match self {
            Class::Ok => "#1f77b4",
            Class::Fail => "#d62728",
            Class::Ambiguous => "#ff7f0e",
        }
    }
}

/// How many operations had each outcome.
struct OutcomeCounts([usize; 3]);

impl OutcomeCounts {
    fn of(history: &[Op]) -> OutcomeCounts {
        let mut counts = [0; 3];
        for op in history {
            counts[Class::of(&op.outcome).index()] += 1;
        }
        OutcomeCounts(counts)
    }

    fn get(&self, class: Class) -> usize {
        self.0[class.index()]
    }
}

/// `n` with thousands separators: 200,000.
fn grouped(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

// ---------------------------------------------------------------------------
// Text.

/// `s` escaped for XML text and attribute values. Characters XML 1.0 cannot
/// carry at all (most control characters) become U+FFFD.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' => out.push(c),
            c if c >= '\u{10000}' => out.push(c),
            _ => out.push('\u{FFFD}'),
        }
    }
    out
}

/// `s` on one line (control characters as spaces), cut to at most
/// `max_chars` characters with an ellipsis when it is longer.
fn one_line(s: &str, max_chars: usize) -> String {
    let flat: Vec<char> = s
        .trim()
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if flat.len() <= max_chars {
        return flat.into_iter().collect();
    }
    if max_chars == 0 {
        return String::new();
    }
    let mut cut: String = flat[..max_chars - 1].iter().collect();
    cut.truncate(cut.trim_end().len());
    cut.push('…');
    cut
}

/// How many characters of `font_px` text fit in `px` pixels.
fn chars_in(px: f64, font_px: f64) -> usize {
    let n = px / (font_px * CHAR_EM);
    if n.is_finite() && n > 0.0 {
        n as usize
    } else {
        0
    }
}

/// The estimated drawn width of `s` at `font_px`.
fn text_px(s: &str, font_px: f64) -> f64 {
    s.chars().count() as f64 * font_px * CHAR_EM
}

fn draw_title(out: &mut String, title: &str) {
    let text = one_line(title, chars_in(WIDTH - 2.0 * PLOT_LEFT, 17.0));
    push(
        out,
        format_args!(
            "<text class=\"title\" x=\"{}\" y=\"{TITLE_Y}\" text-anchor=\"middle\" font-size=\"17\" \
             font-weight=\"bold\" fill=\"#222222\">{}</text>\n",
            num(WIDTH / 2.0),
            escape(&text)
        ),
    );
}

// ---------------------------------------------------------------------------
// Time axis.

/// The end of the run in milliseconds: the last invocation or completion in
/// the history; for an empty history, the end of the last fault window, or
/// 1 s when there is none; and never less than 1 ms, so the axis has a
/// length.
fn run_end_ms(history: &[Op], faults: &[FaultWindow]) -> f64 {
    let last_ns = history
        .iter()
        .map(|op| op.complete_ns.unwrap_or(0).max(op.invoke_ns))
        .max();
    let last_fault_ms = faults.iter().map(|f| f.start_ms.max(f.end_ms)).max();
    let end = match (last_ns, last_fault_ms) {
        (Some(ns), _) => ns as f64 / 1e6,
        (None, Some(ms)) => ms as f64,
        (None, None) => 1000.0,
    };
    end.max(1.0)
}

/// Maps milliseconds since the run started to x pixels.
struct TimeAxis {
    end_ms: f64,
}

impl TimeAxis {
    fn new(end_ms: f64) -> TimeAxis {
        TimeAxis { end_ms }
    }

    fn x(&self, ms: f64) -> f64 {
        let t = (ms / self.end_ms).clamp(0.0, 1.0);
        PLOT_LEFT + t * (PLOT_RIGHT - PLOT_LEFT)
    }

    fn x_ns(&self, ns: u64) -> f64 {
        self.x(ns as f64 / 1e6)
    }
}

/// The smallest 1, 2 or 5 × 10ⁿ that is at least `raw` (1 for nonsense).
fn nice_step(raw: f64) -> f64 {
    if !(raw.is_finite() && raw > 0.0) {
        return 1.0;
    }
    let base = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * base)
        .find(|step| *step >= raw * (1.0 - 1e-9))
        .unwrap_or(10.0 * base)
}

/// The ticks `0, step, 2·step, ... <= max` (with a little slack).
fn ticks(max: f64, step: f64) -> Vec<f64> {
    let n = (max / step + 1e-9).floor();
    if !n.is_finite() || n < 0.0 {
        return vec![0.0];
    }
    (0..=n as usize).map(|k| k as f64 * step).collect()
}

/// `v` with as many decimals as `step` needs.
fn tick_label(v: f64, step: f64) -> String {
    let decimals = (-step.log10().floor()).clamp(0.0, 6.0) as usize;
    format!("{v:.decimals$}")
}

/// Vertical grid lines through both panels, the seconds under them, and the
/// axis title.
fn draw_time_axis(out: &mut String, time: &TimeAxis) {
    let span_s = time.end_ms / 1000.0;
    let step = nice_step(span_s / 10.0);
    out.push_str("<g class=\"x-axis\">\n");
    for t in ticks(span_s, step) {
        let x = num(time.x(t * 1000.0));
        for (top, bottom) in [
            (THROUGHPUT_TOP, THROUGHPUT_BOTTOM),
            (LATENCY_TOP, LATENCY_BOTTOM),
        ] {
            push(
                out,
                format_args!(
                    "<line x1=\"{x}\" y1=\"{top}\" x2=\"{x}\" y2=\"{bottom}\" stroke=\"{GRID}\"/>\n"
                ),
            );
        }
        push(
            out,
            format_args!(
                "<text x=\"{x}\" y=\"{}\" text-anchor=\"middle\" fill=\"{AXIS}\">{}</text>\n",
                num(LATENCY_BOTTOM + 16.0),
                tick_label(t, step)
            ),
        );
    }
    push(
        out,
        format_args!(
            "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\" fill=\"{AXIS}\">time since run start (s)</text>\n</g>\n",
            num((PLOT_LEFT + PLOT_RIGHT) / 2.0),
            num(LATENCY_BOTTOM + 34.0)
        ),
    );
}

/// A panel's frame (drawn over its contents) and its rotated y-axis title.
fn draw_frame(out: &mut String, top: f64, bottom: f64, y_title: &str) {
    push(
        out,
        format_args!(
            "<rect class=\"frame\" x=\"{PLOT_LEFT}\" y=\"{top}\" width=\"{}\" height=\"{}\" \
             fill=\"none\" stroke=\"{AXIS}\"/>\n",
            num(PLOT_RIGHT - PLOT_LEFT),
            num(bottom - top)
        ),
    );
    let (x, y) = (num(PLOT_LEFT - 56.0), num((top + bottom) / 2.0));
    push(
        out,
        format_args!(
            "<text x=\"{x}\" y=\"{y}\" transform=\"rotate(-90 {x} {y})\" text-anchor=\"middle\" \
             fill=\"{AXIS}\">{}</text>\n",
            escape(y_title)
        ),
    );
}

/// A horizontal grid line at `y` with `label` left of the panel.
fn draw_y_tick(out: &mut String, y: f64, label: &str) {
    let y = num(y);
    push(
        out,
        format_args!(
            "<line x1=\"{PLOT_LEFT}\" y1=\"{y}\" x2=\"{PLOT_RIGHT}\" y2=\"{y}\" stroke=\"{GRID}\"/>\n\
             <text x=\"{}\" y=\"{y}\" dy=\"0.35em\" text-anchor=\"end\" fill=\"{AXIS}\">{}</text>\n",
            num(PLOT_LEFT - 6.0),
            escape(label)
        ),
    );
}

// ---------------------------------------------------------------------------
// Throughput panel.

/// Throughput buckets are never narrower than this.
const MIN_BUCKET_MS: f64 = 1.0;

/// Completions per outcome in buckets of `width_ms`; the last bucket runs to
/// the end of the run, so it is between half and one and a half widths long
/// and its rate is not diluted by time after the run.
struct Buckets {
    width_ms: f64,
    end_ms: f64,
    counts: [Vec<u32>; 3],
}

impl Buckets {
    fn of(history: &[Op], end_ms: f64) -> Buckets {
        let width_ms = nice_step(end_ms / 100.0).max(MIN_BUCKET_MS);
        let n = ((end_ms / width_ms).round() as usize).max(1);
        let mut counts = [vec![0u32; n], vec![0u32; n], vec![0u32; n]];
        for op in history {
            if let Some(done) = op.complete_ns {
                let i = ((done as f64 / 1e6 / width_ms) as usize).min(n - 1);
                counts[Class::of(&op.outcome).index()][i] += 1;
            }
        }
        Buckets {
            width_ms,
            end_ms,
            counts,
        }
    }

    fn len(&self) -> usize {
        self.counts[0].len()
    }

    /// Start and end of bucket `i`, in ms.
    fn span(&self, i: usize) -> (f64, f64) {
        let start = i as f64 * self.width_ms;
        let end = if i + 1 == self.len() {
            self.end_ms
        } else {
            start + self.width_ms
        };
        (start, end)
    }

    /// Operations per second in bucket `i`.
    fn rate(&self, class: Class, i: usize) -> f64 {
        let (start, end) = self.span(i);
        let seconds = (end - start) / 1000.0;
        if seconds > 0.0 {
            f64::from(self.counts[class.index()][i]) / seconds
        } else {
            0.0
        }
    }

    fn max_rate(&self) -> f64 {
        (0..self.len())
            .flat_map(|i| Class::DRAW_ORDER.map(|c| self.rate(c, i)))
            .fold(0.0, f64::max)
    }
}

/// Draws the throughput panel; returns the bucket width in ms.
fn draw_throughput(out: &mut String, history: &[Op], time: &TimeAxis) -> f64 {
    let buckets = Buckets::of(history, time.end_ms);
    let max_rate = buckets.max_rate().max(1.0);
    let step = nice_step(max_rate / 5.0);
    let y_max = (max_rate / step).ceil() * step;
    let y = |rate: f64| THROUGHPUT_BOTTOM - rate / y_max * (THROUGHPUT_BOTTOM - THROUGHPUT_TOP);

    out.push_str("<g class=\"throughput\">\n");
    for v in ticks(y_max, step) {
        draw_y_tick(out, y(v), &tick_label(v, step));
    }
    for class in Class::DRAW_ORDER {
        let mut d = String::new();
        for i in 0..buckets.len() {
            let (start, end) = buckets.span(i);
            let yy = num(y(buckets.rate(class, i)));
            if i == 0 {
                push(&mut d, format_args!("M{} {yy}", num(time.x(start))));
            } else {
                push(&mut d, format_args!("V{yy}"));
            }
            push(&mut d, format_args!("H{}", num(time.x(end))));
        }
        push(
            out,
            format_args!(
                "<path class=\"rate-{}\" d=\"{d}\" fill=\"none\" stroke=\"{}\" stroke-width=\"1.5\" \
                 stroke-linejoin=\"round\"/>\n",
                class.name(),
                class.color()
            ),
        );
    }
    draw_frame(out, THROUGHPUT_TOP, THROUGHPUT_BOTTOM, "throughput (ops/s)");
    out.push_str("</g>\n");
    buckets.width_ms
}

// ---------------------------------------------------------------------------
// Latency panel.

/// Pixels between the latency panel's frame and its extreme decades.
const LATENCY_PAD: f64 = 6.0;

/// Latencies below this are drawn at it, so the log scale has a floor.
const MIN_LATENCY_MS: f64 = 0.001;

fn latency_ms(op: &Op) -> Option<f64> {
    let done = op.complete_ns?;
    Some((done.saturating_sub(op.invoke_ns) as f64 / 1e6).max(MIN_LATENCY_MS))
}

/// A log-scale latency axis over whole decades of milliseconds.
struct LatencyAxis {
    lo: i32,
    hi: i32,
}

impl LatencyAxis {
    fn of(history: &[Op]) -> LatencyAxis {
        let (mut min, mut max) = (f64::INFINITY, 0.0f64);
        for lat in history.iter().filter_map(latency_ms) {
            min = min.min(lat);
            max = max.max(lat);
        }
        if !(min.is_finite() && max > 0.0) {
            // No latencies: show 1 ms to 1 s.
            return LatencyAxis { lo: 0, hi: 3 };
        }
        let lo = min.log10().floor() as i32;
        let hi = (max.log10().ceil() as i32).max(lo + 1);
        LatencyAxis { lo, hi }
    }

    /// The row of `ms`, kept [`LATENCY_PAD`] inside the panel's frame so
    /// that dots on a whole decade (a 1 s timeout) stay visible.
    fn y(&self, ms: f64) -> f64 {
        let t = ((ms.log10() - f64::from(self.lo)) / f64::from(self.hi - self.lo)).clamp(0.0, 1.0);
        LATENCY_BOTTOM - LATENCY_PAD - t * (LATENCY_BOTTOM - LATENCY_TOP - 2.0 * LATENCY_PAD)
    }
}

/// 10^`decade` ms as a short duration: 1µs, 10ms, 1s, 100s.
fn decade_label(decade: i32) -> String {
    match decade {
        d if d < -3 => format!("1e{d}ms"),
        -3 => "1µs".into(),
        -2 => "10µs".into(),
        -1 => "100µs".into(),
        0 => "1ms".into(),
        1 => "10ms".into(),
        2 => "100ms".into(),
        d if d <= 5 => format!("{}s", 10i64.pow((d - 3) as u32)),
        d => format!("1e{}s", d - 3),
    }
}

/// Which cells of a `cols` × `rows` grid hold at least one dot, per outcome.
struct CellGrid {
    cols: usize,
    rows: usize,
    cells: [Vec<bool>; 3],
}

impl CellGrid {
    fn new(width: f64, height: f64) -> CellGrid {
        let cols = (width / CELL_PX).ceil().max(1.0) as usize;
        let rows = (height / CELL_PX).ceil().max(1.0) as usize;
        let empty = vec![false; cols * rows];
        CellGrid {
            cols,
            rows,
            cells: [empty.clone(), empty.clone(), empty],
        }
    }

    /// Marks the cell of the point `(dx, dy)` from the grid's corner.
    fn mark(&mut self, class: Class, dx: f64, dy: f64) {
        let col = ((dx / CELL_PX).max(0.0) as usize).min(self.cols - 1);
        let row = ((dy / CELL_PX).max(0.0) as usize).min(self.rows - 1);
        self.cells[class.index()][col * self.rows + row] = true;
    }

    /// The marked cells of `class`, column by column, as (col, row).
    fn marked(&self, class: Class) -> impl Iterator<Item = (usize, usize)> + '_ {
        let rows = self.rows;
        self.cells[class.index()]
            .iter()
            .enumerate()
            .filter(|(_, on)| **on)
            .map(move |(i, _)| (i / rows, i % rows))
    }
}

/// Draws the latency panel and the "no reply" strip above it; returns how
/// many dots and ticks were drawn.
fn draw_latency(out: &mut String, history: &[Op], time: &TimeAxis) -> usize {
    let axis = LatencyAxis::of(history);
    let mut dots = CellGrid::new(PLOT_RIGHT - PLOT_LEFT, LATENCY_BOTTOM - LATENCY_TOP);
    let mut no_reply = CellGrid::new(PLOT_RIGHT - PLOT_LEFT, 1.0);
    for op in history {
        let class = Class::of(&op.outcome);
        let dx = time.x_ns(op.invoke_ns) - PLOT_LEFT;
        match latency_ms(op) {
            Some(lat) => dots.mark(class, dx, axis.y(lat) - LATENCY_TOP),
            None => no_reply.mark(class, dx, 0.0),
        }
    }

    out.push_str("<g class=\"latency\">\n");
    let every = if axis.hi - axis.lo > 8 { 2 } else { 1 };
    for decade in (axis.lo..=axis.hi).step_by(every) {
        draw_y_tick(out, axis.y(10f64.powi(decade)), &decade_label(decade));
    }
    let mut drawn = 0;
    for class in Class::DRAW_ORDER {
        let mut d = String::new();
        for (col, row) in dots.marked(class) {
            let x = PLOT_LEFT + (col as f64 + 0.5) * CELL_PX;
            let y = LATENCY_TOP + (row as f64 + 0.5) * CELL_PX;
            push(&mut d, format_args!("M{} {}h0", num(x), num(y)));
            drawn += 1;
        }
        if !d.is_empty() {
            push(
                out,
                format_args!(
                    "<path class=\"latency-{}\" d=\"{d}\" stroke=\"{}\" stroke-width=\"3\" \
                     stroke-linecap=\"round\" stroke-opacity=\"0.8\"/>\n",
                    class.name(),
                    class.color()
                ),
            );
        }
    }
    draw_frame(out, LATENCY_TOP, LATENCY_BOTTOM, "latency (log)");
    out.push_str("</g>\n");
    drawn + draw_no_reply(out, &no_reply)
}

/// The strip of operations that never completed: one tick per cell column
/// and outcome. Drawn only when there are any; returns the tick count.
fn draw_no_reply(out: &mut String, grid: &CellGrid) -> usize {
    let mut ticks = String::new();
    let mut drawn = 0;
    for class in Class::DRAW_ORDER {
        let mut d = String::new();
        for (col, _) in grid.marked(class) {
            let x = PLOT_LEFT + (col as f64 + 0.5) * CELL_PX;
            push(
                &mut d,
                format_args!(
                    "M{} {}V{}",
                    num(x),
                    num(NO_REPLY_TOP + 2.0),
                    num(NO_REPLY_BOTTOM - 2.0)
                ),
            );
            drawn += 1;
        }
        if !d.is_empty() {
            push(
                &mut ticks,
                format_args!(
                    "<path class=\"no-reply-{}\" d=\"{d}\" stroke=\"{}\" stroke-width=\"1.5\"/>\n",
                    class.name(),
                    class.color()
                ),
            );
        }
    }
    if drawn > 0 {
        push(
            out,
            format_args!(
                "<g class=\"no-reply\">\n<rect x=\"{PLOT_LEFT}\" y=\"{NO_REPLY_TOP}\" width=\"{}\" \
                 height=\"{}\" fill=\"#f4f4f4\"/>\n{ticks}<text x=\"{}\" y=\"{}\" dy=\"0.35em\" \
                 text-anchor=\"end\" font-size=\"10\" fill=\"{AXIS}\">no reply</text>\n</g>\n",
                num(PLOT_RIGHT - PLOT_LEFT),
                num(NO_REPLY_BOTTOM - NO_REPLY_TOP),
                num(PLOT_LEFT - 6.0),
                num((NO_REPLY_TOP + NO_REPLY_BOTTOM) / 2.0)
            ),
        );
    }
    drawn
}

// ---------------------------------------------------------------------------
// Fault windows.

/// A fault window clamped to the run and placed on the canvas.
struct PlacedWindow<'a> {
    x: f64,
    width: f64,
    label: &'a str,
    color: &'static str,
}

/// The first word of a label, lowercased and without trailing punctuation:
/// "kill -9 node 2" → "kill", "heal: restart" → "heal".
fn fault_kind(label: &str) -> String {
    label
        .split_whitespace()
        .next()
        .unwrap_or("")
        .trim_end_matches(|c: char| !c.is_alphanumeric())
        .to_lowercase()
}

/// The distinct fault kinds, sorted, so each kind's color depends only on
/// which kinds the run has.
fn fault_kinds(faults: &[FaultWindow]) -> Vec<String> {
    let kinds: BTreeSet<String> = faults.iter().map(|f| fault_kind(&f.label)).collect();
    kinds.into_iter().collect()
}

fn kind_color(kinds: &[String], kind: &str) -> &'static str {
    let i = kinds.iter().position(|k| k == kind).unwrap_or(0);
    FAULT_COLORS[i % FAULT_COLORS.len()]
}

/// Clamps each window into the run (an end before the start becomes the
/// start; anything past the run's end becomes its end) and places it on the
/// canvas, at least 2 px wide so that even an instant shows. Sorted by
/// start, ties in input order.
fn place_windows<'a>(faults: &'a [FaultWindow], time: &TimeAxis) -> Vec<PlacedWindow<'a>> {
    let kinds = fault_kinds(faults);
    let mut placed: Vec<PlacedWindow<'a>> = faults
        .iter()
        .map(|f| {
            let start = (f.start_ms as f64).min(time.end_ms);
            let end = (f.end_ms as f64).clamp(start, time.end_ms);
            let width = (time.x(end) - time.x(start)).max(2.0);
            PlacedWindow {
                x: time.x(start).min(PLOT_RIGHT - width),
                width,
                label: &f.label,
                color: kind_color(&kinds, &fault_kind(&f.label)),
            }
        })
        .collect();
    placed.sort_by(|a, b| a.x.total_cmp(&b.x));
    placed
}

/// A fault label placed in a lane above the panels.
struct LabelSlot {
    lane: usize,
    text: String,
}

/// Labels for `windows` (sorted by x), dealt round-robin into the fewest
/// lanes (at most [`MAX_LANES`]) in which no label has to be cut short, or
/// into all of them when some must be. Each label is cut to the room before
/// the next label in its lane and the plot's right edge.
fn label_lanes(windows: &[PlacedWindow<'_>]) -> Vec<LabelSlot> {
    let full_chars = chars_in(MAX_LABEL_PX, LABEL_FONT);
    let mut best = Vec::new();
    for lanes in 1..=MAX_LANES {
        let mut cut = false;
        best = windows
            .iter()
            .enumerate()
            .map(|(i, w)| {
                let next = windows.get(i + lanes).map_or(PLOT_RIGHT, |n| n.x - 6.0);
                let room = (next.min(PLOT_RIGHT) - w.x - 2.0).min(MAX_LABEL_PX);
                let wanted = w.label.trim().chars().count().min(full_chars);
                let fits = chars_in(room, LABEL_FONT);
                cut |= fits < wanted;
                let text = if fits < MIN_LABEL_CHARS.min(wanted) {
                    String::new()
                } else {
                    one_line(w.label, fits.min(full_chars))
                };
                LabelSlot {
                    lane: i % lanes,
                    text,
                }
            })
            .collect();
        if !cut {
            break;
        }
    }
    best
}

/// The baseline of label lane `lane`; lane 0 is nearest the panels.
fn lane_baseline(lane: usize) -> f64 {
    THROUGHPUT_TOP - 8.0 - LANE_H * lane as f64
}

/// Shades each window over both panels and the label lanes in use (one
/// `<rect class="fault">` per window, with the full label as its tooltip)
/// and writes its label in its lane above the panels.
fn draw_fault_windows(out: &mut String, windows: &[PlacedWindow<'_>], lanes: &[LabelSlot]) {
    out.push_str("<g class=\"faults\">\n");
    let used = lanes.iter().map(|s| s.lane + 1).max().unwrap_or(1);
    let top = lane_baseline(used - 1) - LANE_H + 3.0;
    for w in windows {
        let full = one_line(w.label, usize::MAX);
        push(
            out,
            format_args!(
                "<rect class=\"fault\" x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" \
                 fill=\"{}\" fill-opacity=\"{FAULT_OPACITY}\"><title>{}</title></rect>\n",
                num(w.x),
                num(top),
                num(w.width),
                num(LATENCY_BOTTOM - top),
                w.color,
                escape(&full)
            ),
        );
    }
    for (w, slot) in windows.iter().zip(lanes) {
        if slot.text.is_empty() {
            continue;
        }
        push(
            out,
            format_args!(
                "<text class=\"fault-label\" x=\"{}\" y=\"{}\" font-size=\"{LABEL_FONT}\" \
                 fill=\"{}\">{}</text>\n",
                num(w.x + 2.0),
                num(lane_baseline(slot.lane)),
                w.color,
                escape(&slot.text)
            ),
        );
    }
    out.push_str("</g>\n");
}

// ---------------------------------------------------------------------------
// Legend and notes.

/// One row under the title: a swatch per outcome with its count, then one
/// per fault kind (as many as fit).
fn draw_legend(out: &mut String, counts: &OutcomeCounts, windows: &[PlacedWindow<'_>]) {
    out.push_str("<g class=\"legend\">\n");
    let mut x = PLOT_LEFT;
    for class in [Class::Ok, Class::Fail, Class::Ambiguous] {
        let text = format!("{} ({})", class.name(), grouped(counts.get(class)));
        push(
            out,
            format_args!(
                "<line x1=\"{}\" y1=\"{LEGEND_Y}\" x2=\"{}\" y2=\"{LEGEND_Y}\" stroke=\"{}\" \
                 stroke-width=\"3\"/>\n\
                 <text x=\"{}\" y=\"{LEGEND_Y}\" dy=\"0.35em\" fill=\"{AXIS}\">{}</text>\n",
                num(x),
                num(x + 16.0),
                class.color(),
                num(x + 21.0),
                escape(&text)
            ),
        );
        x += 21.0 + text_px(&text, 11.0) + 18.0;
    }
    let mut seen: Vec<(String, &'static str)> = Vec::new();
    for w in windows {
        let kind = fault_kind(w.label);
        if !seen.iter().any(|(k, _)| *k == kind) {
            seen.push((kind, w.color));
        }
    }
    seen.sort();
    for (kind, color) in &seen {
        let text = one_line(if kind.is_empty() { "fault" } else { kind }, 24);
        let needed = 17.0 + text_px(&text, 11.0) + 14.0;
        if x + needed > PLOT_RIGHT {
            break;
        }
        push(
            out,
            format_args!(
                "<rect class=\"fault-swatch\" x=\"{}\" y=\"{}\" width=\"12\" height=\"10\" fill=\"{color}\" \
                 fill-opacity=\"{}\"/>\n\
                 <text x=\"{}\" y=\"{LEGEND_Y}\" dy=\"0.35em\" fill=\"{AXIS}\">{}</text>\n",
                num(x),
                num(LEGEND_Y - 5.0),
                FAULT_OPACITY * 2.5,
                num(x + 17.0),
                escape(&text)
            ),
        );
        x += needed;
    }
    out.push_str("</g>\n");
}

/// How the chart was made, in small print under the time axis.
fn draw_caption(out: &mut String, bucket_ms: f64, drawn: usize, ops: usize) {
    let bucket = if bucket_ms >= 1000.0 {
        format!("{} s", num(bucket_ms / 1000.0))
    } else {
        format!("{} ms", num(bucket_ms))
    };
    let lines = [
        format!(
            "Throughput: operations completed per second, in {bucket} buckets by completion time. \
             Latency: complete − invoke, at invocation time."
        ),
        format!(
            "{} marks for {} operations (one per {} px cell and outcome; fail and ambiguous over ok). \
             No reply: operations with no completion time.",
            grouped(drawn),
            grouped(ops),
            num(CELL_PX)
        ),
    ];
    for (i, line) in lines.iter().enumerate() {
        push(
            out,
            format_args!(
                "<text class=\"caption\" x=\"{PLOT_LEFT}\" y=\"{}\" font-size=\"10\" fill=\"{MUTED}\">{}</text>\n",
                num(CAPTION_Y + 13.0 * i as f64),
                escape(line)
            ),
        );
    }
}

fn draw_empty_note(out: &mut String) {
    push(
        out,
        format_args!(
            "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\" font-size=\"14\" fill=\"{MUTED}\">no operations recorded</text>\n",
            num((PLOT_LEFT + PLOT_RIGHT) / 2.0),
            num((LATENCY_TOP + LATENCY_BOTTOM) / 2.0)
        ),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{OpKind, ProcessId, Reply};

    fn op(invoke_ms: u64, complete_ms: Option<u64>, outcome: Outcome) -> Op {
        let op = Op::invoked(ProcessId(0), "k", OpKind::Read, invoke_ms * 1_000_000);
        match complete_ms {
            Some(done) => op.completed(outcome, done * 1_000_000),
            None => op,
        }
    }

    #[test]
    fn escape_covers_markup_quotes_and_forbidden_characters() {
        assert_eq!(
            escape("a&b<c>d\"e'f\u{0}g\u{FFFF}h\n"),
            "a&amp;b&lt;c&gt;d&quot;e&apos;f\u{FFFD}g\u{FFFD}h\n"
        );
    }

    #[test]
    fn one_line_flattens_and_cuts_on_characters() {
        assert_eq!(one_line(" a\nb ", 10), "a b");
        assert_eq!(one_line("ünïcödé", 4), "ünï…");
        assert_eq!(one_line("pause (x)", 7), "pause…");
        assert_eq!(one_line("abc", 0), "");
    }

    #[test]
    fn numbers_are_short_and_always_finite() {
        assert_eq!(num(12.0), "12");
        assert_eq!(num(12.26), "12.3");
        assert_eq!(num(-0.01), "0");
        assert_eq!(num(f64::NAN), "0");
        assert_eq!(num(f64::INFINITY), "0");
    }

    #[test]
    fn steps_are_one_two_or_five_times_a_power_of_ten() {
        assert_eq!(nice_step(0.7), 1.0);
        assert_eq!(nice_step(1.0), 1.0);
        assert_eq!(nice_step(1.2), 2.0);
        assert_eq!(nice_step(3.0), 5.0);
        assert_eq!(nice_step(600.0), 1000.0);
        assert_eq!(nice_step(0.0), 1.0);
        assert_eq!(nice_step(f64::NAN), 1.0);
        assert_eq!(ticks(10.0, 2.5), vec![0.0, 2.5, 5.0, 7.5, 10.0]);
    }

    #[test]
    fn counts_are_grouped_by_thousands() {
        assert_eq!(grouped(0), "0");
        assert_eq!(grouped(999), "999");
        assert_eq!(grouped(1_000), "1,000");
        assert_eq!(grouped(200_000), "200,000");
        assert_eq!(grouped(1_234_567), "1,234,567");
    }

    #[test]
    fn decades_read_as_durations() {
        assert_eq!(decade_label(-3), "1µs");
        assert_eq!(decade_label(0), "1ms");
        assert_eq!(decade_label(3), "1s");
        assert_eq!(decade_label(5), "100s");
        assert_eq!(decade_label(7), "1e4s");
    }

    #[test]
    fn fault_kind_is_the_first_word() {
        assert_eq!(fault_kind("kill -9 node 2"), "kill");
        assert_eq!(fault_kind("Heal: restart node 1"), "heal");
        assert_eq!(fault_kind("  "), "");
    }

    #[test]
    fn buckets_count_completions_and_the_last_one_runs_to_the_end() {
        // A 10.5 s run: 105 ms per bucket rounds up to 200 ms; 53 buckets.
        let history = vec![
            op(0, Some(100), Outcome::Ok(Reply::Value(None))),
            op(0, Some(150), Outcome::Fail),
            op(0, None, Outcome::Ambiguous),
            op(10_000, Some(10_500), Outcome::Ambiguous),
        ];
        let b = Buckets::of(&history, 10_500.0);
        assert_eq!(b.width_ms, 200.0);
        assert_eq!(b.len(), 53);
        assert_eq!(b.rate(Class::Ok, 0), 5.0);
        assert_eq!(b.rate(Class::Fail, 0), 5.0);
        assert_eq!(b.span(52), (10_400.0, 10_500.0));
        assert_eq!(b.rate(Class::Ambiguous, 52), 10.0);
        let total: u32 = b.counts.iter().flatten().sum();
        assert_eq!(total, 3, "the op that never completed is not counted");
    }

    #[test]
    fn latency_axis_spans_whole_decades() {
        let history = vec![
            op(0, Some(3), Outcome::Ok(Reply::Value(None))),
            op(0, Some(250), Outcome::Fail),
            op(0, Some(0), Outcome::Fail),
        ];
        let axis = LatencyAxis::of(&history);
        assert_eq!((axis.lo, axis.hi), (-3, 3), "0 ms is drawn at 1 µs");
        assert!(axis.y(1e-3) > axis.y(1e3));
    }

    #[test]
    fn crowded_labels_use_more_lanes_and_never_overlap() {
        let faults: Vec<FaultWindow> = (0..40)
            .map(|i| FaultWindow {
                start_ms: i * 1_000,
                end_ms: i * 1_000 + 500,
                label: format!("kill -9 node {}", i % 5),
            })
            .collect();
        let time = TimeAxis::new(40_000.0);
        let windows = place_windows(&faults, &time);
        let slots = label_lanes(&windows);
        assert_eq!(slots.iter().map(|s| s.lane).max(), Some(MAX_LANES - 1));
        let mut lane_end = [f64::MIN; MAX_LANES];
        for (w, slot) in windows.iter().zip(&slots) {
            if slot.text.is_empty() {
                continue;
            }
            assert!(w.x + 2.0 >= lane_end[slot.lane], "overlap at {}", w.x);
            lane_end[slot.lane] = w.x + 2.0 + text_px(&slot.text, LABEL_FONT);
            assert!(lane_end[slot.lane] <= PLOT_RIGHT + 0.01);
        }
    }

    #[test]
    fn sparse_labels_stay_in_one_lane_and_whole() {
        let faults = vec![
            FaultWindow {
                start_ms: 1_000,
                end_ms: 2_000,
                label: "kill node 1".into(),
            },
            FaultWindow {
                start_ms: 30_000,
                end_ms: 31_000,
                label: "pause node 2".into(),
            },
        ];
        let time = TimeAxis::new(60_000.0);
        let slots = label_lanes(&place_windows(&faults, &time));
        let texts: Vec<(usize, &str)> = slots.iter().map(|s| (s.lane, s.text.as_str())).collect();
        assert_eq!(texts, vec![(0, "kill node 1"), (0, "pause node 2")]);
    }

    #[test]
    fn empty_input_draws_a_one_second_axis() {
        let text = svg(&[], &[], "");
        assert!(text.starts_with("<svg") && text.ends_with("</svg>\n"));
        assert!(!text.contains("NaN") && !text.contains("inf"));
        assert!(text.contains("in 10 ms buckets"));
    }
}
