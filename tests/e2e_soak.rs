//! The adversarial soak: thousands of webhook deliveries at a steady rate
//! into the real receiver and controller (two processes) on the local
//! control plane, while the fake GitHub answers 500, times out and
//! rate-limits at random. The mix: GitHub's published example payloads
//! (`tests/fixtures/webhooks`) from members, read-only collaborators, triage
//! members, denylisted members, strangers and bots; edited comments; the
//! phrase inside quotes and code; forged, truncated and SHA-1 signatures;
//! replays of a delivery and of a body under a new delivery id; events that
//! are no trigger.
//!
//! Every delivery's answer is checked against what the policy says, and at
//! the end (after every run has settled): no run admitted for anyone the
//! policy does not admit, every admitted run had exactly one pod and one
//! token, no token is left unrevoked but the ones `status.tokenMints`
//! accounts for, and the receiver's and the controller's resident memory
//! stayed under a bound. The figures are printed as JSON and, with
//! `SOAK_RESULTS_DIR`, saved there.
//!
//! Size: `SOAK_DELIVERIES` (default 800), `SOAK_RATE` per second (default
//! 20), `SOAK_SEED`. `e2e/soak/run.sh` runs the full size (10,000).

#[path = "support/chaos.rs"]
mod chaos;
#[path = "support/fake_github.rs"]
mod fake_github;
#[path = "support/run_env.rs"]
mod run_env;
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chaos::*;
use claude_operator::api::{ClaudeRun, Decision};
use claude_operator::github::signature::sign;
use claude_operator::receiver::intake::run_name;
use fake_github::{FakePull, RandomFaults};
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, ListParams};
use run_env::*;
use serde_json::{Value, json};

const PR_NUMBER: i64 = 2;
const PR_HEAD: &str = "ec26c3e57ca3a959ca5aad62de7213c562f8c821";
/// Who the policy admits (write or more, org and team member, not denied).
const ADMITTED_ACTORS: [&str; 2] = ["alice", "carol"];

/// A trigger delivery that was answered: (body, event, delivery id).
type Sent = (Vec<u8>, String, String);

fn fixture(name: &str) -> Value {
    let path = format!("{}/tests/fixtures/webhooks/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))).unwrap()
}

/// The kinds of delivery in the mix, with their weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Class {
    MemberComment,
    MemberReviewComment,
    MemberIssueOpened,
    ReadOnlyCollaborator,
    TriageMember,
    DenylistedMember,
    StrangerNone,
    StrangerContributor,
    Bot,
    EditedComment,
    PhraseInQuote,
    PhraseInCode,
    NotATrigger,
    ForgedSignature,
    TruncatedSignature,
    Sha1Signature,
    ReplaySameDelivery,
    ReplayNewDelivery,
}

const MIX: [(Class, u32); 18] = [
    (Class::MemberComment, 8),
    (Class::MemberReviewComment, 3),
    (Class::MemberIssueOpened, 2),
    (Class::ReadOnlyCollaborator, 5),
    (Class::TriageMember, 4),
    (Class::DenylistedMember, 4),
    (Class::StrangerNone, 8),
    (Class::StrangerContributor, 4),
    (Class::Bot, 6),
    (Class::EditedComment, 6),
    (Class::PhraseInQuote, 5),
    (Class::PhraseInCode, 5),
    (Class::NotATrigger, 6),
    (Class::ForgedSignature, 8),
    (Class::TruncatedSignature, 4),
    (Class::Sha1Signature, 4),
    (Class::ReplaySameDelivery, 5),
    (Class::ReplayNewDelivery, 5),
];

/// How a signature header is made.
#[derive(Clone, Copy, Debug)]
enum Signing {
    Good,
    WrongSecret,
    Truncated,
    Sha1Only,
}

/// One delivery and what the receiver must answer.
#[derive(Clone, Debug)]
struct Delivery {
    class: Class,
    event: String,
    id: String,
    body: Vec<u8>,
    signing: Signing,
    /// HTTP status and outcome (the metric label) the receiver must answer.
    want_status: u16,
    want_outcome: &'static str,
    /// The run this delivery creates or finds, if it is a trigger.
    run: Option<String>,
}

