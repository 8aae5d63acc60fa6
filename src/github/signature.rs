//! Webhook signature verification: the `X-Hub-Signature-256` HMAC over the raw
//! body, checked in constant time against every configured secret (several at
//! once so a secret can be rotated without dropping deliveries). The SHA-1
//! `X-Hub-Signature` header is never consulted: there is no path that accepts it.

use std::fmt;

use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The header GitHub puts the SHA-256 signature in.
pub const SIGNATURE_256_HEADER: &str = "x-hub-signature-256";

const PREFIX: &str = "sha256=";
const HEX_LEN: usize = 64;

/// Why a delivery's signature was refused. No variant carries a secret, the
/// signature or any part of the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// No `X-Hub-Signature-256` header.
    #[error("missing X-Hub-Signature-256 header")]
    Missing,
    /// The header does not start with `sha256=` (another algorithm, another
    /// case, or garbage).
    #[error("X-Hub-Signature-256 does not start with `sha256=`")]
    BadPrefix,
    /// The digest is not 64 characters long (truncated or padded).
    #[error("X-Hub-Signature-256 digest has {0} characters, expected 64")]
    BadLength(usize),
    /// The digest is 64 characters but not hexadecimal.
    #[error("X-Hub-Signature-256 digest is not hexadecimal")]
    NotHex,
    /// Well formed, but no configured secret produces it.
    #[error("signature matches no configured webhook secret")]
    Mismatch,
}

/// Why a webhook secret file was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SecretsError {
    /// The file holds no secret (only blank lines).
    #[error("the webhook secret file holds no secret")]
    Empty,
}

/// The webhook secrets a delivery may be signed with; any one is accepted.
pub struct WebhookSecrets {
    secrets: Vec<SecretString>,
}

impl fmt::Debug for WebhookSecrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookSecrets")
            .field("count", &self.secrets.len())
            .finish_non_exhaustive()
    }
}

impl WebhookSecrets {
    /// Secrets from the contents of a secret file: one per line, surrounding
    /// whitespace and blank lines ignored. A file with no secret is an error.
    pub fn from_file_contents(contents: &str) -> Result<Self, SecretsError> {
        Self::new(
            contents
                .lines()
                .map(str::trim)
                .filter(|line| !line.is_empty())
                .map(|line| SecretString::from(line.to_owned())),
        )
    }

    /// Secrets given directly. At least one is required.
    pub fn new(secrets: impl IntoIterator<Item = SecretString>) -> Result<Self, SecretsError> {
        let secrets: Vec<_> = secrets.into_iter().filter(|s| !s.expose_secret().is_empty()).collect();
        if secrets.is_empty() {
            return Err(SecretsError::Empty);
        }
        Ok(Self { secrets })
    }

    /// How many secrets are accepted.
    pub fn len(&self) -> usize {
        self.secrets.len()
    }

    /// Always false: a `WebhookSecrets` holds at least one secret.
    pub fn is_empty(&self) -> bool {
        self.secrets.is_empty()
    }

    /// Checks the value of `X-Hub-Signature-256` against the raw body. The
    /// comparison is constant time, and every secret is tried whatever the
    /// outcome of the others.
    pub fn verify(&self, signature_256_header: Option<&str>, body: &[u8]) -> Result<(), SignatureError> {
        let header = signature_256_header.ok_or(SignatureError::Missing)?;
        let digest = header.strip_prefix(PREFIX).ok_or(SignatureError::BadPrefix)?;
        if digest.len() != HEX_LEN {
            return Err(SignatureError::BadLength(digest.chars().count()));
        }
        let mut expected = [0u8; HEX_LEN / 2];
        hex::decode_to_slice(digest, &mut expected).map_err(|_| SignatureError::NotHex)?;

        let mut matched = false;
        for secret in &self.secrets {
            let Ok(mut mac) = HmacSha256::new_from_slice(secret.expose_secret().as_bytes()) else {
                continue;
            };
            mac.update(body);
            // No short cut: which secret matched must not show in the timing.
            matched |= mac.verify_slice(&expected).is_ok();
        }
        if matched { Ok(()) } else { Err(SignatureError::Mismatch) }
    }
}

