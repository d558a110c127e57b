//! The timeline SVG: well-formed for any input, shows what it was given,
//! stays small for long runs.

use std::time::Instant;

use atoll_jepsen::history::{Op, OpKind, Outcome, ProcessId, Reply};
use atoll_jepsen::timeline::{svg, FaultWindow};

use crate::timeline_synthetic as synthetic;

/// Parses `text` as XML and returns the document; panics with the parser's
/// message if it is not well-formed.
fn parse(text: &str) -> roxmltree::Document<'_> {
    roxmltree::Document::parse(text).unwrap_or_else(|e| panic!("not well-formed XML: {e}"))
}

fn assert_clean(text: &str) {
    assert!(
        text.starts_with("<svg"),
        "starts with {:?}",
        &text[..20.min(text.len())]
    );
    assert!(text.trim_end().ends_with("</svg>"));
    for bad in ["NaN", "nan", "inf"] {
        assert!(!text.contains(bad), "contains {bad}");
    }
    let doc = parse(text);
    assert_eq!(doc.root_element().tag_name().name(), "svg");
}

fn elements_with_class<'a>(
    doc: &'a roxmltree::Document<'a>,
    tag: &str,
    class: &str,
) -> Vec<roxmltree::Node<'a, 'a>> {
    doc.descendants()
        .filter(|n| n.has_tag_name(tag) && n.attribute("class") == Some(class))
        .collect()
}

fn op(invoke_ms: u64, latency_ms: Option<u64>, outcome: Outcome) -> Op {
    let op = Op::invoked(
        ProcessId(invoke_ms),
        "r0",
        OpKind::Read,
        invoke_ms * 1_000_000,
    );
    match latency_ms {
        Some(lat) => op.completed(outcome, (invoke_ms + lat) * 1_000_000),
        None => op,
    }
}

#[test]
fn empty_history_without_faults_is_a_valid_svg() {
    let text = svg(&[], &[], "");
    assert_clean(&text);
    assert!(text.contains("no operations recorded"));
}

#[test]
fn mixed_history_shows_labels_legend_and_one_shade_per_window() {
    let faults = synthetic::two_faults();
    let history = synthetic::history(3_000, 60_000, &faults, 1);
    let text = svg(&history, &faults, "title with <tags> & \"quotes\"");
    assert_clean(&text);

    // Escaped in the text, intact once parsed.
    assert!(text.contains("partition {1,2} | {3} &lt;majority&gt; &amp; &quot;quoted&quot;"));
    assert!(text.contains("title with &lt;tags&gt; &amp; &quot;quotes&quot;"));
    let doc = parse(&text);
    let shades = elements_with_class(&doc, "rect", "fault");
    assert_eq!(shades.len(), faults.len());
    let tooltips: Vec<&str> = shades
        .iter()
        .filter_map(|r| r.children().find(|c| c.has_tag_name("title")))
        .filter_map(|t| t.text())
        .collect();
    assert_eq!(
        tooltips,
        faults.iter().map(|f| f.label.as_str()).collect::<Vec<_>>()
    );
    let labels: Vec<&str> = elements_with_class(&doc, "text", "fault-label")
        .iter()
        .filter_map(|t| t.text())
        .collect();
    assert_eq!(labels.len(), 2, "{labels:?}");
    assert!(labels.contains(&"kill -9 node 2"), "{labels:?}");

    // Legend: every outcome with its count, every fault kind.
    let legend = doc
        .descendants()
        .find(|n| n.attribute("class") == Some("legend"))
        .unwrap();
    let entries: Vec<&str> = legend
        .descendants()
        .filter_map(|n| n.text())
        .filter(|t| !t.trim().is_empty())
        .collect();
    let count = |f: fn(&Outcome) -> bool| history.iter().filter(|o| f(&o.outcome)).count();
    let ok = count(|o| matches!(o, Outcome::Ok(_)));
    let fail = count(|o| matches!(o, Outcome::Fail));
    let amb = count(|o| matches!(o, Outcome::Ambiguous));
    assert!(fail > 0 && amb > 0);
    for expected in [
        format!("ok ({})", group(ok)),
        format!("fail ({fail})"),
        format!("ambiguous ({amb})"),
        "kill".to_string(),
        "partition".to_string(),
    ] {
        assert!(
            entries.contains(&expected.as_str()),
            "{expected} not in {entries:?}"
        );
    }
    // Every outcome has dots and a throughput line; unfinished ops a strip.
    for class in [
        "latency-ok",
        "latency-fail",
        "latency-ambiguous",
        "rate-ok",
        "rate-fail",
        "rate-ambiguous",
    ] {
        assert_eq!(elements_with_class(&doc, "path", class).len(), 1, "{class}");
    }
    assert!(text.contains(">no reply</text>"));
}

