//! Feedback on GitHub: an "eyes" reaction on the triggering comment when a
//! run is admitted, and one status comment per run, edited as the run moves
//! (admitted, running, finished with outcome, duration and cost, or denied
//! with a reason). Best effort: a failure here is logged and never changes a
//! run's outcome. Denials are reported only to actors GitHub says can read the
//! repository, so strangers cannot make the operator post.
//!
//! The comment's id is kept on `status.feedbackCommentId`, so a restart edits
//! the same comment; only a crash between creating the comment and recording
//! its id can leave a second one. The id rides on the run's next status write
//! ([`Feedbacks::unrecorded`]); only when none comes within `RECORD_WAIT` is
//! it written alone.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

use crate::api::{ClaudeRun, ClaudeRunPolicy, ClaudeRunStatus, Feedback, Permission, Phase};
use crate::github::client::{GitHubClient, Reaction};

/// Reports run in the background, one at a time per run and in order, so a
/// slow GitHub never delays a pod and two phases never race to create two
/// comments. Each run's slot holds its comment id once known, and when and
/// what was last written: writes to one comment are at least `interval`
/// apart (a phase change waits for it; live progress is dropped within it,
/// and the next meter tick tries again).
#[derive(Clone)]
pub struct Feedbacks {
    slots: Arc<Mutex<HashMap<String, Slot>>>,
    interval: Duration,
    /// Run key -> the id of its status comment, created and not yet on its
    /// status.
    unrecorded: Arc<Mutex<HashMap<String, i64>>>,
}

/// How long a new comment's id waits for the run's next status write before
/// it is written alone.
const RECORD_WAIT: Duration = Duration::from_secs(5);

/// Comment `id` of the run `key` is on its status: no longer waiting (unless
/// another comment of the run replaced it meanwhile).
fn settled(unrecorded: &Mutex<HashMap<String, i64>>, key: &str, id: i64) {
    let mut unrecorded = unrecorded.lock().expect("feedback lock");
    if unrecorded.get(key) == Some(&id) {
        unrecorded.remove(key);
    }
}

/// The key of a run's slot and unrecorded comment.
fn key_of(run: &ClaudeRun) -> String {
    run.uid().unwrap_or_else(|| run.name_any())
}

impl Default for Feedbacks {
    fn default() -> Self {
        Self::new(Duration::from_secs(10))
    }
}

/// What this process last wrote to a run's status comment.
#[derive(Default)]
struct Posted {
    comment: Option<i64>,
    at: Option<tokio::time::Instant>,
    body: Option<String>,
    /// The run's end is reported: no progress after it.
    ended: bool,
}

/// A run's slot; locked while reporting.
type Slot = Arc<tokio::sync::Mutex<Posted>>;

/// Most a GitHub report may take.
const REPORT_TIMEOUT: Duration = Duration::from_secs(30);

impl Feedbacks {
    /// Feedback writing a run's comment at most once per `interval`.
    pub fn new(interval: Duration) -> Self {
        Self {
            slots: Arc::default(),
            interval,
            unrecorded: Arc::default(),
        }
    }

    /// The id of `run`'s status comment when it is not on the run's status
    /// yet: the caller's status write carries it, then calls [`Self::recorded`].
    pub fn unrecorded(&self, run: &ClaudeRun) -> Option<i64> {
        self.unrecorded
            .lock()
            .expect("feedback lock")
            .get(&key_of(run))
            .copied()
    }

    /// Comment `id` of `run` is on its status now.
    pub fn recorded(&self, run: &ClaudeRun, id: i64) {
        settled(&self.unrecorded, &key_of(run), id);
    }

