//! What the receiver does with a verified delivery, as a pure decision: which
//! policy it falls under, whether it is a trigger at all, the pre-filters
//! (strangers, bots, per-actor rate), and the `ClaudeRun` it becomes. The
//! audit line and the HTTP answer of every outcome are defined here too.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use kube::api::ObjectMeta;
use sha2::{Digest, Sha256};

pub use crate::api::labels::{
    ApprovalRequest, CancelKind, CancelRequest, NUMBER_LABEL, POLICY_LABEL, REPOSITORY_LABEL,
};
use crate::api::{
    ActorType, AuthorAssociation, ClaudeRun, ClaudeRunPolicy, ClaudeRunSpec, OutsiderPolicy, Permission, TriggerEvent,
};
use crate::github::events::{self, Parsed, TriggerCandidate};
use crate::github::trigger;
use crate::tenancy::{Route, Tenancy, route};

/// The run name of a trigger: `gh-` and 16 hex characters of the SHA-256 of
/// its identity ([`TriggerCandidate::identity`]), which comes from the signed
/// body only. A redelivery, or a replay of a signed body under a new
/// `X-GitHub-Delivery` (a header no signature covers), finds the run already
/// there and creates nothing.
pub fn run_name_of(candidate: &TriggerCandidate) -> String {
    let digest = Sha256::digest(candidate.identity().as_bytes());
    format!("gh-{}", &hex::encode(digest)[..16])
}

/// The run name a delivery of this event and body would create, if it is a
/// trigger candidate at all (for tests and tools that send deliveries).
pub fn run_name(event: &str, body: &[u8]) -> Option<String> {
    match events::parse(event, body) {
        Ok(Parsed::Candidate(c)) => Some(run_name_of(&c)),
        _ => None,
    }
}

/// A label value for a repository full name.
pub fn repository_label(full_name: &str) -> String {
    let v = full_name.to_ascii_lowercase().replace('/', ".");
    if v.len() <= 63 {
        v
    } else {
        format!("h-{}", &hex::encode(Sha256::digest(v.as_bytes()))[..32])
    }
}

/// What to do with a delivery.
pub enum Decided {
    /// Answer without touching the apiserver.
    Respond(Outcome),
    /// Create this run, and charge the actor's rate bucket if it is new.
    Create(Box<ClaudeRun>, RateKey),
    /// Record an approval comment on the waiting runs of this issue or PR.
    Approve(Box<ApprovalRequest>),
    /// Record a cancel request on the runs of this issue or PR still going.
    Cancel(Box<CancelIntake>),
}

/// A cancel request and the thread whose runs it concerns.
#[derive(Clone, Debug, PartialEq)]
pub struct CancelIntake {
    pub namespace: String,
    pub repository: String,
    pub number: i64,
    pub request: CancelRequest,
    /// The comment author's association as the payload states it (cancel
    /// comments only): a pre-filter on whose comment is recorded at all.
    pub association: Option<AuthorAssociation>,
}

impl CancelIntake {
    /// Whether the request is recorded on a run of `trigger`: a closed
    /// thread's on every run; a comment only when its author is the run's
    /// trigger author or the payload calls them a member of the repository
    /// (the controller asks GitHub for their real permission); a superseding
    /// push only on runs a `pull_request` event started (automatic reviews),
    /// never on someone's "@claude" run on the same pull request.
    pub fn concerns(&self, trigger: &crate::api::Trigger) -> bool {
        match self.request.kind {
            CancelKind::Comment => {
                self.request.id == trigger.actor.id
                    || matches!(
                        self.association,
                        Some(AuthorAssociation::Owner | AuthorAssociation::Member | AuthorAssociation::Collaborator)
                    )
            }
            CancelKind::Closed => true,
            CancelKind::Superseded => trigger.event == "pull_request",
        }
    }
}