struct Mixer {
    repo: String,
    rng: Rng,
    n: u64,
}

impl Mixer {
    fn actor(v: &mut Value, login: &str, id: i64, type_: &str, association: &str, at: &str) {
        for who in ["sender", "user"] {
            let who = if who == "sender" {
                &mut v["sender"]
            } else {
                &mut v[at]["user"]
            };
            who["login"] = json!(login);
            who["id"] = json!(id);
            who["type"] = json!(type_);
        }
        v[at]["author_association"] = json!(association);
    }

    fn repository(&self, v: &mut Value) {
        let (owner, name) = self.repo.split_once('/').unwrap();
        v["repository"]["full_name"] = json!(self.repo);
        v["repository"]["name"] = json!(name);
        v["repository"]["owner"]["login"] = json!(owner);
    }

    /// An issue comment (`created` unless `edited`) by this actor.
    fn comment(&mut self, actor: (&str, i64, &str, &str), body: &str, edited: bool) -> Value {
        let mut v = fixture(if edited {
            "issue_comment.edited.json"
        } else {
            "issue_comment.created.json"
        });
        self.repository(&mut v);
        v["comment"]["body"] = json!(body);
        v["comment"]["id"] = json!(1_000_000 + self.n as i64);
        v["issue"]["number"] = json!(1 + (self.n % 40) as i64);
        Self::actor(&mut v, actor.0, actor.1, actor.2, actor.3, "comment");
        v
    }

    fn member(&mut self) -> (&'static str, i64, &'static str, &'static str) {
        if self.rng.below(2) == 0 {
            ("alice", 1001, "User", "MEMBER")
        } else {
            ("carol", 1006, "User", "COLLABORATOR")
        }
    }

