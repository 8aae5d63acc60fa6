//! Proves the local control plane is a real one: the apiserver enforces our
//! CRD schemas, Pod Security and ResourceQuota admission; the controller-manager
//! garbage-collects dependents; kwok runs pods to completion with a chosen
//! termination message. Run with `make e2e`.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use claude_operator::api::{ClaudeRun, ClaudeRunPolicy};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, ResourceQuota, Secret};
use kube::api::{Api, DeleteParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Resource, ResourceExt};
use serde_json::json;
use support::*;

#[tokio::test]
async fn samples_are_accepted_and_invalid_variants_rejected() {
    let client = client().await;
    install_crds(&client).await;
    let ns = TestNamespace::new(&client, "samples").await;
    let policies: Api<ClaudeRunPolicy> = Api::namespaced(client.clone(), &ns.name);
    let runs: Api<ClaudeRun> = Api::namespaced(client.clone(), &ns.name);

    let mut policy: ClaudeRunPolicy = load_yaml("config/samples/policy.yaml");
    policy.metadata.namespace = Some(ns.name.clone());
    let created = policies
        .create(&PostParams::default(), &policy)
        .await
        .expect("sample policy accepted");
    assert_eq!(created.spec, policy.spec);

    let mut run: ClaudeRun = load_yaml("config/samples/run.yaml");
    run.metadata.namespace = Some(ns.name.clone());
    runs.create(&PostParams::default(), &run)
        .await
        .expect("sample run accepted");

    // Invalid policies: each is rejected by the apiserver's schema validation.
    let invalid = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/config/invalid")).unwrap();
    let mut checked = 0;
    for entry in invalid {
        let path = entry.unwrap().path();
        let file = path.file_name().unwrap().to_str().unwrap().to_owned();
        if !file.starts_with("policy-") {
            continue;
        }
        // Sent as raw JSON: some variants (a float for money) do not even fit our Rust types.
        let text = std::fs::read_to_string(&path).unwrap();
        // A variant may name the rule it breaks: then the answer must say it,
        // so a 422 for some other reason does not pass for it.
        let answer = text.lines().find_map(|l| l.strip_prefix("# The apiserver answers: "));
        let raw: serde_json::Value = serde_yaml::from_str(&text).unwrap();
        let mut raw = raw;
        raw["metadata"]["namespace"] = json!(ns.name);
        let api: Api<kube::api::DynamicObject> = Api::namespaced_with(
            client.clone(),
            &ns.name,
            &kube::api::ApiResource::erase::<ClaudeRunPolicy>(&()),
        );
        let obj: kube::api::DynamicObject = serde_json::from_value(raw).unwrap();
        let err = api
            .create(&PostParams::default(), &obj)
            .await
            .expect_err(&format!("{file} must be rejected"));
        assert_eq!(api_error_code(&err), Some(422), "{file}: {err}");
        if let Some(answer) = answer {
            assert!(err.to_string().contains(answer), "{file}: expected `{answer}` in {err}");
        }
        checked += 1;
    }
    assert!(checked >= 8, "expected the invalid policy variants, found {checked}");

    // Editing a run's spec is rejected by the CEL rule.
    let mut edited: ClaudeRun = load_yaml("config/invalid/run-spec-edit.yaml");
    edited.metadata.namespace = Some(ns.name.clone());
    let err = runs
        .patch(
            &run.name_any(),
            &PatchParams::apply(TEST_MANAGER).force(),
            &Patch::Apply(&edited),
        )
        .await
        .expect_err("spec edit must be rejected");
    assert_eq!(api_error_code(&err), Some(422), "{err}");
    assert!(err.to_string().contains("spec is immutable"), "{err}");
    // ... while status, a subresource, may change.
    runs.patch_status(
        &run.name_any(),
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"phase": "Denied"}})),
    )
    .await
    .expect("status is writable");
}

fn restricted_pod(name: &str, privileged: bool) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": false,
            "securityContext": {"runAsNonRoot": true, "runAsUser": 10001, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{
                "name": "main",
                "image": "example.invalid/runner:1",
                "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"cpu": "100m", "memory": "64Mi"}},
                "securityContext": if privileged {
                    json!({"privileged": true})
                } else {
                    json!({"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}, "readOnlyRootFilesystem": true})
                },
            }],
        }
    }))
    .unwrap()
}

#[tokio::test]
async fn pod_security_restricted_rejects_a_privileged_pod() {
    let client = client().await;
    let ns = TestNamespace::new(&client, "psa").await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let err = pods
        .create(&PostParams::default(), &restricted_pod("bad", true))
        .await
        .expect_err("privileged pod");
    assert_eq!(api_error_code(&err), Some(403), "{err}");
    assert!(err.to_string().contains("violates PodSecurity"), "{err}");
    pods.create(&PostParams::default(), &restricted_pod("good", false))
        .await
        .expect("a restricted pod is accepted");
}