/// Decides what a verified delivery becomes.
pub fn decide(
    event: &str,
    delivery: &str,
    body: &[u8],
    policies: &[Arc<ClaudeRunPolicy>],
    tenancy: &Tenancy,
    bot_login: Option<&str>,
    limiter: &ActorLimiter,
) -> Decided {
    let candidate = match events::parse(event, body) {
        Ok(Parsed::Ping) => return Decided::Respond(Outcome::ping()),
        Ok(Parsed::Ignored { reason }) => {
            tracing::debug!(event, reason = %reason, "delivery ignored");
            return Decided::Respond(Outcome::ignored("event or action not handled", None));
        }
        Ok(Parsed::Candidate(c)) => c,
        Ok(Parsed::Closed(closed)) => return decide_closed(&closed, delivery, policies, tenancy, bot_login),
        Err(err) => {
            tracing::debug!(error = %err, "malformed payload");
            return Decided::Respond(Outcome::rejected(StatusCode::BAD_REQUEST, "malformed payload"));
        }
    };
    let summary = RunSummary {
        repository: candidate.repository.clone(),
        actor: candidate.actor.login.clone(),
        run: None,
        namespace: None,
    };
    if bot_login.is_some_and(|bot| bot.eq_ignore_ascii_case(&candidate.actor.login)) {
        return Decided::Respond(Outcome::ignored("own comment", Some(summary)));
    }
    // The same routing as the controller's admission: only policies within
    // their namespace's tenancy grant, and of several, the one `resolve` ranks
    // first (never none because of an overlap).
    let policy = match route(&candidate.repository, policies, tenancy) {
        Route::None => return Decided::Respond(Outcome::ignored("no matching policy", Some(summary))),
        Route::To { policy, .. } => policy,
    };
    let spec = &policy.spec;
    let namespace = policy.metadata.namespace.clone().unwrap_or_default();
    let policy_name = policy.metadata.name.clone().unwrap_or_default();

    // An approval comment is never itself a trigger.
    if candidate.event == TriggerEvent::IssueComment
        && trigger::contains_command(&candidate.body, &spec.triggers.approval_phrase)
    {
        return Decided::Approve(Box::new(ApprovalRequest {
            namespace,
            repository: candidate.repository.clone(),
            number: candidate.number,
            login: candidate.actor.login.clone(),
            id: candidate.actor.id,
            comment_id: candidate.comment_id,
            delivery_id: delivery.to_owned(),
            association: Some(candidate.author_association),
        }));
    }

    // Nor is a cancel comment.
    if candidate.event == TriggerEvent::IssueComment
        && trigger::contains_command(&candidate.body, &spec.triggers.cancel_phrase)
    {
        return Decided::Cancel(Box::new(CancelIntake {
            namespace,
            repository: candidate.repository.clone(),
            number: candidate.number,
            request: CancelRequest {
                kind: CancelKind::Comment,
                login: candidate.actor.login.clone(),
                id: candidate.actor.id,
                comment_id: candidate.comment_id,
                delivery_id: delivery.to_owned(),
            },
            association: Some(candidate.author_association),
        }));
    }

    let instruction = match trigger_instruction(&candidate, &spec.triggers) {
        Ok(instruction) => instruction,
        Err(reason) => return Decided::Respond(Outcome::ignored(reason, Some(summary))),
    };

    if candidate.actor.type_ == ActorType::Bot
        && !spec
            .authorization
            .allow_bots
            .iter()
            .any(|b| b.eq_ignore_ascii_case(&candidate.actor.login))
    {
        return Decided::Respond(Outcome::ignored("bot not allowed", Some(summary)));
    }
    if is_stranger(candidate.author_association)
        && spec.authorization.min_permission >= Permission::Triage
        && spec.authorization.outsiders != OutsiderPolicy::RequireApproval
    {
        return Decided::Respond(Outcome::ignored("author association below policy", Some(summary)));
    }
    // Only peeked here: a replay of a delivery that already made its run must
    // answer "duplicate", not spend the actor's budget.
    let rate = RateKey {
        key: format!("{namespace}/{policy_name}/{}", candidate.actor.id),
        per_hour: spec.budget.max_runs_per_user_per_hour.max(1) as u32,
    };
    if !limiter.has_token(&rate) {
        return Decided::Respond(Outcome::ignored("actor rate limited", Some(summary)));
    }

    let prompt = trigger::build_prompt(&instruction, &candidate);
    Decided::Create(
        Box::new(to_run(&candidate, delivery, event, &namespace, &policy_name, prompt)),
        rate,
    )
}

/// A closed issue or pull request cancels the runs still going on it, under
/// the policy that serves its repository.
fn decide_closed(
    closed: &events::Closed,
    delivery: &str,
    policies: &[Arc<ClaudeRunPolicy>],
    tenancy: &Tenancy,
    bot_login: Option<&str>,
) -> Decided {
    let summary = RunSummary {
        repository: closed.repository.clone(),
        actor: closed.actor.login.clone(),
        run: None,
        namespace: None,
    };
    if bot_login.is_some_and(|bot| bot.eq_ignore_ascii_case(&closed.actor.login)) {
        return Decided::Respond(Outcome::ignored("own action", Some(summary)));
    }
    let Route::To { policy, .. } = route(&closed.repository, policies, tenancy) else {
        return Decided::Respond(Outcome::ignored("no matching policy", Some(summary)));
    };
    Decided::Cancel(Box::new(CancelIntake {
        namespace: policy.metadata.namespace.clone().unwrap_or_default(),
        repository: closed.repository.clone(),
        number: closed.number,
        request: CancelRequest {
            kind: CancelKind::Closed,
            login: closed.actor.login.clone(),
            id: closed.actor.id,
            comment_id: None,
            delivery_id: delivery.to_owned(),
        },
        association: None,
    }))
}

