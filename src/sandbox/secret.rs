//! The run's Secret: the run's capability and the prompt, mounted into the
//! runner pod as files. No credential: the capability is only good at the
//! gateway, and only while the run's grant is open. Owned by the run, so it
//! goes with it; immutable, so the capability cannot be swapped under a
//! running pod.
//!
//! The returned object holds the capability: never log it or format it with
//! `Debug`. Only its metadata may be shown.

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::{Result, SECRET_KEY_CAPABILITY, SECRET_KEY_PROMPT, run_labels, run_owner, secret_name};
use crate::api::ClaudeRun;

/// The run's Secret, named [`secret_name`] of the run, in the run's namespace.
pub fn run_secret(run: &ClaudeRun, capability: &str, prompt: &str) -> Result<Secret> {
    let (name, namespace, owner) = run_owner(run)?;
    let data = [(SECRET_KEY_CAPABILITY, capability), (SECRET_KEY_PROMPT, prompt)]
        .into_iter()
        .map(|(key, value)| (key.to_owned(), ByteString(value.as_bytes().to_vec())))
        .collect();
    Ok(Secret {
        metadata: ObjectMeta {
            name: Some(secret_name(&name)),
            namespace: Some(namespace),
            labels: Some(run_labels(run)),
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

    const CAPABILITY: &str = "cocap_dGVzdC1jYXBhYmlsaXR5LW5vdC1yZWFsLTAxMjM0NTY3ODk";
    const PROMPT: &str = "Please add exponential backoff.\n$(rm -rf /)";

    fn build() -> Secret {
        run_secret(&fixtures::run(), CAPABILITY, PROMPT).unwrap()
    }

    #[test]
    fn holds_the_capability_and_prompt_under_data_only() {
        let secret = build();
        assert_eq!(secret.type_.as_deref(), Some("Opaque"));
        assert_eq!(secret.immutable, Some(true));
        assert_eq!(secret.string_data, None);
        let data = secret.data.unwrap();
        let text = |k: &str| String::from_utf8(data[k].0.clone()).unwrap();
        assert_eq!(
            data.keys().map(String::as_str).collect::<Vec<_>>(),
            ["capability", "prompt"],
            "no token, no key"
        );
        assert_eq!(text("capability"), CAPABILITY);
        assert_eq!(text("prompt"), PROMPT);
    }

    #[test]
    fn metadata_names_labels_and_owner() {
        let meta = build().metadata;
        assert_eq!(meta.name.as_deref(), Some("gh-3f1c2a9d0b7e4c61-secrets"));
        assert_eq!(meta.namespace.as_deref(), Some("claude-runs"));
        assert_eq!(meta.labels, Some(run_labels(&fixtures::run())));
        assert_eq!(meta.annotations, None);
        fixtures::assert_owned_by_run(&meta);
    }

    #[test]
    fn metadata_never_holds_a_secret_value() {
        let meta = serde_json::to_string(&build().metadata).unwrap();
        for value in [CAPABILITY, "cocap_", "backoff"] {
            assert!(!meta.contains(value), "{value:?} in {meta}");
        }
    }
}
