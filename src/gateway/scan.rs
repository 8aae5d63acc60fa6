//! Credential scan of what leaves through the gateway (REST bodies, pushed
//! content): refuses anything that carries the run's capability, a GitHub or
//! Anthropic token, or another well-known credential format.
//!
//! The answer is the *kind* of credential found, never the match: callers
//! put it in refusals and audit lines.

use std::sync::LazyLock;

use regex::bytes::Regex;

/// Kind name of an exact secret of the run (its token, its capability).
pub const RUN_SECRET: &str = "run secret";

/// Well-known credential formats, by kind name. Byte regexes: content need
/// not be UTF-8 (pushed blobs).
static PATTERNS: LazyLock<Vec<(&'static str, Regex)>> = LazyLock::new(|| {
    [
        ("GitHub token", r"gh[pousr]_[A-Za-z0-9]{36,}"),
        ("GitHub token", r"github_pat_[A-Za-z0-9_]{22,}"),
        ("Anthropic API key", r"sk-ant-[A-Za-z0-9_-]{20,}"),
        // See grant::CAPABILITY_PREFIX: 32 random bytes as unpadded URL-safe base64.
        ("capability", r"cocap_[A-Za-z0-9_-]{43}"),
        ("AWS access key", r"AKIA[0-9A-Z]{16}"),
        ("private key", r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
        ("Slack token", r"xox[abprs]-[A-Za-z0-9-]{10,}"),
    ]
    .into_iter()
    .map(|(kind, re)| (kind, Regex::new(re).expect("credential patterns are valid")))
    .collect()
});

/// The kind of credential found, if any, in `content`. `extra` are exact
/// secrets of this run (its capability, its token) to look for as well;
/// empty ones are ignored.
pub fn find_credential(content: &[u8], extra: &[&str]) -> Option<&'static str> {
    for secret in extra.iter().filter(|s| !s.is_empty()) {
        // An escaped literal compiles to a substring search; failing to
        // compile one (size limits) counts as found: fail closed.
        match Regex::new(&regex::escape(secret)) {
            Ok(re) if !re.is_match(content) => {}
            _ => return Some(RUN_SECRET),
        }
    }
    PATTERNS
        .iter()
        .find(|(_, re)| re.is_match(content))
        .map(|(kind, _)| *kind)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn finds_each_known_format_and_names_only_its_kind() {
        let cap = crate::grant::new_capability();
        let cases: &[(&str, Option<&str>)] = &[
            ("token: ghp_0123456789abcdefghijABCDEFGHIJ012345", Some("GitHub token")),
            ("ghs_0123456789abcdefghijABCDEFGHIJ012345xyz", Some("GitHub token")),
            ("gho_0123456789abcdefghijABCDEFGHIJ012345", Some("GitHub token")),
            ("ghu_0123456789abcdefghijABCDEFGHIJ012345", Some("GitHub token")),
            ("ghr_0123456789abcdefghijABCDEFGHIJ012345", Some("GitHub token")),
            ("github_pat_11ABCDEFG0123456789_abcdefghijklmnop", Some("GitHub token")),
            (
                "ANTHROPIC_API_KEY=sk-ant-api03-abcdefghij_KLMNOPQRST-uv",
                Some("Anthropic API key"),
            ),
            (&cap, Some("capability")),
            ("aws_access_key_id = AKIAIOSFODNN7EXAMPLE", Some("AWS access key")),
            ("-----BEGIN RSA PRIVATE KEY-----\nMIIE", Some("private key")),
            ("-----BEGIN PRIVATE KEY-----", Some("private key")),
            ("-----BEGIN OPENSSH PRIVATE KEY-----", Some("private key")),
            ("SLACK=xoxb-123456789012-abcdefghij", Some("Slack token")),
            ("xoxp-1234567890-abc", Some("Slack token")),
        ];
        for (content, want) in cases {
            assert_eq!(find_credential(content.as_bytes(), &[]), *want, "{content}");
        }
    }

    #[test]
    fn ordinary_text_is_not_a_credential() {
        let cases = [
            "",
            "Fixed the off-by-one in the parser; see #12.",
            "ghp_short",                               // too short for a token
            "gh_0123456789abcdefghijABCDEFGHIJ012345", // no type letter
            "github_pat_short",
            "sk-ant-short",
            "cocap_tooshort",
            "AKIA1234",
            "akiaiosfodnn7example", // lower case is not an access key id
            "-----BEGIN PUBLIC KEY-----",
            "-----BEGIN CERTIFICATE-----",
            "xoxz-1234567890-abc",
            "The function `sk_ant` returns ghp values; AKIA is a prefix.",
            "diff --git a/src/lib.rs b/src/lib.rs\n+fn main() {}\n",
        ];
        for content in cases {
            assert_eq!(find_credential(content.as_bytes(), &[]), None, "{content}");
        }
    }

    #[test]
    fn exact_run_secrets_are_found_anywhere_even_in_binary_content() {
        let mut blob = vec![0u8, 0xff, 0xfe];
        blob.extend_from_slice(b"v1.my-installation-token.xyz");
        blob.push(0x80);
        assert_eq!(find_credential(&blob, &["my-installation-token"]), Some(RUN_SECRET));
        assert_eq!(find_credential(&blob, &["other"]), None);
        // An empty secret matches nothing (not everything).
        assert_eq!(find_credential(b"anything", &[""]), None);
        // Regex metacharacters in a secret are literal.
        assert_eq!(find_credential(b"a.b", &["a+b"]), None);
        assert_eq!(find_credential(b"xa+by", &["a+b"]), Some(RUN_SECRET));
    }

    proptest! {
        #[test]
        fn a_capability_is_found_wherever_it_is(prefix in ".{0,200}", suffix in ".{0,200}") {
            let cap = crate::grant::new_capability();
            let content = format!("{prefix}{cap}{suffix}");
            // Either the capability pattern or another earlier format embedded
            // in the random text: never nothing.
            prop_assert!(find_credential(content.as_bytes(), &[]).is_some());
            prop_assert_eq!(find_credential(content.as_bytes(), &[&cap]), Some(RUN_SECRET));
        }

        #[test]
        fn prose_without_credential_prefixes_is_clean(text in "[a-z ,.!?()0-9\n]{0,500}") {
            prop_assert_eq!(find_credential(text.as_bytes(), &[]), None);
        }

        #[test]
        fn any_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2000)) {
            let _ = find_credential(&bytes, &["secret"]);
        }
    }
}