/// The instruction of a trigger, if the candidate is one under these
/// trigger rules; else why not, as the delivery's ignored reason: `not a
/// trigger`, or `review not wanted` for a pull request event the review
/// filters (label, draft, base branch) skip.
fn trigger_instruction(c: &TriggerCandidate, rules: &crate::api::Triggers) -> Result<String, &'static str> {
    const NOT_A_TRIGGER: &str = "not a trigger";
    if !rules.events.contains(&c.event) {
        return Err(NOT_A_TRIGGER);
    }
    if c.event.is_review() {
        let review = &rules.review;
        if let Err(skip) = crate::admission::matching::review_filter(
            review,
            c.event,
            c.base_ref.as_deref(),
            c.draft,
            c.label.as_deref(),
        ) {
            tracing::debug!(reason = skip.reason, message = %skip.message, "no review");
            return Err("review not wanted");
        }
        return Ok(trigger::review_instruction(review.instructions.as_deref()));
    }
    let wanted = match c.event {
        TriggerEvent::IssueAssigned => rules
            .assignee
            .as_deref()
            .zip(c.assignee.as_deref())
            .is_some_and(|(want, got)| got.eq_ignore_ascii_case(want)),
        TriggerEvent::IssueLabeled => rules
            .label
            .as_deref()
            .zip(c.label.as_deref())
            .is_some_and(|(want, got)| got.eq_ignore_ascii_case(want)),
        _ => true,
    };
    wanted
        .then(|| trigger::instruction_for(c, &rules.phrase))
        .flatten()
        .ok_or(NOT_A_TRIGGER)
}

/// Author associations that say the author has no standing in the repository.
fn is_stranger(a: AuthorAssociation) -> bool {
    matches!(
        a,
        AuthorAssociation::None
            | AuthorAssociation::FirstTimer
            | AuthorAssociation::FirstTimeContributor
            | AuthorAssociation::Mannequin
    )
}

fn to_run(
    c: &TriggerCandidate,
    delivery: &str,
    event: &str,
    namespace: &str,
    policy: &str,
    prompt: String,
) -> ClaudeRun {
    let labels = BTreeMap::from([
        (POLICY_LABEL.to_owned(), policy.to_owned()),
        (REPOSITORY_LABEL.to_owned(), repository_label(&c.repository)),
        (NUMBER_LABEL.to_owned(), c.number.to_string()),
        ("app.kubernetes.io/managed-by".to_owned(), "claude-operator".to_owned()),
    ]);
    ClaudeRun {
        metadata: ObjectMeta {
            name: Some(run_name_of(c)),
            namespace: Some(namespace.to_owned()),
            labels: Some(labels),
            finalizers: Some(vec![crate::api::RUN_FINALIZER.to_owned()]),
            ..Default::default()
        },
        spec: ClaudeRunSpec {
            policy_name: policy.to_owned(),
            repository: c.repository.clone(),
            trigger: {
                let mut t = c.trigger(delivery);
                t.event = event.to_owned();
                t.title = truncate(&t.title, 1024);
                t
            },
            prompt,
            requester: None,
        },
        status: None,
    }
}

fn truncate(s: &str, max_chars: usize) -> String {
    s.chars().take(max_chars).collect()
}

/// Per-actor token buckets: each actor gets `per_hour` triggers, refilled
/// evenly over the hour. Only a first line of defence against floods; the
/// controller enforces the policy's limit exactly.
#[derive(Default)]
pub struct ActorLimiter {
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

/// An actor's bucket under a policy.
#[derive(Clone, Debug)]
pub struct RateKey {
    pub key: String,
    pub per_hour: u32,
}

impl ActorLimiter {
    /// Whether the bucket has a token, without taking it.
    pub fn has_token(&self, rate: &RateKey) -> bool {
        self.update(rate, false)
    }

    /// Takes a token; false when the bucket is empty.
    pub fn try_take(&self, rate: &RateKey) -> bool {
        self.update(rate, true)
    }