    /// Keeps comment `id` of `run` for its next status write; writes it alone
    /// if none took it within `RECORD_WAIT`.
    fn record(&self, client: kube::Client, run: &ClaudeRun, id: i64) {
        let key = key_of(run);
        self.unrecorded.lock().expect("feedback lock").insert(key.clone(), id);
        let unrecorded = self.unrecorded.clone();
        let (ns, name) = (run.namespace().unwrap_or_default(), run.name_any());
        tokio::spawn(async move {
            tokio::time::sleep(RECORD_WAIT).await;
            if unrecorded.lock().expect("feedback lock").get(&key) != Some(&id) {
                return;
            }
            let api: Api<ClaudeRun> = Api::namespaced(client, &ns);
            let patch = json!({"status": {"feedbackCommentId": id}});
            match api
                .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => settled(&unrecorded, &key, id),
                Err(err) => tracing::warn!(run = %name, error = %err, "recording the status comment's id failed"),
            }
        });
    }

    fn slot(&self, key: &str) -> Slot {
        self.slots
            .lock()
            .expect("feedback lock")
            .entry(key.to_owned())
            .or_default()
            .clone()
    }

    /// Queues the report of `run`'s new `status` (a phase change).
    pub fn spawn(
        &self,
        client: kube::Client,
        github: Arc<GitHubClient>,
        run: ClaudeRun,
        policy: Option<Arc<ClaudeRunPolicy>>,
        status: ClaudeRunStatus,
    ) {
        let Some(policy) = policy.filter(|p| p.spec.feedback != Feedback::None) else {
            return;
        };
        let key = key_of(&run);
        let slot = self.slot(&key);
        let (slots, interval) = (self.slots.clone(), self.interval);
        let feedbacks = self.clone();
        tokio::spawn(async move {
            let mut posted = slot.lock().await;
            if posted.comment.is_none() {
                posted.comment = status.feedback_comment_id;
            }
            if let Some(at) = posted.at {
                tokio::time::sleep_until(at + interval).await;
            }
            let work = report(&github, &run, &policy, &status, &mut posted);
            match tokio::time::timeout(REPORT_TIMEOUT, work).await {
                Ok(Ok(Some(created))) => feedbacks.record(client, &run, created),
                Ok(Ok(None)) => {}
                Ok(Err(err)) => tracing::warn!(run = %run.name_any(), error = %err, "GitHub feedback failed"),
                Err(_) => tracing::warn!(run = %run.name_any(), "GitHub feedback timed out"),
            }
            if status.phase.is_terminal() {
                posted.ended = true;
                slots.lock().expect("feedback lock").remove(&key);
            }
        });
    }

    /// Shows a running run's progress (its `status` as the meter was just
    /// copied onto it) on its status comment, when the text changed, no
    /// other report is under way and the last write is `interval` old.
    /// Otherwise nothing: the next meter tick calls again.
    pub fn progress(
        &self,
        github: Arc<GitHubClient>,
        run: ClaudeRun,
        policy: Arc<ClaudeRunPolicy>,
        status: ClaudeRunStatus,
    ) {
        if policy.spec.feedback != Feedback::Comment || status.phase != Phase::Running {
            return;
        }
        let slot = self.slot(&key_of(&run));
        let interval = self.interval;
        tokio::spawn(async move {
            let Ok(mut posted) = slot.try_lock() else {
                return;
            };
            let Some(id) = posted.comment.or(status.feedback_comment_id) else {
                return;
            };
            if posted.ended || posted.at.is_some_and(|at| at.elapsed() < interval) {
                return;
            }
            let body = status_comment(&run, &status);
            if posted.body.as_deref() == Some(body.as_str()) {
                return;
            }
            let work = async {
                let (owner, repo) = run.spec.repository.split_once('/').ok_or("malformed repository")?;
                let installation = match policy.spec.github.installation_id {
                    Some(id) => id,
                    None => github.installation_for_repo(owner, repo).await?,
                };
                github.update_comment(installation, owner, repo, id, &body).await?;
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
            };
            match tokio::time::timeout(REPORT_TIMEOUT, work).await {
                Ok(Ok(())) => {
                    posted.comment = Some(id);
                    posted.at = Some(tokio::time::Instant::now());
                    posted.body = Some(body);
                }
                Ok(Err(err)) => tracing::warn!(run = %run.name_any(), error = %err, "GitHub progress failed"),
                Err(_) => tracing::warn!(run = %run.name_any(), "GitHub progress timed out"),
            }
        });
    }
}

/// The status comment's text for a run in this state (pure).
pub fn status_comment(run: &ClaudeRun, status: &ClaudeRunStatus) -> String {
    let name = run.name_any();
    let actor = &run.spec.trigger.actor.login;
    let head = match status.phase {
        Phase::Pending => "⏳ Checking who asked".to_owned(),
        Phase::AwaitingApproval => {
            "⏸️ Waiting for approval by a maintainer (comment the approval phrase to approve)".to_owned()
        }
        Phase::Admitted => format!("👀 Claude is starting on this for @{actor}"),
        Phase::Running => format!("⚙️ Claude is working on this for @{actor}"),
        Phase::Succeeded => "✅ Claude finished".to_owned(),
        Phase::Failed => "❌ Claude's run failed".to_owned(),
        Phase::TimedOut => "⌛ Claude's run hit its time limit".to_owned(),
        Phase::Denied => "🚫 This request was not run".to_owned(),
        Phase::Cancelled => "⏹️ Claude's run was cancelled".to_owned(),
    };
    let mut lines = vec![head];
    if status.phase == Phase::Denied {
        // The comment is public: why (permission, organization, team,
        // budget) stays on the run's status and Events, for maintainers.
        let ns = run.namespace().unwrap_or_default();
        lines.push(format!(
            "A maintainer can see why with `kubectl describe crun {name} -n {ns}`."
        ));
    }
    if status.phase == Phase::Running
        && let Some(cost) = &status.cost
    {
        let mut progress = format!("Progress: {} turns · ${} so far", cost.turns, cost.usd);
        if let Some(tool) = &status.last_tool {
            progress.push_str(&format!(" · last tool `{tool}`"));
        }
        lines.push(progress);
    }
    if status.phase.is_terminal() && status.phase != Phase::Denied {
        if let Some(outcome) = &status.outcome {
            lines.push(format!("Outcome: `{outcome}`"));
        }
        if let (Some(start), Some(end)) = (&status.start_time, &status.completion_time) {
            let secs = end.0.duration_since(start.0).as_secs().max(0);
            lines.push(format!("Duration: {}m {:02}s", secs / 60, secs % 60));
        }
        if let Some(cost) = &status.cost {
            let estimated = if cost.source == crate::api::CostSource::Estimated {
                " (estimated)"
            } else {
                ""
            };
            lines.push(format!("Cost: ${}{estimated}", cost.usd));
        }
    }
    lines.push(format!("<sub>claude-operator run `{name}`</sub>"));
    lines.join("\n\n")
}

