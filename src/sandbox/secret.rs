//! The run's Secret: the minted GitHub token, the Anthropic API key and the
//! prompt, mounted into the runner pod as files. Owned by the run, so it goes
//! with it; immutable, so a token cannot be swapped under a running pod.
//!
//! The returned object holds secret values: never log it or format it with
//! `Debug`. Only its metadata may be shown.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;

use super::{
    ANNOTATION_TOKEN_EXPIRES_AT, Result, SECRET_KEY_ANTHROPIC_API_KEY, SECRET_KEY_GITHUB_TOKEN, SECRET_KEY_PROMPT,
    run_labels, run_owner, secret_name,
};
use crate::api::ClaudeRun;

/// The run's Secret, named [`secret_name`] of the run, in the run's namespace.
/// The token's expiry is recorded as an annotation (RFC 3339); the values
/// themselves only under `data`.
pub fn run_secret(
    run: &ClaudeRun,
    token: &str,
    token_expires_at: Timestamp,
    anthropic_key: &str,
    prompt: &str,
) -> Result<Secret> {
    let (name, namespace, owner) = run_owner(run)?;
    let data = [
        (SECRET_KEY_GITHUB_TOKEN, token),
        (SECRET_KEY_ANTHROPIC_API_KEY, anthropic_key),
        (SECRET_KEY_PROMPT, prompt),
    ]
    .into_iter()
    .map(|(key, value)| (key.to_owned(), ByteString(value.as_bytes().to_vec())))
    .collect();
    Ok(Secret {
        metadata: ObjectMeta {
            name: Some(secret_name(&name)),
            namespace: Some(namespace),
            labels: Some(run_labels(run)),
            annotations: Some(BTreeMap::from([(
                ANNOTATION_TOKEN_EXPIRES_AT.to_owned(),
                token_expires_at.to_string(),
            )])),
            owner_references: Some(vec![owner]),
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".into()),
        immutable: Some(true),
        data: Some(data),
        ..Secret::default()
    })
}

#[cfg(test)]
mod tests {
    use super::super::fixtures;
    use super::*;

    const TOKEN: &str = "ghs_16C7e42F292c6912E7710c838347Ae178B4a";
    const KEY: &str = "sk-ant-api03-test-key-not-real";
    const PROMPT: &str = "Please add exponential backoff.\n$(rm -rf /)";

    fn build() -> Secret {
        run_secret(
            &fixtures::run(),
            TOKEN,
            "2026-05-01T12:34:56Z".parse().unwrap(),
            KEY,
            PROMPT,
        )
        .unwrap()
    }

    #[test]
    fn holds_the_three_values_under_data_only() {
        let secret = build();
        assert_eq!(secret.type_.as_deref(), Some("Opaque"));
        assert_eq!(secret.immutable, Some(true));
        assert_eq!(secret.string_data, None);
        let data = secret.data.unwrap();
        let text = |k: &str| String::from_utf8(data[k].0.clone()).unwrap();
        assert_eq!(
            data.keys().map(String::as_str).collect::<Vec<_>>(),
            ["anthropic-api-key", "github-token", "prompt"]
        );
        assert_eq!(text("github-token"), TOKEN);
        assert_eq!(text("anthropic-api-key"), KEY);
        assert_eq!(text("prompt"), PROMPT);
    }

    #[test]
    fn metadata_names_labels_and_owner() {
        let meta = build().metadata;
        assert_eq!(meta.name.as_deref(), Some("gh-3f1c2a9d0b7e4c61-secrets"));
        assert_eq!(meta.namespace.as_deref(), Some("claude-runs"));
        assert_eq!(meta.labels, Some(run_labels(&fixtures::run())));
        assert_eq!(
            meta.annotations,
            Some(BTreeMap::from([(
                "claude-operator.dev/token-expires-at".to_owned(),
                "2026-05-01T12:34:56Z".to_owned()
            )]))
        );
        fixtures::assert_owned_by_run(&meta);
    }

    #[test]
    fn metadata_never_holds_a_secret_value() {
        let meta = serde_json::to_string(&build().metadata).unwrap();
        for value in [TOKEN, KEY, "ghs_", "sk-ant", "backoff"] {
            assert!(!meta.contains(value), "{value:?} in {meta}");
        }
    }
}