    fn update(&self, rate: &RateKey, take: bool) -> bool {
        let (key, per_hour) = (rate.key.as_str(), rate.per_hour);
        let now = Instant::now();
        let capacity = f64::from(per_hour);
        let rate = capacity / 3600.0;
        let mut buckets = self.buckets.lock().expect("limiter lock");
        if buckets.len() > 100_000 {
            // Forget full buckets: they behave exactly like new ones.
            buckets.retain(|_, (tokens, at)| *tokens + now.duration_since(*at).as_secs_f64() * rate < capacity);
        }
        let (tokens, at) = buckets.entry(key.to_owned()).or_insert((capacity, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * rate).min(capacity);
        *at = now;
        if *tokens >= 1.0 {
            if take {
                *tokens -= 1.0;
            }
            true
        } else {
            false
        }
    }
}

/// The run a delivery concerned, for the audit line.
#[derive(Clone, Debug, Default)]
pub struct RunSummary {
    pub repository: String,
    pub actor: String,
    pub run: Option<String>,
    pub namespace: Option<String>,
}

impl RunSummary {
    pub fn of(run: &ClaudeRun) -> Self {
        Self {
            repository: run.spec.repository.clone(),
            actor: run.spec.trigger.actor.login.clone(),
            run: run.metadata.name.clone(),
            namespace: run.metadata.namespace.clone(),
        }
    }
}

/// How a delivery ended: its HTTP answer, metric label and audit line.
#[derive(Debug)]
pub struct Outcome {
    pub status: StatusCode,
    pub kind: &'static str,
    pub reason: &'static str,
    pub summary: Option<RunSummary>,
}

impl Outcome {
    pub fn ping() -> Self {
        Self {
            status: StatusCode::OK,
            kind: "ping",
            reason: "pong",
            summary: None,
        }
    }
    pub fn ignored(reason: &'static str, summary: Option<RunSummary>) -> Self {
        Self {
            status: StatusCode::ACCEPTED,
            kind: "ignored",
            reason,
            summary,
        }
    }
    pub fn rejected(status: StatusCode, reason: &'static str) -> Self {
        Self {
            status,
            kind: "rejected",
            reason,
            summary: None,
        }
    }
    pub fn created(summary: RunSummary) -> Self {
        Self {
            status: StatusCode::ACCEPTED,
            kind: "created",
            reason: "run created",
            summary: Some(summary),
        }
    }
    pub fn duplicate(summary: RunSummary) -> Self {
        Self {
            status: StatusCode::OK,
            kind: "duplicate",
            reason: "run exists",
            summary: Some(summary),
        }
    }
    pub fn approval(summary: RunSummary, recorded: usize) -> Self {
        let reason = if recorded == 0 {
            "no run awaits approval"
        } else {
            "approval recorded"
        };
        Self {
            status: StatusCode::ACCEPTED,
            kind: "approval",
            reason,
            summary: Some(summary),
        }
    }
    pub fn cancel(summary: RunSummary, recorded: usize) -> Self {
        let reason = if recorded == 0 {
            "no run to cancel"
        } else {
            "cancel recorded"
        };
        Self {
            status: StatusCode::ACCEPTED,
            kind: "cancel",
            reason,
            summary: Some(summary),
        }
    }
    pub fn unavailable(summary: RunSummary) -> Self {
        Self {
            status: StatusCode::SERVICE_UNAVAILABLE,
            kind: "unavailable",
            reason: "apiserver unavailable",
            summary: Some(summary),
        }
    }

    /// The metric label of this outcome.
    pub fn label(&self) -> &'static str {
        self.kind
    }