    fn next(&mut self, sent: &[Sent]) -> Delivery {
        self.n += 1;
        let weights: Vec<u32> = MIX.iter().map(|(_, w)| *w).collect();
        let mut class = MIX[self.rng.weighted(&weights)].0;
        if matches!(class, Class::ReplaySameDelivery | Class::ReplayNewDelivery) && sent.is_empty() {
            class = Class::MemberComment;
        }
        let id = format!("soak-{:06}-{:08x}", self.n, self.rng.next() as u32);
        let task = format!("@claude please look at task {}", self.n);
        let (event, v, signing, want): (&str, Option<Value>, Signing, (u16, &'static str)) = match class {
            Class::MemberComment => {
                let m = self.member();
                (
                    "issue_comment",
                    Some(self.comment(m, &task, false)),
                    Signing::Good,
                    (202, "created"),
                )
            }
            Class::MemberReviewComment => {
                let mut v = fixture("pull_request_review_comment.created.json");
                self.repository(&mut v);
                let m = self.member();
                v["comment"]["body"] = json!(task);
                v["comment"]["id"] = json!(1_000_000 + self.n as i64);
                v["pull_request"]["number"] = json!(PR_NUMBER);
                for side in ["head", "base"] {
                    v["pull_request"][side]["repo"]["full_name"] = json!(self.repo);
                }
                Self::actor(&mut v, m.0, m.1, m.2, m.3, "comment");
                ("pull_request_review_comment", Some(v), Signing::Good, (202, "created"))
            }
            Class::MemberIssueOpened => {
                let mut v = fixture("issues.opened.json");
                self.repository(&mut v);
                let m = self.member();
                v["issue"]["body"] = json!(format!("Crash on start.\n\n{task}"));
                v["issue"]["number"] = json!(100_000 + self.n as i64);
                v["issue"]["id"] = json!(5_000_000 + self.n as i64);
                Self::actor(&mut v, m.0, m.1, m.2, m.3, "issue");
                ("issues", Some(v), Signing::Good, (202, "created"))
            }
            Class::ReadOnlyCollaborator => {
                let v = self.comment(("rob", 1002, "User", "COLLABORATOR"), &task, false);
                ("issue_comment", Some(v), Signing::Good, (202, "created"))
            }
            Class::TriageMember => {
                let v = self.comment(("tess", 1007, "User", "MEMBER"), &task, false);
                ("issue_comment", Some(v), Signing::Good, (202, "created"))
            }
            Class::DenylistedMember => {
                let v = self.comment(("former-contractor", 1004, "User", "MEMBER"), &task, false);
                ("issue_comment", Some(v), Signing::Good, (202, "created"))
            }
            Class::StrangerNone => {
                let association = ["NONE", "FIRST_TIMER", "FIRST_TIME_CONTRIBUTOR"][self.rng.below(3) as usize];
                let v = self.comment(("nina", 1003, "User", association), &task, false);
                ("issue_comment", Some(v), Signing::Good, (202, "ignored"))
            }
            Class::StrangerContributor => {
                // Past the receiver's pre-filter: GitHub's API must say no.
                let v = self.comment(("nina", 1003, "User", "CONTRIBUTOR"), &task, false);
                ("issue_comment", Some(v), Signing::Good, (202, "created"))
            }
            Class::Bot => {
                let v = self.comment(("helper-bot[bot]", 1005, "Bot", "NONE"), &task, false);
                ("issue_comment", Some(v), Signing::Good, (202, "ignored"))
            }
            Class::EditedComment => {
                let m = self.member();
                let v = self.comment(m, &task, true);
                ("issue_comment", Some(v), Signing::Good, (202, "ignored"))
            }
            Class::PhraseInQuote => {
                let m = self.member();
                let body =
                    ["> @claude fix it", "> > @claude fix it", "> @claude fix\n\nthanks"][self.rng.below(3) as usize];
                let v = self.comment(m, body, false);
                ("issue_comment", Some(v), Signing::Good, (202, "ignored"))
            }
            Class::PhraseInCode => {
                let m = self.member();
                let body = [
                    "```\n@claude fix\n```",
                    "use `@claude fix` to call it",
                    "text\n\n    @claude fix",
                ][self.rng.below(3) as usize];
                let v = self.comment(m, body, false);
                ("issue_comment", Some(v), Signing::Good, (202, "ignored"))
            }
            Class::NotATrigger => match self.rng.below(4) {
                0 => ("ping", Some(fixture("ping.json")), Signing::Good, (200, "ping")),
                1 => (
                    "star",
                    Some(fixture("star.created.json")),
                    Signing::Good,
                    (202, "ignored"),
                ),
                2 => ("push", Some(fixture("push.json")), Signing::Good, (202, "ignored")),
                _ => {
                    let m = self.member();
                    let v = self.comment(m, "Thanks, looks good to me.", false);
                    ("issue_comment", Some(v), Signing::Good, (202, "ignored"))
                }
            },
            Class::ForgedSignature | Class::TruncatedSignature | Class::Sha1Signature => {
                let m = self.member();
                let v = self.comment(m, &task, false);
                let signing = match class {
                    Class::ForgedSignature => Signing::WrongSecret,
                    Class::TruncatedSignature => Signing::Truncated,
                    _ => Signing::Sha1Only,
                };
                ("issue_comment", Some(v), signing, (401, "rejected"))
            }
            Class::ReplaySameDelivery | Class::ReplayNewDelivery => {
                let (body, event, first_id) = sent[self.rng.below(sent.len() as u64) as usize].clone();
                let id = if class == Class::ReplaySameDelivery {
                    first_id
                } else {
                    id
                };
                let run = run_name(&event, &body);
                return Delivery {
                    class,
                    event,
                    id,
                    body,
                    signing: Signing::Good,
                    want_status: 200,
                    want_outcome: "duplicate",
                    run,
                };
            }
        };
        let body = serde_json::to_vec(&v.unwrap()).unwrap();
        let run = matches!(signing, Signing::Good)
            .then(|| run_name(event, &body))
            .flatten()
            .filter(|_| want.1 == "created");
        Delivery {
            class,
            event: event.to_owned(),
            id,
            body,
            signing,
            want_status: want.0,
            want_outcome: want.1,
            run,
        }
    }
}

async fn send(http: &reqwest::Client, url: &str, d: &Delivery) -> u16 {
    let mut req = http
        .post(url)
        .header("content-type", "application/json")
        .header("x-github-event", &d.event)
        .header("x-github-delivery", &d.id);
    req = match d.signing {
        Signing::Good => req.header("x-hub-signature-256", sign(SECRET, &d.body)),
        Signing::WrongSecret => req.header("x-hub-signature-256", sign("not-the-webhook-secret", &d.body)),
        Signing::Truncated => req.header("x-hub-signature-256", &sign(SECRET, &d.body)[..40]),
        Signing::Sha1Only => req.header("x-hub-signature", "sha1=0123456789abcdef0123456789abcdef01234567"),
    };
    match req.body(d.body.clone()).send().await {
        Ok(r) => r.status().as_u16(),
        Err(_) => 0,
    }
}

/// Audit lines of the receiver's JSON log: (outcome, reason) -> count.
fn audit_outcomes(log: &str) -> BTreeMap<(String, String), usize> {
    let mut out = BTreeMap::new();
    for line in log.lines() {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        let f = &v["fields"];
        if f["message"] != "webhook delivery" {
            continue;
        }
        let key = (
            f["outcome"].as_str().unwrap_or("?").to_owned(),
            f["reason"].as_str().unwrap_or("?").to_owned(),
        );
        *out.entry(key).or_default() += 1;
    }
    out
}

#[tokio::test]
async fn an_adversarial_soak_admits_only_whom_the_policy_admits() {
    let deliveries: u64 = env_number("SOAK_DELIVERIES", 800);
    let rate: f64 = env_number("SOAK_RATE", 20.0);
    let seed = Rng::seed_from_env("SOAK_SEED");
    let settle_secs: u64 = env_number("SOAK_SETTLE_SECONDS", 600);
    let receiver_rss_cap_mib: u64 = env_number("SOAK_RECEIVER_RSS_MIB", 256);
    let controller_rss_cap_mib: u64 = env_number("SOAK_CONTROLLER_RSS_MIB", 512);
    eprintln!("soak: {deliveries} deliveries at {rate}/s, SOAK_SEED={seed}");

    let mut env = Env::start_with(
        "soak",
        |p| {
            p.spec.budget.max_concurrent_runs = 500;
            p.spec.budget.max_runs_per_user_per_hour = 1000;
            p.spec.budget.limit_usd = "1000000".into();
        },
        &[],
    )
    .await;
    env.fake.add_user("tess", 1007, "User");
    env.fake.set_role(&env.repo, "tess", "triage");
    env.fake.add_org_member("acme", "tess");
    env.fake.set_team_membership("acme", "platform", "tess", "active");
    env.fake.add_pull(
        &env.repo,
        PR_NUMBER,
        FakePull {
            head_sha: PR_HEAD.into(),
            head_ref: "feature".into(),
            head_repo: Some(env.repo.clone()),
            author: "alice".into(),
        },
    );

    // The receiver and the controller as the chart runs them: two processes.
    env.op.kill();
    let receiver = env.another_operator(&["--no-controller", "--log-format", "json"]).await;
    let controller = env.another_operator(&["--no-webhook"]).await;
    let pids = Arc::new(Mutex::new(BTreeMap::from([
        ("receiver".to_owned(), receiver.child.id()),
        ("controller".to_owned(), controller.child.id()),
    ])));
    let rss = Arc::new(Mutex::new(BTreeMap::new()));
    let sampler = spawn_rss_sampler(pids, rss.clone());
    let kubelet_log = Arc::new(Mutex::new(KubeletLog::default()));
    let kubelet = spawn_kubelet(
        env.client.clone(),
        env.ns.name.clone(),
        env.ns.name.clone(),
        kubelet_log.clone(),
    );

    env.fake.set_random_faults(Some(RandomFaults {
        state: seed ^ 0x9e37_79b9_7f4a_7c15,
        server_error: 200,
        rate_limit: 100,
        timeout: 10,
        delay: Duration::from_secs(11),
    }));

    // Deliveries at a steady rate, each in its own task (a slow answer does
    // not slow the rate), at most 32 in flight.
    let http = reqwest::Client::new();
    let mut mixer = Mixer {
        repo: env.repo.clone(),
        rng: Rng::new(seed),
        n: 0,
    };
    // Triggers whose first delivery was answered: what replays replay.
    let answered: Arc<Mutex<Vec<Sent>>> = Arc::default();
    let results: Arc<Mutex<Vec<(Delivery, u16)>>> = Arc::default();
    let inflight = Arc::new(tokio::sync::Semaphore::new(32));
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..deliveries {
        tick.tick().await;
        let d = {
            let sent = answered.lock().unwrap();
            mixer.next(&sent)
        };
        let permit = inflight.clone().acquire_owned().await.unwrap();
        let (http, url, answered, results) = (
            http.clone(),
            receiver.webhook_url.clone(),
            answered.clone(),
            results.clone(),
        );
        tasks.spawn(async move {
            let status = send(&http, &url, &d).await;
            drop(permit);
            if d.run.is_some() && d.want_outcome == "created" && status == 202 {
                answered
                    .lock()
                    .unwrap()
                    .push((d.body.clone(), d.event.clone(), d.id.clone()));
            }
            results.lock().unwrap().push((d, status));
        });
    }
    while tasks.join_next().await.is_some() {}
    let sending = started.elapsed();
    // GitHub recovers: what is left must now settle.
    env.fake.set_random_faults(None);
    let results = std::mem::take(&mut *results.lock().unwrap());

    // Every answer is the one the policy and the protocol call for.
    let mismatches: Vec<String> = results
        .iter()
        .filter(|(d, status)| *status != d.want_status)
        .map(|(d, status)| format!("{:?} {} answered {status}, want {}", d.class, d.id, d.want_status))
        .collect();
    let expected_runs: BTreeMap<String, Class> = results
        .iter()
        .filter_map(|(d, _)| Some((d.run.clone()?, d.class)))
        .filter(|(_, c)| !matches!(c, Class::ReplaySameDelivery | Class::ReplayNewDelivery))
        .collect();

    // Settled: every run terminal, every grant and run Secret gone.
    let runs_api = env.runs();
    let secrets: Api<Secret> = Api::namespaced(env.client.clone(), &env.ns.name);
    let managed = ListParams::default().labels("app.kubernetes.io/managed-by=claude-operator");
    let mut last = String::new();
    let settled = tokio::time::timeout(Duration::from_secs(settle_secs), async {
        loop {
            if let (Ok(runs), Ok(left)) = (
                runs_api.list(&ListParams::default()).await,
                secrets.list(&managed).await,
            ) {
                let open: Vec<_> = runs
                    .items
                    .iter()
                    .filter(|r| !r.status.as_ref().is_some_and(|s| s.phase.is_terminal()))
                    .collect();
                last = format!(
                    "{} runs, {} not terminal (e.g. {:?}), {} managed secrets left",
                    runs.items.len(),
                    open.len(),
                    open.first()
                        .map(|r| (r.metadata.name.clone(), r.status.as_ref().map(|s| s.phase))),
                    left.items.len()
                );
                if open.is_empty() && left.items.is_empty() && runs.items.len() >= expected_runs.len() {
                    return runs.items;
                }
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    })
    .await;
    kubelet.abort();
    sampler.abort();
    let runs: Vec<ClaudeRun> = settled.unwrap_or_else(|_| {
        panic!(
            "not settled within {settle_secs}s: {last}\ncontroller log tail:\n{}",
            tail(&controller.log(), 60)
        )
    });

    // The oracle: which runs exist, who was admitted, what each was denied for.
    let by_name: BTreeMap<String, &ClaudeRun> = runs.iter().map(|r| (r.metadata.name.clone().unwrap(), r)).collect();
    let unexpected: Vec<&String> = by_name.keys().filter(|n| !expected_runs.contains_key(*n)).collect();
    let missing: Vec<&String> = expected_runs.keys().filter(|n| !by_name.contains_key(*n)).collect();
    let mut admitted = vec![];
    let mut wrongly_admitted = vec![];
    let mut denied: BTreeMap<String, usize> = BTreeMap::new();
    let mut phases: BTreeMap<String, usize> = BTreeMap::new();
    for (name, run) in &by_name {
        let status = run.status.as_ref().unwrap();
        *phases.entry(format!("{:?}", status.phase)).or_default() += 1;
        let admission = status.admission.as_ref();
        match admission.map(|a| a.decision) {
            Some(Decision::Admit) => {
                admitted.push(name.clone());
                let actor = run.spec.trigger.actor.login.as_str();
                if !ADMITTED_ACTORS.contains(&actor) {
                    wrongly_admitted.push(format!("{name} ({actor}, {:?})", expected_runs.get(name)));
                }
            }
            Some(Decision::Deny) => *denied.entry(admission.unwrap().reason.clone()).or_default() += 1,
            other => *denied.entry(format!("{other:?}")).or_default() += 1,
        }
    }

    // Exactly one pod per admitted run (by owner), none for the others.
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), &env.ns.name);
    let pod_list = pods.list(&ListParams::default()).await.unwrap().items;
    let mut pods_of: BTreeMap<String, usize> = BTreeMap::new();
    for pod in &pod_list {
        for owner in pod.metadata.owner_references.iter().flatten() {
            if owner.kind == "ClaudeRun" {
                *pods_of.entry(owner.name.clone()).or_default() += 1;
            }
        }
    }
    let admitted_set: BTreeSet<&String> = admitted.iter().collect();
    let pod_problems: Vec<String> = by_name
        .keys()
        .filter_map(|n| {
            let have = pods_of.get(n).copied().unwrap_or(0);
            let want = usize::from(admitted_set.contains(n));
            (have != want).then(|| format!("{n}: {have} pods, want {want}"))
        })
        .collect();

    // One token per admitted run, each its own; every one revoked; the live
    // tokens GitHub still counts are no more than the recorded extra mints.
    let kubelet_log = std::mem::take(&mut *kubelet_log.lock().unwrap());
    let token_problems: Vec<String> = admitted
        .iter()
        .filter_map(|n| match kubelet_log.tokens.get(n).map(BTreeSet::len) {
            Some(1) => None,
            other => Some(format!("{n}: {other:?} tokens seen")),
        })
        .collect();
    let all_tokens: Vec<&Vec<u8>> = kubelet_log.tokens.values().flatten().collect();
    let distinct: BTreeSet<&Vec<u8>> = all_tokens.iter().copied().collect();
    let unrevoked_stored: usize = {
        let state = env.fake.state();
        distinct
            .iter()
            .filter(|t| {
                state
                    .tokens
                    .get(String::from_utf8_lossy(t).as_ref())
                    .is_none_or(|f| !f.revoked)
            })
            .count()
    };
    let recorded_mints: u64 = runs
        .iter()
        .map(|r| r.status.as_ref().and_then(|s| s.token_mints).unwrap_or(0) as u64)
        .sum();
    let (minted, revoked) = (env.fake.minted(&env.repo) as u64, env.fake.revoked(&env.repo) as u64);
    let live = env.fake.live_tokens(&env.repo).len() as u64;
    let extra_mints = recorded_mints.saturating_sub(admitted.len() as u64);

    let rss = rss.lock().unwrap().clone();
    let audit = audit_outcomes(&receiver.log());
    let by_outcome = |outcome: &str| -> BTreeMap<String, usize> {
        audit
            .iter()
            .filter(|((o, _), _)| o == outcome)
            .map(|((_, r), n)| (r.clone(), *n))
            .collect()
    };
    let figures = json!({
        "deliveries": results.len(),
        "seed": seed,
        "rate_per_second": rate,
        "sending_seconds": sending.as_secs_f64(),
        "total_seconds": started.elapsed().as_secs_f64(),
        "sent_by_class": tally(results.iter().map(|(d, _)| format!("{:?}", d.class))),
        "http_status": tally(results.iter().map(|(_, s)| s.to_string())),
        "receiver": {
            "created": by_outcome("created").values().sum::<usize>(),
            "duplicate": by_outcome("duplicate").values().sum::<usize>(),
            "ping": by_outcome("ping").values().sum::<usize>(),
            "ignored_by_reason": by_outcome("ignored"),
            "rejected_by_reason": by_outcome("rejected"),
            "unavailable": by_outcome("unavailable").values().sum::<usize>(),
        },
        "runs": by_name.len(),
        "admitted": admitted.len(),
        "denied_by_reason": denied,
        "phases": phases,
        "github": {
            "faults_injected": env.fake.injected(),
            "tokens_minted": minted,
            "tokens_revoked": revoked,
            "tokens_live_at_end": live,
            "mints_recorded_on_runs": recorded_mints,
        },
        "rss_kib": rss,
        "problems": {
            "answer_mismatches": mismatches.len(),
            "runs_unexpected": unexpected.len(),
            "runs_missing": missing.len(),
            "wrongly_admitted": wrongly_admitted.len(),
            "pod_problems": pod_problems.len(),
            "token_problems": token_problems.len(),
            "running_without_grant": kubelet_log.without_grant.len(),
            "stored_tokens_unrevoked": unrevoked_stored,
        },
    });
    let text = serde_json::to_string_pretty(&figures).unwrap();
    println!("soak figures:\n{text}");
    eprintln!("soak figures:\n{text}");
    if let Ok(dir) = std::env::var("SOAK_RESULTS_DIR") {
        std::fs::create_dir_all(&dir).unwrap();
        let stamp = jiff::Timestamp::now().strftime("%Y%m%dT%H%M%SZ");
        let path = format!("{dir}/soak-{}-{stamp}.json", results.len());
        std::fs::write(&path, format!("{text}\n")).unwrap();
        eprintln!("soak: figures saved to {path}");
    }

    assert!(results.len() as u64 == deliveries);
    assert!(mismatches.is_empty(), "answers not as the policy says: {mismatches:#?}");
    assert_eq!(
        audit.values().sum::<usize>(),
        results.len(),
        "one audit line per delivery"
    );
    assert!(
        wrongly_admitted.is_empty(),
        "admitted outside the policy: {wrongly_admitted:#?}"
    );
    assert!(
        unexpected.is_empty() && missing.is_empty(),
        "runs not made by a trigger: {unexpected:?}; triggers without a run: {missing:?}"
    );
    assert!(!admitted.is_empty(), "some member's run was admitted");
    assert!(pod_problems.is_empty(), "{pod_problems:#?}");
    assert!(token_problems.is_empty(), "{token_problems:#?}");
    assert!(kubelet_log.without_grant.is_empty(), "{:?}", kubelet_log.without_grant);
    assert_eq!(distinct.len(), all_tokens.len(), "two runs shared a token");
    assert_eq!(unrevoked_stored, 0, "a stored token was not revoked");
    assert!(
        minted <= recorded_mints,
        "GitHub minted {minted}, the runs record {recorded_mints}"
    );
    assert!(
        live <= extra_mints,
        "{live} tokens still live, but only {extra_mints} mints beyond one per admitted run were recorded"
    );
    for (name, cap) in [
        ("receiver", receiver_rss_cap_mib),
        ("controller", controller_rss_cap_mib),
    ] {
        let f = rss.get(name).unwrap_or_else(|| panic!("no RSS samples of the {name}"));
        assert!(f.samples >= 2, "{name}: {f:?}");
        assert!(
            f.peak_kib <= cap * 1024,
            "{name}'s resident memory peaked at {} KiB, over {cap} MiB",
            f.peak_kib
        );
    }
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