#[tokio::test]
async fn resource_quota_of_one_pod_rejects_the_second() {
    let client = client().await;
    let ns = TestNamespace::new(&client, "quota").await;
    let quotas: Api<ResourceQuota> = Api::namespaced(client.clone(), &ns.name);
    let quota: ResourceQuota =
        serde_json::from_value(json!({"metadata": {"name": "one-pod"}, "spec": {"hard": {"pods": "1"}}})).unwrap();
    quotas.create(&PostParams::default(), &quota).await.unwrap();
    // Quota admission refuses everything until the controller-manager has computed usage.
    eventually("quota status", Duration::from_secs(30), || async {
        quotas.get("one-pod").await.ok()?.status?.hard.map(|_| ())
    })
    .await;

    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    pods.create(&PostParams::default(), &restricted_pod("first", false))
        .await
        .expect("first pod fits");
    let err = pods
        .create(&PostParams::default(), &restricted_pod("second", false))
        .await
        .expect_err("second pod");
    assert_eq!(api_error_code(&err), Some(403), "{err}");
    assert!(err.to_string().contains("exceeded quota"), "{err}");
}

#[tokio::test]
async fn deleting_an_owner_garbage_collects_its_dependents() {
    let client = client().await;
    let ns = TestNamespace::new(&client, "gc").await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns.name);
    let owner = cms
        .create(
            &PostParams::default(),
            &ConfigMap {
                metadata: ObjectMeta {
                    name: Some("owner".into()),
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let dependent = Secret {
        metadata: ObjectMeta {
            name: Some("dependent".into()),
            owner_references: Some(vec![owner.controller_owner_ref(&()).unwrap()]),
            ..Default::default()
        },
        string_data: Some(BTreeMap::from([("k".to_owned(), "v".to_owned())])),
        ..Default::default()
    };
    secrets.create(&PostParams::default(), &dependent).await.unwrap();
    cms.delete("owner", &DeleteParams::background()).await.unwrap();
    eventually("dependent secret collected", Duration::from_secs(60), || async {
        match secrets.get_opt("dependent").await {
            Ok(None) => Some(()),
            _ => None,
        }
    })
    .await;
}

#[tokio::test]
async fn a_pod_on_a_kwok_node_runs_and_succeeds_with_the_chosen_termination_message() {
    let client = client().await;
    let ns = TestNamespace::new(&client, "kwok").await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    pods.create(&PostParams::default(), &restricted_pod("runner", false))
        .await
        .unwrap();

    // The scheduler binds it to a kwok node, and kwok starts it.
    let running = eventually("pod Running", Duration::from_secs(60), || async {
        let pod = pods.get("runner").await.ok()?;
        (pod.status.as_ref()?.phase.as_deref() == Some("Running")).then_some(pod)
    })
    .await;
    assert!(running.spec.unwrap().node_name.unwrap().starts_with("kwok-node-"));

    // The test plays the container: it exits with a report, as the runner would.
    let message = r#"{"outcome":"success","total_cost_usd":"0.006"}"#;
    pods.patch(
        "runner",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {
            "e2e.claude-operator.dev/outcome": "Succeeded",
            "e2e.claude-operator.dev/termination-message": message,
        }}})),
    )
    .await
    .unwrap();
    let done = eventually("pod Succeeded", Duration::from_secs(60), || async {
        let pod = pods.get("runner").await.ok()?;
        (pod.status.as_ref()?.phase.as_deref() == Some("Succeeded")).then_some(pod)
    })
    .await;
    let status = &done.status.unwrap().container_statuses.unwrap()[0];
    let terminated = status.state.as_ref().unwrap().terminated.as_ref().unwrap();
    assert_eq!(terminated.exit_code, 0);
    assert_eq!(terminated.message.as_deref(), Some(message));

    // And a deadline-exceeded pod fails the way the kubelet reports it.
    pods.create(&PostParams::default(), &restricted_pod("slow", false))
        .await
        .unwrap();
    eventually("slow pod Running", Duration::from_secs(60), || async {
        (pods.get("slow").await.ok()?.status?.phase.as_deref() == Some("Running")).then_some(())
    })
    .await;
    pods.patch(
        "slow",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {"e2e.claude-operator.dev/outcome": "DeadlineExceeded"}}})),
    )
    .await
    .unwrap();
    let failed = eventually("slow pod Failed", Duration::from_secs(60), || async {
        let status = pods.get("slow").await.ok()?.status?;
        (status.phase.as_deref() == Some("Failed")).then_some(status)
    })
    .await;
    assert_eq!(failed.reason.as_deref(), Some("DeadlineExceeded"));
}

#[tokio::test]
async fn the_apiserver_reports_its_real_version() {
    let client = client().await;
    let info = client.apiserver_version().await.unwrap();
    assert_eq!(info.major, "1");
    assert!(info.git_version.starts_with("v1."), "{}", info.git_version);
    assert_ne!(info.git_version, "v0.0.0");
}