    /// The one audit line of a delivery: never the body, never a secret.
    pub fn audit(&self, delivery: &str, event: &str) {
        let s = self.summary.clone().unwrap_or_default();
        tracing::info!(
            target: "claude_operator::audit",
            delivery,
            event,
            repository = %s.repository,
            actor = %s.actor,
            run = s.run.as_deref().unwrap_or(""),
            namespace = s.namespace.as_deref().unwrap_or(""),
            outcome = self.kind,
            reason = self.reason,
            status = self.status.as_u16(),
            "webhook delivery"
        );
    }
}

impl IntoResponse for Outcome {
    fn into_response(self) -> Response {
        (self.status, format!("{}\n", self.reason)).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_names_derive_from_the_signed_body_not_the_delivery_id() {
        let fixture = |name: &str| {
            std::fs::read(format!(
                "{}/tests/fixtures/webhooks/{name}.json",
                env!("CARGO_MANIFEST_DIR")
            ))
            .unwrap()
        };
        let body = fixture("issue_comment.created");
        let a = run_name("issue_comment", &body).unwrap();
        assert_eq!(Some(&a), run_name("issue_comment", &body).as_ref());
        let mut v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        v["comment"]["id"] = serde_json::json!(1);
        assert_ne!(
            Some(&a),
            run_name("issue_comment", &serde_json::to_vec(&v).unwrap()).as_ref()
        );
        assert_eq!(run_name("issue_comment", &fixture("issue_comment.edited")), None);
        assert_eq!(run_name("push", &fixture("push")), None);
        assert_eq!(a.len(), 19);
        assert!(a.starts_with("gh-") && a[3..].chars().all(|c| c.is_ascii_hexdigit()));
    }

    #[test]
    fn a_review_needs_its_event_and_the_review_filters_not_a_phrase() {
        let body = std::fs::read(format!(
            "{}/tests/fixtures/webhooks/pull_request.opened.json",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap();
        let Ok(Parsed::Candidate(c)) = events::parse("pull_request", &body) else {
            panic!("a candidate")
        };
        let mut rules = crate::api::Triggers::default();
        assert_eq!(
            trigger_instruction(&c, &rules),
            Err("not a trigger"),
            "not among the default events"
        );
        rules.events.push(TriggerEvent::PullRequestOpened);
        let instruction = trigger_instruction(&c, &rules).unwrap();
        assert!(instruction.starts_with(trigger::REVIEW_REQUEST), "{instruction}");
        assert!(instruction.ends_with(trigger::REVIEW_FORMAT), "{instruction}");
        rules.review.instructions = Some("Check the SQL.".into());
        assert!(
            trigger_instruction(&c, &rules)
                .unwrap()
                .starts_with("Check the SQL.\n\n")
        );
        rules.review.base_branches = vec!["main".into()];
        assert_eq!(
            trigger_instruction(&c, &rules),
            Err("review not wanted"),
            "the fixture's base is master"
        );
    }

    #[test]
    fn repository_labels_are_valid_label_values() {
        assert_eq!(repository_label("Acme/API"), "acme.api");
        let long = format!("acme/{}", "x".repeat(100));
        let label = repository_label(&long);
        assert!(label.len() <= 63 && label.starts_with("h-"));
    }

    #[test]
    fn the_limiter_allows_the_hourly_budget_then_refuses() {
        let l = ActorLimiter::default();
        let a = RateKey {
            key: "p/a".into(),
            per_hour: 3,
        };
        let b = RateKey {
            key: "p/b".into(),
            per_hour: 3,
        };
        assert!(l.has_token(&a) && l.has_token(&a), "peeking takes nothing");
        for _ in 0..3 {
            assert!(l.try_take(&a));
        }
        assert!(!l.try_take(&a) && !l.has_token(&a));
        assert!(l.try_take(&b), "buckets are per actor");
    }

    #[test]
    fn a_cancel_is_recorded_only_on_the_runs_it_concerns() {
        let run: ClaudeRun = serde_yaml::from_str(include_str!("../../config/samples/run.yaml")).unwrap();
        let mut trigger = run.spec.trigger.clone();
        let actor = trigger.actor.id;
        let intake = |kind, id, association| CancelIntake {
            namespace: "ns".into(),
            repository: "acme/api".into(),
            number: 1,
            request: CancelRequest {
                kind,
                login: "x".into(),
                id,
                comment_id: None,
                delivery_id: "d".into(),
            },
            association,
        };
        use AuthorAssociation as A;
        // (kind, requester id, association, run's event, recorded?)
        let rows = [
            (CancelKind::Comment, actor, Some(A::None), "issue_comment", true),
            (CancelKind::Comment, actor + 1, Some(A::None), "issue_comment", false),
            (
                CancelKind::Comment,
                actor + 1,
                Some(A::Contributor),
                "issue_comment",
                false,
            ),
            (
                CancelKind::Comment,
                actor + 1,
                Some(A::Collaborator),
                "issue_comment",
                true,
            ),
            (CancelKind::Comment, actor + 1, Some(A::Member), "issue_comment", true),
            (CancelKind::Closed, actor + 1, None, "issue_comment", true),
            (CancelKind::Superseded, actor + 1, None, "issue_comment", false),
            (CancelKind::Superseded, actor + 1, None, "pull_request", true),
        ];
        for (kind, id, association, event, want) in rows {
            trigger.event = event.into();
            assert_eq!(
                intake(kind, id, association).concerns(&trigger),
                want,
                "{kind:?} {id} {association:?} {event}"
            );
        }
    }
}
