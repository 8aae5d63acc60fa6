//! Property tests: webhook parsing, trigger matching and sanitizing never
//! panic on arbitrary input, and sanitized text holds no invisible
//! characters.

use claude_operator::github::events::{Parsed, parse};
use claude_operator::github::signature::{WebhookSecrets, sign};
use claude_operator::github::trigger::{build_prompt, contains_command, find_trigger, sanitize};
use proptest::prelude::*;

const EVENTS: &[&str] = &[
    "issue_comment",
    "pull_request_review_comment",
    "pull_request_review",
    "issues",
    "ping",
    "push",
];

fn is_zero_width_or_bidi(c: char) -> bool {
    matches!(c, '\u{200B}'..='\u{200D}' | '\u{2060}' | '\u{FEFF}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// Strings rich in what the matcher and sanitizer care about.
fn markdownish() -> impl Strategy<Value = String> {
    let pieces = prop::sample::select(vec![
        "@claude",
        "@Claude",
        "@cl",
        "aude",
        " ",
        "\n",
        "\n\n",
        "> ",
        "```",
        "~~~",
        "    ",
        "`",
        "<!--",
        "-->",
        "![",
        "](",
        ")",
        "[",
        "]:",
        "\"",
        "*",
        "_",
        "\\",
        "<div>",
        "&#64;",
        ".",
        "-",
        "/claude approve",
        "\u{200B}",
        "\u{202E}",
        "\u{2067}",
        "\u{FEFF}",
        "é",
        "İ",
        "\u{E0041}",
        "fix it",
    ]);
    prop::collection::vec(prop_oneof![pieces.prop_map(str::to_owned), any::<String>()], 0..40).prop_map(|v| v.concat())
}

/// A JSON payload of roughly the right shape with arbitrary values.
fn payload() -> impl Strategy<Value = Vec<u8>> {
    (
        prop::sample::select(vec![
            "created",
            "edited",
            "submitted",
            "opened",
            "assigned",
            "labeled",
            "x",
        ]),
        prop::option::of(any::<String>()),
        prop::option::of(any::<i64>()),
        prop::sample::select(vec!["User", "Bot", "Organization", "Mannequin", ""]),
        any::<bool>(),
    )
        .prop_map(|(action, body, number, sender_type, pr)| {
            let mut v = serde_json::json!({
                "action": action,
                "repository": {"id": 1, "full_name": "o/r", "owner": {"login": "o"}},
                "sender": {"login": "u", "id": 2, "type": sender_type},
                "issue": {"number": number, "title": "t", "body": body},
                "comment": {"id": 3, "body": body},
                "review": {"id": 4, "body": body},
                "pull_request": {"number": number, "head": {"sha": "x", "ref": "y", "repo": null}},
                "label": {"name": "l"},
                "assignee": {"login": "a", "id": 5, "type": "User"},
            });
            if pr {
                v["issue"]["pull_request"] = serde_json::json!({});
            }
            serde_json::to_vec(&v).unwrap()
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn parse_never_panics_on_bytes(event in prop::sample::select(EVENTS), body in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = parse(event, &body);
    }

    #[test]
    fn parse_never_panics_on_shaped_payloads(event in prop::sample::select(EVENTS), body in payload()) {
        if let Ok(Parsed::Candidate(c)) = parse(event, &body) {
            prop_assert!(c.number >= 1);
            let _ = build_prompt(&c.body, &c);
        }
    }

    #[test]
    fn matching_never_panics(text in markdownish(), phrase in prop_oneof![Just("@claude".to_owned()), any::<String>()]) {
        let _ = find_trigger(&text, &phrase);
        let _ = contains_command(&text, &phrase);
    }

    #[test]
    fn sanitize_leaves_no_invisible_characters(text in markdownish()) {
        let clean = sanitize(&text);
        prop_assert!(!clean.chars().any(is_zero_width_or_bidi), "{:?} -> {:?}", text, clean);
        prop_assert!(clean.len() <= text.len());
    }

    #[test]
    fn instruction_is_sanitized(text in markdownish()) {
        if let Some(instruction) = find_trigger(&text, "@claude") {
            prop_assert!(!instruction.chars().any(is_zero_width_or_bidi));
            prop_assert!(!instruction.contains("<!--"));
        }
    }

    #[test]
    fn signatures_verify_only_with_the_right_secret(secret in "[ -~]{1,40}", other in "[ -~]{1,40}", body in prop::collection::vec(any::<u8>(), 0..256)) {
        let secrets = WebhookSecrets::from_file_contents(&format!("{other}\n{secret}\n")).unwrap();
        let trimmed = secret.trim();
        prop_assume!(!trimmed.is_empty());
        prop_assert!(secrets.verify(Some(&sign(trimmed, &body)), &body).is_ok());
        let stranger = format!("{trimmed}-not");
        prop_assume!(stranger.as_str() != other.trim());
        prop_assert!(secrets.verify(Some(&sign(&stranger, &body)), &body).is_err());
    }

    #[test]
    fn verify_never_panics_on_headers(header in any::<String>(), body in prop::collection::vec(any::<u8>(), 0..64)) {
        let secrets = WebhookSecrets::from_file_contents("s\n").unwrap();
        let _ = secrets.verify(Some(&header), &body);
    }
}
