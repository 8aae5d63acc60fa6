//! A namespace, a fake GitHub, a policy and the real operator process, as the
//! run tests need them: signed webhooks in, phases and children out.
#![allow(dead_code)]

use std::time::Duration;

use claude_operator::api::{ClaudeRun, ClaudeRunPolicy, OutsiderPolicy, Phase};
use claude_operator::github::signature::sign;
use claude_operator::receiver::intake::run_name;
use k8s_openapi::api::core::v1::{Pod, ResourceQuota, Secret};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

use crate::fake_github::{APP_ID, FakeGitHub};
use crate::support::*;

pub const SECRET: &str = "e2e-runs-webhook-secret";
pub const TOKEN_PREFIX_NEVER_LOGGED: &str = "ghs_";

pub struct Env {
    pub client: kube::Client,
    pub ns: TestNamespace,
    pub fake: FakeGitHub,
    pub op: OperatorProcess,
    pub http: reqwest::Client,
    pub repo: String,
    pub args: Vec<String>,
    _files: (tempfile::NamedTempFile, tempfile::NamedTempFile),
}

impl Env {
    pub async fn start(prefix: &str, outsiders: OutsiderPolicy) -> Env {
        Self::start_with(prefix, |p| p.spec.authorization.outsiders = outsiders, &[]).await
    }

    /// Starts with the sample policy changed by `edit`, and extra operator flags.
    pub async fn start_with(prefix: &str, edit: impl FnOnce(&mut ClaudeRunPolicy), extra: &[&str]) -> Env {
        let client = client().await;
        install_crds(&client).await;
        let ns = TestNamespace::new(&client, prefix).await;
        let repo = format!("acme/{prefix}-{}", std::process::id());

        let fake = FakeGitHub::start().await;
        fake.install(&repo, 77);
        for (login, id, type_, role, member, team) in [
            ("alice", 1001, "User", Some("write"), true, true),
            ("rob", 1002, "User", Some("read"), true, true),
            ("nina", 1003, "User", None, false, false),
            ("former-contractor", 1004, "User", Some("admin"), true, true),
            ("helper-bot[bot]", 1005, "Bot", Some("write"), false, false),
            ("carol", 1006, "User", Some("maintain"), true, true),
        ] {
            fake.add_user(login, id, type_);
            if let Some(role) = role {
                fake.set_role(&repo, login, role);
            }
            if member {
                fake.add_org_member("acme", login);
            }
            if team {
                fake.set_team_membership("acme", "platform", login, "active");
            }
        }

        // The issue the fixture's comments are on.
        fake.add_issue(
            &repo,
            1,
            crate::fake_github::FakeIssue {
                title: "Spelling error in the README file".into(),
                body: "It looks like you accidently spelled 'commit' with two 't's.".into(),
                author: "alice".into(),
                association: "MEMBER".into(),
            },
        );

        // The Anthropic key the policy references (in the gateway's
        // namespace: the test's own, so grants go with it), and the policy.
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns.name);
        let key: Secret = serde_json::from_value(json!({
            "metadata": {"name": "anthropic"},
            "stringData": {"api-key": "sk-ant-e2e-not-a-real-key"},
        }))
        .unwrap();
        secrets.create(&PostParams::default(), &key).await.unwrap();
        let mut policy: ClaudeRunPolicy = load_yaml("config/samples/policy.yaml");
        policy.metadata.namespace = Some(ns.name.clone());
        policy.spec.repositories = vec![repo.clone()];
        policy.spec.authorization.teams = vec!["acme/platform".into()];
        policy.spec.budget.max_runs_per_user_per_hour = 20;
        policy.spec.quota = None;
        edit(&mut policy);
        Api::<ClaudeRunPolicy>::namespaced(client.clone(), &ns.name)
            .create(&PostParams::default(), &policy)
            .await
            .unwrap();