/// A tool name fit for the status and a public comment: the model names
/// tools from what the pod declared, so anything but a plain identifier
/// (letters, digits, `_`, `-`, `.`, `:`; at most 64) is not shown.
pub fn tool_name(raw: &str) -> Option<String> {
    let ok = !raw.is_empty()
        && raw.len() <= 64
        && raw
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':'));
    ok.then(|| raw.to_owned())
}

/// Reports `run`'s `status` on GitHub; `posted` holds the run's status comment id and records this write.
/// Answers the id of a comment it created, to be recorded on the run.
async fn report(
    github: &GitHubClient,
    run: &ClaudeRun,
    policy: &ClaudeRunPolicy,
    status: &ClaudeRunStatus,
    posted: &mut Posted,
) -> Result<Option<i64>, Box<dyn std::error::Error + Send + Sync>> {
    let (owner, repo) = run.spec.repository.split_once('/').ok_or("malformed repository")?;
    let installation = match policy.spec.github.installation_id {
        Some(id) => id,
        None => github.installation_for_repo(owner, repo).await?,
    };
    let trigger = &run.spec.trigger;
    // A review the filters do not want is not news on the pull request.
    let unwanted = status
        .admission
        .as_ref()
        .is_some_and(|a| a.reason == crate::api::conditions::reasons::REVIEW_NOT_WANTED);
    if unwanted {
        return Ok(None);
    }
    if status.phase == Phase::Denied {
        // Only people who can read the repository hear back about a denial.
        let auth = &policy.spec.authorization;
        let facts = github
            .actor_facts(
                installation,
                owner,
                repo,
                &trigger.actor.login,
                &auth.organizations,
                &auth.teams,
            )
            .await;
        let can_read = facts
            .as_ref()
            .is_ok_and(|f| f.permission.is_some_and(|p| p >= Permission::Read));
        if !can_read {
            return Ok(None);
        }
    }
    if status.phase == Phase::Admitted
        && let Some(id) = trigger.comment_id
        && trigger.event == "issue_comment"
    {
        github
            .add_reaction(installation, owner, repo, id, Reaction::Eyes)
            .await?;
    }
    if policy.spec.feedback != Feedback::Comment {
        return Ok(None);
    }
    let body = status_comment(run, status);
    let created = match posted.comment {
        Some(id) => {
            github.update_comment(installation, owner, repo, id, &body).await?;
            None
        }
        None => Some(
            github
                .create_comment(installation, owner, repo, trigger.number, &body)
                .await?,
        ),
    };
    posted.at = Some(tokio::time::Instant::now());
    posted.body = Some(body);
    if let Some(id) = created {
        posted.comment = Some(id);
    }
    Ok(created)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{Admission, Cost, CostSource, Decision};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn run() -> ClaudeRun {
        serde_yaml::from_str(include_str!("../../config/samples/run.yaml")).unwrap()
    }

    #[test]
    fn a_new_comments_id_waits_for_the_runs_next_write_and_is_taken_once() {
        let feedbacks = Feedbacks::default();
        let (a, mut b) = (run(), run());
        b.metadata.uid = Some("another".into());
        assert_eq!(feedbacks.unrecorded(&a), None);
        feedbacks.unrecorded.lock().unwrap().insert(key_of(&a), 7);
        assert_eq!(feedbacks.unrecorded(&a), Some(7));
        assert_eq!(feedbacks.unrecorded(&b), None, "per run");
        feedbacks.recorded(&a, 8);
        assert_eq!(
            feedbacks.unrecorded(&a),
            Some(7),
            "another id recorded: this one still waits"
        );
        feedbacks.recorded(&a, 7);
        assert_eq!(feedbacks.unrecorded(&a), None);
    }

    fn at(secs: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(secs).unwrap())
    }

    #[test]
    fn a_finished_run_reports_outcome_duration_and_cost() {
        let status = ClaudeRunStatus {
            phase: Phase::Succeeded,
            outcome: Some("Completed".into()),
            start_time: Some(at(1_000)),
            completion_time: Some(at(1_125)),
            cost: Some(Cost {
                usd: "0.0421".into(),
                input_tokens: 9120,
                output_tokens: 1043,
                cache_creation_input_tokens: 0,
                cache_read_input_tokens: 0,
                turns: 6,
                models: vec![],
                source: CostSource::Reported,
            }),
            ..Default::default()
        };
        let text = status_comment(&run(), &status);
        assert!(text.starts_with("✅ Claude finished"), "{text}");
        assert!(
            text.contains("Duration: 2m 05s") && text.contains("Cost: $0.0421"),
            "{text}"
        );
        assert!(text.contains("gh-3f1c2a9d0b7e4c61"), "{text}");
    }

    #[test]
    fn a_denial_says_only_where_to_look() {
        let status = ClaudeRunStatus {
            phase: Phase::Denied,
            admission: Some(Admission {
                decision: Decision::Deny,
                reason: "InsufficientPermission".into(),
                message: "octocat has read access; the policy requires write".into(),
                checked_at: at(0),
                approved_by: None,
            }),
            ..Default::default()
        };
        let text = status_comment(&run(), &status);
        assert!(text.starts_with("🚫 This request was not run"), "{text}");
        assert!(
            text.contains("`kubectl describe crun gh-3f1c2a9d0b7e4c61 -n claude-runs`"),
            "{text}"
        );
        for private in ["InsufficientPermission", "read access", "write", "Cost"] {
            assert!(!text.contains(private), "{private} in {text}");
        }
    }

    #[test]
    fn no_denial_reason_reaches_the_public_comment() {
        use crate::api::conditions::reasons;
        let details = [
            (
                reasons::NOT_ORG_MEMBER,
                "octocat is not a member of organization acme-secret",
            ),
            (
                reasons::NOT_TEAM_MEMBER,
                "octocat is in none of acme/red-team, acme/payroll",
            ),
            (reasons::BUDGET_EXHAUSTED, "$41.20 of $50.00 spent this month"),
            (reasons::MANUAL_RUN_NOT_ALLOWED, "Kubernetes user alice is not allowed"),
        ];
        for (reason, message) in details {
            let status = ClaudeRunStatus {
                phase: Phase::Denied,
                admission: Some(Admission {
                    decision: Decision::Deny,
                    reason: reason.into(),
                    message: message.into(),
                    checked_at: at(0),
                    approved_by: None,
                }),
                ..Default::default()
            };
            let text = status_comment(&run(), &status);
            assert!(!text.contains(reason) && !text.contains(message), "{text}");
        }
    }

    #[test]
    fn an_estimated_cost_says_so() {
        let status = ClaudeRunStatus {
            phase: Phase::TimedOut,
            cost: Some(Cost {
                usd: "5.00".into(),
                input_tokens: 0,
                output_tokens: 0,
                cache_creation_input_tokens: 0,
                cache_read_input_tokens: 0,
                turns: 0,
                models: vec![],
                source: CostSource::Estimated,
            }),
            ..Default::default()
        };
        assert!(status_comment(&run(), &status).contains("Cost: $5.00 (estimated)"));
    }

    #[test]
    fn a_running_run_shows_its_progress() {
        let mut status = ClaudeRunStatus {
            phase: Phase::Running,
            ..Default::default()
        };
        let text = status_comment(&run(), &status);
        assert!(!text.contains("Progress"), "nothing metered yet: {text}");
        status.cost = Some(Cost {
            usd: "0.0123".into(),
            input_tokens: 0,
            output_tokens: 0,
            cache_creation_input_tokens: 0,
            cache_read_input_tokens: 0,
            turns: 3,
            models: vec![],
            source: CostSource::Metered,
        });
        status.last_tool = Some("Bash".into());
        let text = status_comment(&run(), &status);
        assert!(
            text.contains("Progress: 3 turns · $0.0123 so far · last tool `Bash`"),
            "{text}"
        );
        status.phase = Phase::Succeeded;
        assert!(!status_comment(&run(), &status).contains("Progress"));
    }

    #[test]
    fn only_plain_tool_names_are_shown() {
        for (raw, shown) in [
            ("Bash", true),
            ("mcp__github__create_issue", true),
            ("str_replace_based_edit_tool", true),
            ("ns:tool.v2-x", true),
            ("", false),
            ("Bash` @everyone", false),
            ("<img src=x>", false),
            ("a\nb", false),
            ("名前", false),
        ] {
            assert_eq!(tool_name(raw).is_some(), shown, "{raw:?}");
        }
        assert!(tool_name(&"x".repeat(65)).is_none());
    }
}