/// The `X-Hub-Signature-256` value GitHub would send for `body` signed with
/// `secret`: `sha256=` and 64 lowercase hex digits. For tests and tools.
pub fn sign(secret: &str, body: &[u8]) -> String {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = HmacSha256::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(body);
    format!("{PREFIX}{}", hex::encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODY: &[u8] = br#"{"zen":"Design for failure."}"#;

    fn secrets(contents: &str) -> WebhookSecrets {
        WebhookSecrets::from_file_contents(contents).unwrap()
    }

    #[test]
    fn secret_file_parsing() {
        assert_eq!(secrets("one\n").len(), 1);
        assert_eq!(secrets("\n  one  \n\n\ttwo\r\n\n").len(), 2);
        assert_eq!(WebhookSecrets::from_file_contents("").unwrap_err(), SecretsError::Empty);
        assert_eq!(
            WebhookSecrets::from_file_contents(" \n\t\n\r\n").unwrap_err(),
            SecretsError::Empty
        );
        // Surrounding whitespace is not part of the secret.
        let s = secrets("  padded  \n");
        assert_eq!(s.verify(Some(&sign("padded", BODY)), BODY), Ok(()));
    }

    #[test]
    fn debug_shows_no_secret() {
        let s = secrets("hunter2-very-secret\n");
        let shown = format!("{s:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("count: 1"), "{shown}");
    }

    #[test]
    fn sign_matches_githubs_documented_example() {
        // GitHub's "Validating webhook deliveries" example.
        assert_eq!(
            sign("It's a Secret to Everybody", b"Hello, World!"),
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
        );
    }

    #[test]
    fn verify_table() {
        let good = sign("first", BODY);
        let second = sign("second", BODY);
        let wrong = sign("other", BODY);
        let digest = good.strip_prefix("sha256=").unwrap().to_owned();
        let upper_prefix = format!("SHA256={digest}");
        let truncated = format!("sha256={}", &digest[..63]);
        let too_long = format!("sha256={digest}0");
        let not_hex = format!("sha256={}zz", &digest[..62]);
        let upper_hex = format!("sha256={}", digest.to_uppercase());
        let sha1 = "sha1=0123456789abcdef0123456789abcdef01234567".to_owned();
        let garbage = format!("xsha256={digest}");
        let spaced = format!(" sha256={digest}");
        let empty_digest = "sha256=".to_owned();

        let s = secrets("first\nsecond\n");
        type Case<'a> = (&'a str, Option<&'a str>, &'a [u8], Result<(), SignatureError>);
        let cases: &[Case] = &[
            ("right secret", Some(&good), BODY, Ok(())),
            ("second secret (rotation)", Some(&second), BODY, Ok(())),
            ("uppercase hex digits", Some(&upper_hex), BODY, Ok(())),
            ("wrong secret", Some(&wrong), BODY, Err(SignatureError::Mismatch)),
            (
                "body changed",
                Some(&good),
                b"{\"zen\":\"x\"}",
                Err(SignatureError::Mismatch),
            ),
            ("empty body", Some(&good), b"", Err(SignatureError::Mismatch)),
            (
                "truncated hex",
                Some(&truncated),
                BODY,
                Err(SignatureError::BadLength(63)),
            ),
            ("too long", Some(&too_long), BODY, Err(SignatureError::BadLength(65))),
            (
                "empty digest",
                Some(&empty_digest),
                BODY,
                Err(SignatureError::BadLength(0)),
            ),
            ("not hex", Some(&not_hex), BODY, Err(SignatureError::NotHex)),
            (
                "uppercase prefix",
                Some(&upper_prefix),
                BODY,
                Err(SignatureError::BadPrefix),
            ),
            ("garbage prefix", Some(&garbage), BODY, Err(SignatureError::BadPrefix)),
            ("leading space", Some(&spaced), BODY, Err(SignatureError::BadPrefix)),
            ("sha1 header", Some(&sha1), BODY, Err(SignatureError::BadPrefix)),
            ("empty header", Some(""), BODY, Err(SignatureError::BadPrefix)),
            ("missing header", None, BODY, Err(SignatureError::Missing)),
        ];
        for (name, header, body, want) in cases {
            assert_eq!(s.verify(*header, body), *want, "{name}");
        }
    }

    #[test]
    fn errors_never_echo_input() {
        let s = secrets("topsecret\n");
        let long = format!("sha256={}", "é".repeat(40));
        for header in [Some("sha256=abc"), Some("sha1=abc"), Some(long.as_str()), None] {
            let err = s.verify(header, b"the body").unwrap_err().to_string();
            assert!(
                !err.contains("topsecret") && !err.contains("the body") && !err.contains("abc"),
                "{err}"
            );
        }
        // A non-ASCII digest of 64 bytes is refused without a panic.
        let multibyte = format!("sha256={}", "é".repeat(32));
        assert_eq!(s.verify(Some(&multibyte), b""), Err(SignatureError::NotHex));
    }
}