        let webhook_secrets = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(webhook_secrets.path(), SECRET).unwrap();
        let key_file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(key_file.path(), fake.private_key_pem()).unwrap();
        let app_id = APP_ID.to_string();
        // No gateway in the operator process (several processes share a
        // test): kwok pods make no request. Runner pods are told a loopback
        // port of their own, and the grants live in the test's namespace.
        let gateway_url = format!("http://127.0.0.1:{}", free_port());
        let mut args = vec![
            "--no-gateway",
            "--gateway-url",
            &gateway_url,
            "--gateway-namespace",
            &ns.name,
            "--webhook-secret-file",
            webhook_secrets.path().to_str().unwrap(),
            "--github-app-id",
            &app_id,
            "--github-app-private-key-file",
            key_file.path().to_str().unwrap(),
            "--github-api-url",
            &fake.url,
            "--watch-namespace",
            &ns.name,
        ];
        args.extend_from_slice(extra);
        let op = OperatorProcess::start(&args, &[]).await;
        let args = args.iter().map(|a| a.to_string()).collect();
        Env {
            client,
            ns,
            fake,
            op,
            http: reqwest::Client::new(),
            repo,
            args,
            _files: (webhook_secrets, key_file),
        }
    }

    pub fn runs(&self) -> Api<ClaudeRun> {
        Api::namespaced(self.client.clone(), &self.ns.name)
    }

    /// The grant Secrets' API (the gateway's namespace is the test's).
    pub fn grants(&self) -> Api<Secret> {
        Api::namespaced(self.client.clone(), &self.ns.name)
    }

    /// The name of a run's grant.
    pub fn grant_name(&self, run: &str) -> String {
        claude_operator::grant::grant_name(&self.ns.name, run)
    }

    /// Plays the gateway: records `meter` (a `grant::Meter` as JSON) on the run's grant.
    pub async fn set_meter(&self, run: &str, meter: Value) {
        let patch = json!({"metadata": {"annotations": {claude_operator::grant::ANNOTATION_METER: meter.to_string()}}});
        self.grants()
            .patch(&self.grant_name(run), &PatchParams::default(), &Patch::Merge(patch))
            .await
            .unwrap();
    }

    /// Sends a signed `issue_comment` `created` from `login`; returns the run name.
    pub async fn comment(
        &self,
        login: &str,
        id: i64,
        type_: &str,
        association: &str,
        body: &str,
        delivery: &str,
    ) -> String {
        let (status, _, name) = self
            .deliver_comment(login, id, type_, association, body, delivery, SECRET)
            .await;
        self.assert_accepted(status, delivery);
        name
    }

    fn assert_accepted(&self, status: u16, delivery: &str) {
        assert!(
            (200..300).contains(&status),
            "delivery {delivery}: {status}\n{}",
            self.op.log()
        );
    }

    /// Sends an `issue_comment` `created` from `login` signed with `secret`,
    /// whatever the receiver answers: its (status, body) and the run name the
    /// delivery would make.
    #[allow(clippy::too_many_arguments)]
    pub async fn deliver_comment(
        &self,
        login: &str,
        id: i64,
        type_: &str,
        association: &str,
        body: &str,
        delivery: &str,
        secret: &str,
    ) -> (u16, String, String) {
        let v = self.comment_payload(login, id, type_, association, body, delivery);
        self.post_signed("issue_comment", &v, delivery, secret).await
    }

    /// Sends a signed `issue_comment` `created` from `who` (login, id,
    /// association) on issue `number` (not the fixture's issue 1); returns
    /// the receiver's (status, body) and the run name the delivery would make.
    pub async fn comment_on_issue(
        &self,
        number: i64,
        who: (&str, i64, &str),
        body: &str,
        delivery: &str,
    ) -> (u16, String, String) {
        self.thread_comment(number, false, who, body, delivery).await
    }

    /// Sends a signed `issue_comment` `created` from `who` (login, id,
    /// association) on pull request `number` (the payload has
    /// `issue.pull_request`, as GitHub's does, and no head); returns the
    /// receiver's (status, body) and the run name the delivery would make.
    pub async fn comment_on_pull_request(
        &self,
        number: i64,
        who: (&str, i64, &str),
        body: &str,
        delivery: &str,
    ) -> (u16, String, String) {
        self.thread_comment(number, true, who, body, delivery).await
    }

    async fn thread_comment(
        &self,
        number: i64,
        pull_request: bool,
        (login, id, association): (&str, i64, &str),
        body: &str,
        delivery: &str,
    ) -> (u16, String, String) {
        let mut v = self.comment_payload(login, id, "User", association, body, delivery);
        v["issue"]["number"] = json!(number);
        if pull_request {
            v["issue"]["pull_request"] = json!({
                "url": format!("https://api.github.com/repos/{}/pulls/{number}", self.repo),
                "html_url": format!("https://github.com/{}/pull/{number}", self.repo),
            });
        }
        self.post_signed("issue_comment", &v, delivery, SECRET).await
    }

    /// An `issue_comment` `created` payload from `login` in the test's repository.
    fn comment_payload(
        &self,
        login: &str,
        id: i64,
        type_: &str,
        association: &str,
        body: &str,
        delivery: &str,
    ) -> Value {
        comment_payload(&self.repo, login, id, type_, association, body, comment_id(delivery))
    }

    /// Points a payload at the test's repository.
    fn set_repository(&self, v: &mut Value) {
        set_repository(&self.repo, v);
    }

    /// Sends a signed `pull_request` delivery of `action` (`opened`,
    /// `synchronize`, `ready_for_review`, `labeled`: the fixture of that
    /// name) for pull request `number` at `head_sha`, opened by `login` into
    /// `main` from a branch of the same repository; `edit` changes the
    /// payload further. Returns the receiver's (status, body) and the run
    /// name the delivery would make.
    #[allow(clippy::too_many_arguments)]
    pub async fn pull_request_event(
        &self,
        action: &str,
        login: &str,
        id: i64,
        association: &str,
        number: i64,
        head_sha: &str,
        delivery: &str,
        edit: impl FnOnce(&mut Value),
    ) -> (u16, String, String) {
        let path = format!(
            "{}/tests/fixtures/webhooks/pull_request.{action}.json",
            env!("CARGO_MANIFEST_DIR")
        );
        let mut v: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        self.set_repository(&mut v);
        let pr = &mut v["pull_request"];
        pr["number"] = json!(number);
        pr["head"]["sha"] = json!(head_sha);
        pr["head"]["repo"]["full_name"] = json!(self.repo);
        pr["base"]["repo"]["full_name"] = json!(self.repo);
        pr["base"]["ref"] = json!("main");
        pr["user"]["login"] = json!(login);
        pr["author_association"] = json!(association);
        v["sender"] = json!({"login": login, "id": id, "type": "User"});
        edit(&mut v);
        self.post_signed("pull_request", &v, delivery, SECRET).await
    }

    /// Posts `v` as a delivery of `event` signed with `secret`: the
    /// receiver's (status, body) and the run name the delivery would make.
    pub async fn post_signed(&self, event: &str, v: &Value, delivery: &str, secret: &str) -> (u16, String, String) {
        let bytes = serde_json::to_vec(v).unwrap();
        let run = run_name(event, &bytes).expect("a trigger candidate");
        let response = self
            .http
            .post(&self.op.webhook_url)
            .header("x-github-event", event)
            .header("x-github-delivery", delivery)
            .header("x-hub-signature-256", sign(secret, &bytes))
            .body(bytes)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.text().await.unwrap(), run)
    }

    /// Sends a signed delivery of `event` built from fixture `fixture`
    /// (tests/fixtures/webhooks), moved to the test's repository and changed
    /// by `edit`; returns the receiver's (status, body).
    pub async fn deliver_fixture(
        &self,
        event: &str,
        fixture: &str,
        delivery: &str,
        edit: impl FnOnce(&mut Value),
    ) -> (u16, String) {
        let path = format!("{}/tests/fixtures/webhooks/{fixture}.json", env!("CARGO_MANIFEST_DIR"));
        let mut v: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let (owner, name) = self.repo.split_once('/').unwrap();
        v["repository"]["full_name"] = json!(self.repo);
        v["repository"]["name"] = json!(name);
        v["repository"]["owner"]["login"] = json!(owner);
        edit(&mut v);
        let bytes = serde_json::to_vec(&v).unwrap();
        let response = self
            .http
            .post(&self.op.webhook_url)
            .header("x-github-event", event)
            .header("x-github-delivery", delivery)
            .header("x-hub-signature-256", sign(SECRET, &bytes))
            .body(bytes)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.text().await.unwrap())
    }

    pub async fn wait_phase(&self, run: &str, want: Phase) -> ClaudeRun {
        self.wait_phase_within(run, want, Duration::from_secs(60)).await
    }

    pub async fn wait_phase_within(&self, run: &str, want: Phase, within: Duration) -> ClaudeRun {
        let runs = self.runs();
        let log = || self.op.log();
        let mut last = None;
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Ok(Some(r)) = runs.get_opt(run).await {
                let phase = r.status.as_ref().map(|s| s.phase);
                if phase == Some(want) {
                    return r;
                }
                last = Some(r);
            }
            if tokio::time::Instant::now() > deadline {
                panic!(
                    "{run} never reached {want:?}; last: {:#?}\noperator log:\n{}",
                    last.map(|r| r.status),
                    log()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits for Events with this reason in the namespace (they are published
    /// in the background) and counts them.
    pub async fn events_with_reason(&self, reason: &str) -> usize {
        let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(self.client.clone(), &self.ns.name);
        eventually(&format!("an Event {reason}"), Duration::from_secs(30), || async {
            let n = events
                .list(&Default::default())
                .await
                .ok()?
                .items
                .iter()
                .filter(|e| e.reason.as_deref() == Some(reason))
                .count();
            (n > 0).then_some(n)
        })
        .await
    }

    /// Puts a ResourceQuota of one pod on the namespace and waits until the
    /// apiserver enforces it (its status is written).
    pub async fn one_pod_quota(&self) {
        let quotas: Api<ResourceQuota> = Api::namespaced(self.client.clone(), &self.ns.name);
        let quota: ResourceQuota =
            serde_json::from_value(json!({"metadata": {"name": "one-pod"}, "spec": {"hard": {"pods": "1"}}})).unwrap();
        quotas.create(&PostParams::default(), &quota).await.unwrap();
        eventually("quota status", Duration::from_secs(30), || async {
            quotas.get("one-pod").await.ok()?.status?.hard.map(|_| ())
        })
        .await;
    }

    /// Waits until `run` is admitted and waits for quota; returns the
    /// `WaitingForQuota` condition's reason.
    pub async fn waiting_for_quota(&self, run: &str) -> String {
        eventually(&format!("{run} waits for quota"), Duration::from_secs(30), || async {
            let status = self.runs().get(run).await.ok()?.status?;
            let cond = status
                .conditions
                .iter()
                .find(|c| c.type_ == "WaitingForQuota" && c.status == "True")?;
            (status.phase == Phase::Admitted).then(|| cond.reason.clone())
        })
        .await
    }

    pub async fn reason(&self, run: &str, phase: Phase) -> String {
        let r = self.wait_phase(run, phase).await;
        r.status.unwrap().admission.unwrap().reason
    }

    /// Plays the runner container: it exits with this report.
    pub async fn finish_pod(&self, run: &str, outcome: &str, report: Option<&Value>) {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &self.ns.name);
        let pod = format!("{run}-runner");
        eventually("pod Running", Duration::from_secs(60), || async {
            (pods.get(&pod).await.ok()?.status?.phase.as_deref() == Some("Running")).then_some(())
        })
        .await;
        let mut annotations = json!({"e2e.claude-operator.dev/outcome": outcome});
        if let Some(report) = report {
            annotations["e2e.claude-operator.dev/termination-message"] = json!(report.to_string());
        }
        pods.patch(
            &pod,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": annotations}})),
        )
        .await
        .unwrap();
    }
}

pub fn report(cost: &str) -> Value {
    json!({
        "outcome": "success",
        "total_cost_usd": cost,
        "usage": {"claude-sonnet-4-5": {"input_tokens": 1000, "output_tokens": 200}},
        "num_turns": 2,
        "duration_ms": 4200,
        "session_id": "e2e-session"
    })
}

impl Env {
    /// Another operator process with the same configuration.
    pub async fn another_operator(&self, extra: &[&str]) -> OperatorProcess {
        let mut args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        args.extend_from_slice(extra);
        OperatorProcess::start(&args, &[]).await
    }

    /// Replaces the operator with a fresh process (after a kill).
    pub async fn restart_operator(&mut self) {
        self.op.kill();
        self.op = self.another_operator(&[]).await;
    }
}

/// An `issue_comment` `created` payload on `repo` by `login` (GitHub's
/// published example, changed where it matters), as the receiver gets it.
pub fn comment_payload(
    repo: &str,
    login: &str,
    id: i64,
    type_: &str,
    association: &str,
    body: &str,
    comment_id: i64,
) -> Value {
    let mut v: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/webhooks/issue_comment.created.json"
        ))
        .unwrap(),
    )
    .unwrap();
    set_repository(repo, &mut v);
    v["comment"]["body"] = json!(body);
    // A run's name derives from the signed body (the comment id), not the
    // delivery header.
    v["comment"]["id"] = json!(comment_id);
    v["comment"]["author_association"] = json!(association);
    v["comment"]["user"]["login"] = json!(login);
    v["sender"] = json!({"login": login, "id": id, "type": type_});
    v
}

/// Points a payload at `repo`.
pub fn set_repository(repo: &str, v: &mut Value) {
    let (owner, name) = repo.split_once('/').unwrap();
    v["repository"]["full_name"] = json!(repo);
    v["repository"]["name"] = json!(name);
    v["repository"]["owner"]["login"] = json!(owner);
}

/// A comment id per delivery name, stable across calls: each delivery name
/// stands for its own comment.
pub fn comment_id(delivery: &str) -> i64 {
    use sha2::Digest;
    let d = sha2::Sha256::digest(delivery.as_bytes());
    (i64::from_be_bytes(d[..8].try_into().unwrap()) & 0x0fff_ffff_ffff) + 1
}

/// The receiver's audit lines in an operator log (JSON lines): each line's fields.
pub fn audit_lines(log: &str) -> Vec<serde_json::Map<String, Value>> {
    log.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["target"] == "claude_operator::audit")
        .map(|v| v["fields"].as_object().cloned().unwrap_or_default())
        .collect()
}
