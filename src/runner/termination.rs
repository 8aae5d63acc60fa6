//! Serialising the termination report so that it always fits Kubernetes'
//! termination-message limit: the free text is cut first (on a character
//! boundary), the numbers never.

use crate::report::{MAX_REPORT_BYTES, RunReport};

/// Marks text that was cut to fit.
const ELLIPSIS: char = '…';

/// The report as compact JSON of at most [`MAX_REPORT_BYTES`] bytes.
pub fn to_json(report: &RunReport) -> String {
    let json = serialize(report);
    if json.len() <= MAX_REPORT_BYTES {
        return json;
    }
    let mut report = report.clone();
    if let Some(text) = report.result.take() {
        // The escaped text is never shorter than the raw text: no prefix
        // longer than the limit can fit.
        let text = &text[..floor_char_boundary(&text, MAX_REPORT_BYTES)];
        let fits = |cut: usize| {
            let mut candidate = report.clone();
            candidate.result = Some(format!("{}{ELLIPSIS}", &text[..cut]));
            serialize(&candidate).len() <= MAX_REPORT_BYTES
        };
        // The longest prefix that fits, by bisection over the char boundaries.
        let boundaries: Vec<usize> = text.char_indices().map(|(i, _)| i).chain([text.len()]).collect();
        let fitting = boundaries.partition_point(|&cut| fits(cut));
        if fitting > 0 {
            report.result = Some(format!("{}{ELLIPSIS}", &text[..boundaries[fitting - 1]]));
        }
    }
    let mut json = serialize(&report);
    if json.len() > MAX_REPORT_BYTES && report.url.is_some() {
        report.url = None;
        json = serialize(&report);
    }
    json
}

fn floor_char_boundary(text: &str, mut index: usize) -> usize {
    if index >= text.len() {
        return text.len();
    }
    while !text.is_char_boundary(index) {
        index -= 1;
    }
    index
}

fn serialize(report: &RunReport) -> String {
    serde_json::to_string(report).expect("a RunReport always serialises")
}

/// Writes the report to the termination log (created or truncated).
pub async fn write(path: &std::path::Path, report: &RunReport) -> std::io::Result<String> {
    let json = to_json(report);
    tokio::fs::write(path, json.as_bytes()).await?;
    Ok(json)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::ModelUsage;

    fn report(result: &str) -> RunReport {
        RunReport {
            outcome: "success".into(),
            total_cost_usd: Some("12.345678901234567".into()),
            usage: [(
                "claude-sonnet-4-5".to_owned(),
                ModelUsage {
                    input_tokens: u64::MAX,
                    output_tokens: 200,
                    ..Default::default()
                },
            )]
            .into(),
            num_turns: 40,
            duration_ms: 123_456,
            session_id: Some("0f0e0d0c-0b0a-0908-0706-050403020100".into()),
            url: Some("https://github.com/o/r/pull/1".into()),
            result: Some(result.into()),
        }
    }

    #[test]
    fn a_small_report_is_unchanged() {
        let r = report("Done");
        let json = to_json(&r);
        assert_eq!(serde_json::from_str::<RunReport>(&json).unwrap(), r);
        assert!(!json.contains('\n'));
    }

    #[test]
    fn huge_text_is_cut_on_a_char_boundary_and_the_numbers_kept() {
        for text in [
            "a".repeat(100_000),
            "é🦀\"\\\n".repeat(20_000),
            "\u{1}".repeat(5_000),
            format!("{}{}", "x".repeat(4000), "🦀".repeat(100)),
        ] {
            let r = report(&text);
            let json = to_json(&r);
            assert!(json.len() <= MAX_REPORT_BYTES, "{}", json.len());
            let back: RunReport = serde_json::from_str(&json).unwrap();
            assert_eq!(back.total_cost_usd, r.total_cost_usd);
            assert_eq!(back.usage, r.usage);
            assert_eq!((back.num_turns, back.duration_ms), (40, 123_456));
            assert_eq!(back.session_id, r.session_id);
            assert_eq!(back.url, r.url);
            let cut = back.result.unwrap();
            assert!(cut.ends_with(ELLIPSIS));
            assert!(text.starts_with(cut.trim_end_matches(ELLIPSIS)));
            // Not cut more than needed.
            assert!(json.len() > MAX_REPORT_BYTES - 64, "{}", json.len());
        }
    }

    #[test]
    fn a_report_exactly_at_the_limit_is_kept_whole() {
        let base = to_json(&report("")).len();
        let r = report(&"y".repeat(MAX_REPORT_BYTES - base));
        let json = to_json(&r);
        assert_eq!(json.len(), MAX_REPORT_BYTES);
        assert_eq!(serde_json::from_str::<RunReport>(&json).unwrap(), r);
    }
}