fn group(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[test]
fn two_hundred_thousand_ops_stay_under_five_megabytes() {
    let faults = synthetic::two_faults();
    let history = synthetic::history(200_000, 300_000, &faults, 2);
    let started = Instant::now();
    let text = svg(&history, &faults, "200k ops");
    let took = started.elapsed();
    eprintln!("200,000 ops: {} bytes in {took:?}", text.len());
    assert!(text.len() < 5_000_000, "{} bytes", text.len());
    assert_clean(&text);
}

#[test]
fn out_of_range_windows_are_clamped_into_the_plot() {
    let history = vec![
        op(0, Some(5), Outcome::Ok(Reply::Value(None))),
        op(10_000, Some(5), Outcome::Ok(Reply::Value(None))),
    ];
    let faults = vec![
        FaultWindow {
            start_ms: 5_000,
            end_ms: 1_000,
            label: "backwards".into(),
        },
        FaultWindow {
            start_ms: 8_000,
            end_ms: 90_000,
            label: "past the end".into(),
        },
        FaultWindow {
            start_ms: 50_000,
            end_ms: 60_000,
            label: "after the run".into(),
        },
        FaultWindow {
            start_ms: 0,
            end_ms: 0,
            label: String::new(),
        },
    ];
    let text = svg(&history, &faults, "clamping");
    assert_clean(&text);
    let doc = parse(&text);
    let frame = elements_with_class(&doc, "rect", "frame")[0];
    let attr =
        |n: roxmltree::Node<'_, '_>, a: &str| n.attribute(a).unwrap().parse::<f64>().unwrap();
    let (left, right) = (attr(frame, "x"), attr(frame, "x") + attr(frame, "width"));
    let shades = elements_with_class(&doc, "rect", "fault");
    assert_eq!(shades.len(), faults.len());
    for shade in shades {
        let (x, w) = (attr(shade, "x"), attr(shade, "width"));
        assert!(w >= 2.0, "width {w}");
        assert!(
            x >= left && x + w <= right + 0.01,
            "{x}+{w} outside {left}..{right}"
        );
    }
}

#[test]
fn output_is_deterministic() {
    let faults = synthetic::two_faults();
    let history = synthetic::history(5_000, 60_000, &faults, 3);
    assert_eq!(svg(&history, &faults, "t"), svg(&history, &faults, "t"));
}

#[test]
fn a_single_failure_among_many_ok_ops_is_drawn() {
    let mut history: Vec<Op> = (0..50_000)
        .map(|i| op(i % 1000, Some(3), Outcome::Ok(Reply::Value(None))))
        .collect();
    history.push(op(500, Some(3), Outcome::Fail));
    let text = svg(&history, &[], "one failure");
    assert_clean(&text);
    let doc = parse(&text);
    let fail = elements_with_class(&doc, "path", "latency-fail");
    assert_eq!(fail.len(), 1);
    assert_eq!(fail[0].attribute("d").unwrap().matches('M').count(), 1);
}

#[test]
fn hostile_text_stays_well_formed() {
    let history = vec![
        op(0, None, Outcome::Ambiguous),
        op(1, Some(0), Outcome::Fail),
    ];
    let faults = vec![FaultWindow {
        start_ms: 0,
        end_ms: 1,
        label: "a\u{0}b\u{1b}[31m ]]> <!-- --> 'x' \u{FFFF} ünïcödé ✓ ".repeat(20),
    }];
    let text = svg(&history, &faults, "\u{7}bell\nnewline & <b>");
    assert_clean(&text);
}
