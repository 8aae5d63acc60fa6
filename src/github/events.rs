//! Webhook event parsing: from an `X-GitHub-Event` name and a verified raw
//! body to a [`TriggerCandidate`] (an event that could start a run), a ping,
//! or a reason to ignore the delivery. Only the fields the operator uses are
//! read; anything unexpected is an error or ignored, never a run.

use serde::Deserialize;
use serde::de::IgnoredAny;

use crate::api::TriggerEvent;
use crate::api::{Actor, ActorType, AuthorAssociation, Trigger, TriggerSource};

/// What a delivery is, as far as the operator cares.
#[derive(Debug, Clone, PartialEq)]
pub enum Parsed {
    /// GitHub's `ping`, sent when a hook is created.
    Ping,
    /// An event or action that never starts a run.
    Ignored {
        /// Why, for logs and the response.
        reason: String,
    },
    /// An event that may start a run if its text, actor and policy allow.
    Candidate(Box<TriggerCandidate>),
    /// An issue or pull request was closed: its runs still going are cancelled.
    Closed(Box<Closed>),
}

/// An issue or pull request closed (`issues` or `pull_request` `closed`).
#[derive(Debug, Clone, PartialEq)]
pub struct Closed {
    /// `repository.full_name`, `owner/name`.
    pub repository: String,
    /// The issue or pull request number.
    pub number: i64,
    /// Who closed it (the `sender`).
    pub actor: Actor,
}

/// An event that may start a run: everything the receiver, the trigger
/// matcher and admission need, taken from the payload.
#[derive(Debug, Clone, PartialEq)]
pub struct TriggerCandidate {
    /// Which kind of trigger this is.
    pub event: TriggerEvent,
    /// The `X-GitHub-Event` name (`issue_comment`, `issues`, ...).
    pub event_name: String,
    /// The payload's `action` (`created`, `opened`, ...).
    pub action: String,
    /// `repository.full_name`, `owner/name`.
    pub repository: String,
    /// `repository.owner.login`.
    pub owner: String,
    /// `installation.id`, present when the hook belongs to a GitHub App.
    pub installation_id: Option<i64>,
    /// The `sender`: who commented, reviewed, opened, assigned or labelled.
    pub actor: Actor,
    /// `author_association` of the comment, review or issue. For `assigned`
    /// and `labeled` this describes the issue's author, not the actor; it is
    /// only ever a pre-filter, and unknown values read as `None`.
    pub author_association: AuthorAssociation,
    /// Issue or pull request number.
    pub number: i64,
    /// Whether `number` is a pull request.
    pub is_pull_request: bool,
    /// Title of the issue or pull request.
    pub title: String,
    /// Web URL of the issue or pull request.
    pub html_url: Option<String>,
    /// Id of the triggering comment or review.
    pub comment_id: Option<i64>,
    /// Web URL of the triggering comment or review.
    pub comment_url: Option<String>,
    /// The text that may hold the phrase: comment, review or issue body.
    pub body: String,
    /// Head commit, where the payload has `pull_request.head`. An
    /// `issue_comment` on a pull request carries no head: the controller must
    /// look the pull request up (and with it whether it comes from a fork).
    pub head_sha: Option<String>,
    /// Head branch, where the payload has `pull_request.head`.
    pub head_ref: Option<String>,
    /// Whether the head repository differs from the base or is gone. Only
    /// meaningful when `head_sha` is known.
    pub fork: bool,
    /// The label added (`issues` `labeled`).
    pub label: Option<String>,
    /// The login assigned (`issues` `assigned`).
    pub assignee: Option<String>,
    /// The issue's `updated_at` (`issues` `labeled` and `assigned` only): it
    /// tells a label removed and added again from a replay of the first.
    pub issue_updated_at: Option<String>,
    /// Base branch of the pull request (`pull_request` events).
    pub base_ref: Option<String>,
    /// Whether the pull request is a draft (`pull_request` events).
    pub draft: bool,
}

impl TriggerCandidate {
    /// What makes this trigger one event on GitHub, taken from the signed
    /// body only (never from a header): event, action, repository, number,
    /// the comment or review id, and for `labeled`/`assigned` the label or
    /// assignee and the issue's `updated_at`. A replay of the same body under
    /// any delivery id has the same identity. Encoded as a JSON array so no
    /// two tuples share a text.
    pub fn identity(&self) -> String {
        let mut identity = serde_json::json!([
            self.event_name,
            self.action,
            self.repository.to_ascii_lowercase(),
            self.number,
            self.comment_id,
            self.label,
            self.assignee,
            self.issue_updated_at,
        ]);
        // A pull request's review is of one head: each push is its own.
        if self.event.is_review()
            && let Some(list) = identity.as_array_mut()
        {
            list.push(serde_json::json!(self.head_sha));
        }
        identity.to_string()
    }

    /// The run's `spec.trigger` for this candidate and delivery.
    pub fn trigger(&self, delivery_id: &str) -> Trigger {
        Trigger {
            source: TriggerSource::GitHubWebhook,
            event: self.event_name.clone(),
            action: self.action.clone(),
            delivery_id: delivery_id.to_owned(),
            actor: self.actor.clone(),
            author_association: self.author_association,
            number: self.number,
            is_pull_request: self.is_pull_request,
            title: self.title.clone(),
            html_url: self.html_url.clone(),
            comment_id: self.comment_id,
            comment_url: self.comment_url.clone(),
            head_sha: self.head_sha.clone(),
            head_ref: self.head_ref.clone(),
            fork: self.fork,
        }
    }
}

/// Why a delivery could not be read. Messages name a position or a field,
/// never a piece of the body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// The body is not UTF-8.
    #[error("body is not valid UTF-8")]
    NotUtf8,
    /// Not JSON (or nested deeper than the parser allows).
    #[error("malformed JSON at line {line} column {column}")]
    Syntax {
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
    },
    /// JSON that ends too early.
    #[error("truncated JSON")]
    Eof,
    /// JSON of the wrong shape: a field of the wrong type or missing.
    #[error("unexpected payload shape at line {line} column {column}")]
    Shape {
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
    },
    /// A field this event needs is absent or null.
    #[error("payload lacks `{0}`")]
    Missing(&'static str),
    /// A field holds a value out of range.
    #[error("payload field `{0}` is invalid")]
    Invalid(&'static str),
}

impl From<serde_json::Error> for ParseError {
    fn from(err: serde_json::Error) -> Self {
        use serde_json::error::Category;
        let (line, column) = (err.line(), err.column());
        match err.classify() {
            Category::Eof => ParseError::Eof,
            Category::Data => ParseError::Shape { line, column },
            Category::Syntax | Category::Io => ParseError::Syntax { line, column },
        }
    }
}

// Only the fields the operator reads. GitHub omits or nulls many of them
// depending on the event, so nearly everything is optional here and required
// after the action is known.

#[derive(Deserialize)]
struct Payload {
    #[serde(default)]
    action: Option<String>,
    #[serde(default)]
    repository: Option<Repository>,
    #[serde(default)]
    sender: Option<User>,
    #[serde(default)]
    installation: Option<Installation>,
    #[serde(default)]
    issue: Option<Issue>,
    #[serde(default)]
    pull_request: Option<PullRequest>,
    #[serde(default)]
    comment: Option<Comment>,
    #[serde(default)]
    review: Option<Comment>,
    #[serde(default)]
    label: Option<Label>,
    #[serde(default)]
    assignee: Option<User>,
}

#[derive(Deserialize)]
struct Repository {
    #[serde(default)]
    id: Option<i64>,
    full_name: String,
    #[serde(default)]
    owner: Option<Login>,
}

#[derive(Deserialize)]
struct Login {
    login: String,
}

#[derive(Deserialize)]
struct User {
    login: String,
    id: i64,
    #[serde(default, rename = "type")]
    type_: Option<String>,
}

#[derive(Deserialize)]
struct Installation {
    id: i64,
}

#[derive(Deserialize)]
struct Issue {
    number: i64,
    #[serde(default)]
    updated_at: Option<String>,
    #[serde(default)]
    title: Option<String>,
    #[serde(default)]
    html_url: Option<String>,
    #[serde(default)]
    body: Option<String>,
    #[serde(default)]
    author_association: Option<String>,
    /// Present (an object) when the issue is a pull request.
    #[serde(default)]
    pull_request: Option<IgnoredAny>,
}

#[derive(Deserialize)]
struct PullRequest {
    number: i64,
    #[serde(default)]
    draft: Option<bool>,
    #[serde(default)]
    body: Option<String>,
    #[serde(default)]
    author_association: Option<String>,
    #[serde(default)]
    title: Option<String>,
    #[serde(default)]
    html_url: Option<String>,
    #[serde(default)]
    head: Option<Branch>,
    #[serde(default)]
    base: Option<Branch>,
}

#[derive(Deserialize)]
struct Branch {
    #[serde(default)]
    sha: Option<String>,
    #[serde(default, rename = "ref")]
    ref_: Option<String>,
    #[serde(default)]
    repo: Option<RepoRef>,
}

#[derive(Deserialize)]
struct RepoRef {
    #[serde(default)]
    id: Option<i64>,
    #[serde(default)]
    full_name: Option<String>,
}

/// A comment or a review: both have these fields.
#[derive(Deserialize)]
struct Comment {
    id: i64,
    #[serde(default)]
    html_url: Option<String>,
    #[serde(default)]
    body: Option<String>,
    #[serde(default)]
    author_association: Option<String>,
}

#[derive(Deserialize)]
struct Label {
    name: String,
}

/// Reads a delivery. `event` is the `X-GitHub-Event` header, `body` the raw
/// (already verified) body. Events the operator does not handle are ignored
/// without being parsed.
pub fn parse(event: &str, body: &[u8]) -> Result<Parsed, ParseError> {
    let kind = match event {
        "ping" => return Ok(Parsed::Ping),
        "issue_comment" | "pull_request_review_comment" | "pull_request_review" | "issues" | "pull_request" => event,
        _ => return Ok(ignored(format!("event `{}` is not handled", printable(event)))),
    };
    let text = std::str::from_utf8(body).map_err(|_| ParseError::NotUtf8)?;
    // serde_json keeps its recursion limit (128): deep nesting is an error.
    let mut payload: Payload = serde_json::from_str(text)?;
    let action = payload.action.take().ok_or(ParseError::Missing("action"))?;
    let action = action.as_str();

    if action == "closed" && matches!(kind, "issues" | "pull_request") {
        return closed(payload);
    }
    let trigger_event = match (kind, action) {
        ("issue_comment", "created") => TriggerEvent::IssueComment,
        ("pull_request_review_comment", "created") => TriggerEvent::PullRequestReviewComment,
        ("pull_request_review", "submitted") => TriggerEvent::PullRequestReview,
        ("issues", "opened") => TriggerEvent::IssueOpened,
        ("issues", "assigned") => TriggerEvent::IssueAssigned,
        ("issues", "labeled") => TriggerEvent::IssueLabeled,
        ("pull_request", "opened") => TriggerEvent::PullRequestOpened,
        ("pull_request", "synchronize") => TriggerEvent::PullRequestSynchronize,
        ("pull_request", "ready_for_review") => TriggerEvent::PullRequestReadyForReview,
        ("pull_request", "labeled") => TriggerEvent::PullRequestLabeled,
        (_, "edited" | "deleted") => {
            return Ok(ignored(format!(
                "{kind} {action}: edited and deleted text never triggers"
            )));
        }
        _ => return Ok(ignored(format!("{kind} action `{}` is not handled", printable(action)))),
    };
    candidate(kind, action, trigger_event, payload)
}

fn closed(p: Payload) -> Result<Parsed, ParseError> {
    let repo = p.repository.ok_or(ParseError::Missing("repository"))?;
    let sender = p.sender.ok_or(ParseError::Missing("sender"))?;
    let number = match (p.issue, p.pull_request) {
        (Some(issue), _) => issue.number,
        (None, Some(pr)) => pr.number,
        (None, None) => return Err(ParseError::Missing("issue")),
    };
    if number < 1 {
        return Err(ParseError::Invalid("number"));
    }
    let type_ = match sender.type_.as_deref() {
        Some("Bot") => ActorType::Bot,
        Some("Organization") => ActorType::Organization,
        _ => ActorType::User,
    };
    Ok(Parsed::Closed(Box::new(Closed {
        repository: repo.full_name,
        number,
        actor: Actor {
            login: sender.login,
            id: sender.id,
            type_,
        },
    })))
}

fn candidate(kind: &str, action: &str, event: TriggerEvent, p: Payload) -> Result<Parsed, ParseError> {
    let repo = p.repository.ok_or(ParseError::Missing("repository"))?;
    let sender = p.sender.ok_or(ParseError::Missing("sender"))?;
    let type_ = match sender.type_.as_deref() {
        Some("User") => ActorType::User,
        Some("Bot") => ActorType::Bot,
        Some("Organization") => ActorType::Organization,
        _ => return Ok(ignored("sender is not a User, Bot or Organization".into())),
    };
    let owner = match repo.owner {
        Some(o) => o.login,
        None => repo.full_name.split('/').next().unwrap_or_default().to_owned(),
    };

    let mut c = TriggerCandidate {
        event,
        event_name: kind.to_owned(),
        action: action.to_owned(),
        repository: repo.full_name,
        owner,
        installation_id: p.installation.map(|i| i.id),
        actor: Actor {
            login: sender.login,
            id: sender.id,
            type_,
        },
        author_association: AuthorAssociation::None,
        number: 0,
        is_pull_request: false,
        title: String::new(),
        html_url: None,
        comment_id: None,
        comment_url: None,
        body: String::new(),
        head_sha: None,
        head_ref: None,
        fork: false,
        label: None,
        assignee: None,
        issue_updated_at: None,
        base_ref: None,
        draft: false,
    };

    match event {
        TriggerEvent::IssueComment => {
            let issue = p.issue.ok_or(ParseError::Missing("issue"))?;
            let comment = p.comment.ok_or(ParseError::Missing("comment"))?;
            c.is_pull_request = issue.pull_request.is_some();
            set_issue(&mut c, &issue);
            set_comment(&mut c, comment);
        }
        TriggerEvent::PullRequestReviewComment | TriggerEvent::PullRequestReview => {
            let pr = p.pull_request.ok_or(ParseError::Missing("pull_request"))?;
            let comment = if event == TriggerEvent::PullRequestReview {
                p.review.ok_or(ParseError::Missing("review"))?
            } else {
                p.comment.ok_or(ParseError::Missing("comment"))?
            };
            if event == TriggerEvent::PullRequestReview && comment.body.as_deref().is_none_or(|b| b.trim().is_empty()) {
                return Ok(ignored("pull_request_review submitted without a body".into()));
            }
            set_pull_request(&mut c, pr, repo.id);
            set_comment(&mut c, comment);
        }
        TriggerEvent::IssueOpened | TriggerEvent::IssueAssigned | TriggerEvent::IssueLabeled => {
            let issue = p.issue.ok_or(ParseError::Missing("issue"))?;
            set_issue(&mut c, &issue);
            c.is_pull_request = issue.pull_request.is_some();
            c.author_association = association(issue.author_association.as_deref());
            c.body = issue.body.unwrap_or_default();
            if matches!(event, TriggerEvent::IssueAssigned | TriggerEvent::IssueLabeled) {
                c.issue_updated_at = issue.updated_at.clone();
            }
            if event == TriggerEvent::IssueAssigned {
                let who = p.assignee.ok_or(ParseError::Missing("assignee"))?;
                c.assignee = Some(who.login);
            }
            if event == TriggerEvent::IssueLabeled {
                let label = p.label.ok_or(ParseError::Missing("label"))?;
                c.label = Some(label.name);
            }
        }
        TriggerEvent::PullRequestOpened
        | TriggerEvent::PullRequestSynchronize
        | TriggerEvent::PullRequestReadyForReview
        | TriggerEvent::PullRequestLabeled => {
            let mut pr = p.pull_request.ok_or(ParseError::Missing("pull_request"))?;
            c.author_association = association(pr.author_association.as_deref());
            c.body = pr.body.take().unwrap_or_default();
            c.draft = pr.draft.unwrap_or(false);
            c.base_ref = pr.base.as_ref().and_then(|b| b.ref_.clone());
            if event == TriggerEvent::PullRequestLabeled {
                let label = p.label.ok_or(ParseError::Missing("label"))?;
                c.label = Some(label.name);
            }
            set_pull_request(&mut c, pr, repo.id);
            // A review is of one head commit: without it there is nothing to review.
            if !c.head_sha.as_deref().is_some_and(is_commit_id) {
                return Err(ParseError::Invalid("pull_request.head.sha"));
            }
        }
    }
    if c.number < 1 {
        return Err(ParseError::Invalid("number"));
    }
    Ok(Parsed::Candidate(Box::new(c)))
}

fn set_issue(c: &mut TriggerCandidate, issue: &Issue) {
    c.number = issue.number;
    c.title = issue.title.clone().unwrap_or_default();
    c.html_url = issue.html_url.clone();
}

fn set_comment(c: &mut TriggerCandidate, comment: Comment) {
    c.comment_id = Some(comment.id);
    c.comment_url = comment.html_url;
    c.author_association = association(comment.author_association.as_deref());
    c.body = comment.body.unwrap_or_default();
}

fn set_pull_request(c: &mut TriggerCandidate, pr: PullRequest, repository_id: Option<i64>) {
    c.number = pr.number;
    c.is_pull_request = true;
    c.title = pr.title.unwrap_or_default();
    c.html_url = pr.html_url;
    let base_repo = pr.base.and_then(|b| b.repo);
    if let Some(head) = pr.head {
        c.head_sha = head.sha;
        c.head_ref = head.ref_;
        c.fork = match (head.repo, base_repo) {
            // Same repository when the ids (or, lacking them, the names) agree.
            (Some(h), Some(b)) => match (h.id, b.id) {
                (Some(h), Some(b)) => h != b,
                _ => match (h.full_name, b.full_name) {
                    (Some(h), Some(b)) => !h.eq_ignore_ascii_case(&b),
                    _ => true,
                },
            },
            (Some(h), None) => h.id.is_none() || h.id != repository_id,
            // The head repository was deleted: treat as a fork.
            (None, _) => true,
        };
    }
}

fn is_commit_id(s: &str) -> bool {
    (s.len() == 40 || s.len() == 64) && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn association(value: Option<&str>) -> AuthorAssociation {
    match value {
        Some("OWNER") => AuthorAssociation::Owner,
        Some("MEMBER") => AuthorAssociation::Member,
        Some("COLLABORATOR") => AuthorAssociation::Collaborator,
        Some("CONTRIBUTOR") => AuthorAssociation::Contributor,
        Some("FIRST_TIME_CONTRIBUTOR") => AuthorAssociation::FirstTimeContributor,
        Some("FIRST_TIMER") => AuthorAssociation::FirstTimer,
        Some("MANNEQUIN") => AuthorAssociation::Mannequin,
        _ => AuthorAssociation::None,
    }
}

fn ignored(reason: String) -> Parsed {
    Parsed::Ignored { reason }
}

/// A header or action value fit for a log line: short, no control characters.
fn printable(s: &str) -> String {
    s.chars()
        .take(64)
        .map(|c| if c.is_ascii_graphic() { c } else { '?' })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn fixture(name: &str) -> Value {
        let path = format!("{}/tests/fixtures/webhooks/{name}.json", env!("CARGO_MANIFEST_DIR"));
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
    }

    fn parse_value(event: &str, v: &Value) -> Result<Parsed, ParseError> {
        parse(event, &serde_json::to_vec(v).unwrap())
    }

    fn candidate_of(event: &str, v: &Value) -> TriggerCandidate {
        match parse_value(event, v) {
            Ok(Parsed::Candidate(c)) => *c,
            other => panic!("{event}: expected a candidate, got {other:?}"),
        }
    }

    fn codertocat() -> Actor {
        Actor {
            login: "Codertocat".into(),
            id: 21031067,
            type_: ActorType::User,
        }
    }

    #[test]
    fn issue_comment_created_on_an_issue() {
        let mut v = fixture("issue_comment.created");
        v["comment"]["body"] = json!("hey @claude, fix the typo");
        let c = candidate_of("issue_comment", &v);
        assert_eq!(
            c,
            TriggerCandidate {
                event: TriggerEvent::IssueComment,
                event_name: "issue_comment".into(),
                action: "created".into(),
                repository: "Codertocat/Hello-World".into(),
                owner: "Codertocat".into(),
                installation_id: Some(1),
                actor: codertocat(),
                author_association: AuthorAssociation::Owner,
                number: 1,
                is_pull_request: false,
                title: "Spelling error in the README file".into(),
                html_url: Some("https://github.com/Codertocat/Hello-World/issues/1".into()),
                comment_id: Some(492700400),
                comment_url: Some("https://github.com/Codertocat/Hello-World/issues/1#issuecomment-492700400".into()),
                body: "hey @claude, fix the typo".into(),
                head_sha: None,
                head_ref: None,
                fork: false,
                label: None,
                assignee: None,
                issue_updated_at: None,
                base_ref: None,
                draft: false,
            }
        );
        let t = c.trigger("d-1");
        assert_eq!(
            (t.delivery_id.as_str(), t.number, t.source),
            ("d-1", 1, TriggerSource::GitHubWebhook)
        );
    }

    #[test]
    fn issue_comment_created_on_a_pull_request() {
        // The examples hold no PR comment; GitHub marks one with `issue.pull_request`.
        let mut v = fixture("issue_comment.created");
        v["issue"]["pull_request"] = json!({
            "url": "https://api.github.com/repos/Codertocat/Hello-World/pulls/1",
            "html_url": "https://github.com/Codertocat/Hello-World/pull/1",
        });
        let c = candidate_of("issue_comment", &v);
        assert!(c.is_pull_request);
        assert_eq!((c.head_sha, c.fork), (None, false));
        // `"pull_request": null` is not a pull request.
        v["issue"]["pull_request"] = Value::Null;
        assert!(!candidate_of("issue_comment", &v).is_pull_request);
    }

    #[test]
    fn review_comment_created() {
        let c = candidate_of(
            "pull_request_review_comment",
            &fixture("pull_request_review_comment.created"),
        );
        assert_eq!(c.event, TriggerEvent::PullRequestReviewComment);
        assert_eq!(c.actor, codertocat());
        assert_eq!((c.number, c.is_pull_request), (2, true));
        assert_eq!(c.title, "Update the README with new information.");
        assert_eq!(
            c.html_url.as_deref(),
            Some("https://github.com/Codertocat/Hello-World/pull/2")
        );
        assert_eq!(c.comment_id, Some(284312630));
        assert_eq!(
            c.comment_url.as_deref(),
            Some("https://github.com/Codertocat/Hello-World/pull/2#discussion_r284312630")
        );
        assert_eq!(c.body, "Maybe you should use more emoji on this line.");
        assert_eq!(c.author_association, AuthorAssociation::Owner);
        assert_eq!(c.head_sha.as_deref(), Some("ec26c3e57ca3a959ca5aad62de7213c562f8c821"));
        assert_eq!(c.head_ref.as_deref(), Some("changes"));
        assert!(!c.fork);
        assert!(c.installation_id.is_some());
    }

    #[test]
    fn review_submitted_needs_a_body() {
        let mut v = fixture("pull_request_review.submitted");
        assert!(matches!(
            parse_value("pull_request_review", &v),
            Ok(Parsed::Ignored { .. })
        ));
        v["review"]["body"] = json!("   ");
        assert!(matches!(
            parse_value("pull_request_review", &v),
            Ok(Parsed::Ignored { .. })
        ));
        v["review"]["body"] = json!("@claude please address these");
        let c = candidate_of("pull_request_review", &v);
        assert_eq!(c.event, TriggerEvent::PullRequestReview);
        assert_eq!((c.number, c.is_pull_request), (2, true));
        assert_eq!(c.comment_id, Some(237895671));
        assert_eq!(
            c.comment_url.as_deref(),
            Some("https://github.com/Codertocat/Hello-World/pull/2#pullrequestreview-237895671")
        );
        assert_eq!(c.body, "@claude please address these");
        assert_eq!(c.head_sha.as_deref(), Some("ec26c3e57ca3a959ca5aad62de7213c562f8c821"));
        assert!(!c.fork);
    }

    #[test]
    fn fork_detection() {
        let base = fixture("pull_request_review_comment.created");
        let mut forked = base.clone();
        forked["pull_request"]["head"]["repo"]["id"] = json!(1);
        forked["pull_request"]["head"]["repo"]["full_name"] = json!("stranger/Hello-World");
        let mut gone = base.clone();
        gone["pull_request"]["head"]["repo"] = Value::Null;
        let mut no_ids = base.clone();
        no_ids["pull_request"]["head"]["repo"]["id"] = Value::Null;
        no_ids["pull_request"]["base"]["repo"]["id"] = Value::Null;
        let mut no_ids_forked = no_ids.clone();
        no_ids_forked["pull_request"]["head"]["repo"]["full_name"] = json!("stranger/Hello-World");
        for (name, v, want) in [
            ("same repository", &base, false),
            ("fork", &forked, true),
            ("head repository deleted", &gone, true),
            ("same by name", &no_ids, false),
            ("fork by name", &no_ids_forked, true),
        ] {
            assert_eq!(candidate_of("pull_request_review_comment", v).fork, want, "{name}");
        }
    }

    #[test]
    fn issues_opened_assigned_labeled() {
        let body = "It looks like you accidently spelled 'commit' with two 't's.";
        let cases = [
            ("issues.opened", TriggerEvent::IssueOpened, None, None),
            ("issues.assigned", TriggerEvent::IssueAssigned, None, Some("Codertocat")),
            ("issues.labeled", TriggerEvent::IssueLabeled, Some("bug"), None),
        ];
        for (name, event, label, assignee) in cases {
            let c = candidate_of("issues", &fixture(name));
            assert_eq!(c.event, event, "{name}");
            assert_eq!(c.event_name, "issues");
            assert_eq!(c.repository, "Codertocat/Hello-World", "{name}");
            assert_eq!((c.number, c.is_pull_request), (1, false), "{name}");
            assert_eq!(c.title, "Spelling error in the README file", "{name}");
            assert_eq!(
                c.html_url.as_deref(),
                Some("https://github.com/Codertocat/Hello-World/issues/1")
            );
            assert_eq!(c.body, body, "{name}");
            assert_eq!(c.author_association, AuthorAssociation::Owner, "{name}");
            assert_eq!((c.comment_id, c.head_sha.as_deref()), (None, None), "{name}");
            assert_eq!(c.label.as_deref(), label, "{name}");
            assert_eq!(c.assignee.as_deref(), assignee, "{name}");
            assert_eq!(c.actor.login, "Codertocat", "{name}");
        }
        let mut v = fixture("issues.assigned");
        v["assignee"] = Value::Null;
        assert_eq!(parse_value("issues", &v), Err(ParseError::Missing("assignee")));
    }

    #[test]
    fn pull_request_events_ask_for_a_review() {
        let head = "ec26c3e57ca3a959ca5aad62de7213c562f8c821";
        for (name, event) in [
            ("pull_request.opened", TriggerEvent::PullRequestOpened),
            ("pull_request.synchronize", TriggerEvent::PullRequestSynchronize),
            ("pull_request.ready_for_review", TriggerEvent::PullRequestReadyForReview),
            ("pull_request.labeled", TriggerEvent::PullRequestLabeled),
        ] {
            let c = candidate_of("pull_request", &fixture(name));
            assert_eq!(c.event, event, "{name}");
            assert!(event.is_review());
            assert!(c.is_pull_request && !c.fork && !c.draft, "{name}");
            assert_eq!((c.number, c.comment_id), (2, None), "{name}");
            assert_eq!(c.head_ref.as_deref(), Some("changes"), "{name}");
            assert_eq!(c.base_ref.as_deref(), Some("master"), "{name}");
            assert_eq!(c.actor.login, "Codertocat", "{name}");
            assert!(c.head_sha.is_some(), "{name}");
            assert_eq!(
                c.label.as_deref(),
                (event == TriggerEvent::PullRequestLabeled).then_some("bug")
            );
        }
        let mut v = fixture("pull_request.synchronize");
        assert_eq!(candidate_of("pull_request", &v).head_sha.as_deref(), Some(head));
        assert_eq!(
            candidate_of("pull_request", &v).author_association,
            AuthorAssociation::Owner
        );
        v["pull_request"]["draft"] = json!(true);
        assert!(candidate_of("pull_request", &v).draft);
        // Each push is its own review; a replay of one is the same.
        let first = candidate_of("pull_request", &v).identity();
        assert_eq!(first, candidate_of("pull_request", &v).identity());
        v["pull_request"]["head"]["sha"] = json!("1111111111111111111111111111111111111111");
        assert_ne!(first, candidate_of("pull_request", &v).identity());
        // No usable head: nothing to review.
        v["pull_request"]["head"]["sha"] = json!("HEAD");
        assert_eq!(
            parse_value("pull_request", &v),
            Err(ParseError::Invalid("pull_request.head.sha"))
        );
        // Other actions never ask for a review.
        let mut edited = fixture("pull_request.opened");
        edited["action"] = json!("edited");
        assert!(matches!(
            parse_value("pull_request", &edited),
            Ok(Parsed::Ignored { .. })
        ));
    }

    #[test]
    fn a_closed_issue_or_pull_request_names_its_thread_and_who_closed_it() {
        // The examples hold no `issues` `closed`: made from `opened` as GitHub sends it.
        let mut issue = fixture("issues.opened");
        issue["action"] = json!("closed");
        issue["issue"]["state"] = json!("closed");
        for (event, v, number) in [
            ("issues", issue, 1),
            ("pull_request", fixture("pull_request.closed"), 2),
        ] {
            let Ok(Parsed::Closed(c)) = parse_value(event, &v) else {
                panic!("{event}: not Closed");
            };
            assert_eq!(
                (c.repository.as_str(), c.number, c.actor.clone()),
                ("Codertocat/Hello-World", number, codertocat()),
                "{event}"
            );
        }
        // Other pull_request actions start nothing here.
        let mut reopened = fixture("pull_request.closed");
        reopened["action"] = json!("reopened");
        assert!(matches!(
            parse_value("pull_request", &reopened),
            Ok(Parsed::Ignored { .. })
        ));
        let mut no_thread = fixture("pull_request.closed");
        no_thread.as_object_mut().unwrap().remove("pull_request");
        assert_eq!(
            parse_value("pull_request", &no_thread),
            Err(ParseError::Missing("issue"))
        );
    }

    #[test]
    fn ignored_events_and_actions() {
        let cases = [
            ("issue_comment", "issue_comment.edited"),
            ("issue_comment", "issue_comment.deleted"),
            ("pull_request_review_comment", "pull_request_review_comment.edited"),
            ("pull_request_review", "pull_request_review.dismissed"),
            ("issues", "issues.edited"),
            ("push", "push"),
            ("star", "star.created"),
        ];
        for (event, name) in cases {
            let v = fixture(name);
            assert!(matches!(parse_value(event, &v), Ok(Parsed::Ignored { .. })), "{name}");
        }
        assert_eq!(parse_value("ping", &fixture("ping")), Ok(Parsed::Ping));
        // A handled event name on an unrelated payload: ignored by its action.
        assert!(matches!(
            parse_value("issues", &fixture("star.created")),
            Ok(Parsed::Ignored { .. })
        ));
    }

    #[test]
    fn actor_and_association_values() {
        let mut v = fixture("issue_comment.created");
        for (ty, want) in [
            ("User", Some(ActorType::User)),
            ("Bot", Some(ActorType::Bot)),
            ("Organization", Some(ActorType::Organization)),
            ("Mannequin", None),
        ] {
            v["sender"]["type"] = json!(ty);
            match parse_value("issue_comment", &v).unwrap() {
                Parsed::Candidate(c) => assert_eq!(Some(c.actor.type_), want, "{ty}"),
                Parsed::Ignored { .. } => assert_eq!(want, None, "{ty}"),
                Parsed::Ping | Parsed::Closed(_) => panic!(),
            }
        }
        v["sender"]["type"] = json!("User");
        for (value, want) in [
            (json!("MEMBER"), AuthorAssociation::Member),
            (json!("COLLABORATOR"), AuthorAssociation::Collaborator),
            (json!("FIRST_TIME_CONTRIBUTOR"), AuthorAssociation::FirstTimeContributor),
            (json!("SOMETHING_NEW"), AuthorAssociation::None),
            (json!("owner"), AuthorAssociation::None),
            (Value::Null, AuthorAssociation::None),
        ] {
            v["comment"]["author_association"] = value.clone();
            assert_eq!(candidate_of("issue_comment", &v).author_association, want, "{value}");
        }
    }

    #[test]
    fn malformed_payloads_are_errors_without_excerpts() {
        let secret_text = "SECRET-BODY-TEXT";
        let mut wrong_type = fixture("issue_comment.created");
        wrong_type["issue"]["number"] = json!(secret_text);
        let mut no_repo = fixture("issue_comment.created");
        no_repo.as_object_mut().unwrap().remove("repository");
        let mut zero = fixture("issue_comment.created");
        zero["issue"]["number"] = json!(0);
        let mut no_action = fixture("issue_comment.created");
        no_action.as_object_mut().unwrap().remove("action");

        let deep_array = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        // Nested inside a field the parser skips, so the skipping itself recurses.
        // serde_json skips unknown fields without recursing, so depth there
        // costs no stack; what is read stays within its recursion limit.
        let deep_object = format!(
            "{{\"action\":\"created\",\"zen\":{}1{}}}",
            "{\"a\":".repeat(100_000),
            "}".repeat(100_000)
        );
        let deep_in_field = format!(
            "{{\"action\":\"created\",\"zen\":{}{}}}",
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        let unclosed_deep = format!("{{\"zen\":{}", "[".repeat(100_000));
        let wrong_type = serde_json::to_vec(&wrong_type).unwrap();
        let no_repo = serde_json::to_vec(&no_repo).unwrap();
        let zero = serde_json::to_vec(&zero).unwrap();
        let no_action = serde_json::to_vec(&no_action).unwrap();
        let not_utf8 = b"{\"action\":\"created\xff\"}".to_vec();
        type Case<'a> = (&'a str, &'a [u8], fn(&ParseError) -> bool);
        let cases: Vec<Case> = vec![
            ("empty", b"", |e| *e == ParseError::Eof),
            ("not json", b"SECRET-BODY-TEXT", |e| {
                matches!(e, ParseError::Syntax { .. })
            }),
            ("truncated", b"{\"action\":\"cre", |e| *e == ParseError::Eof),
            ("array", b"[1,2]", |e| matches!(e, ParseError::Shape { .. })),
            ("wrong type", &wrong_type, |e| matches!(e, ParseError::Shape { .. })),
            ("no repository", &no_repo, |e| *e == ParseError::Missing("repository")),
            ("number zero", &zero, |e| *e == ParseError::Invalid("number")),
            ("no action", &no_action, |e| *e == ParseError::Missing("action")),
            ("not utf-8", &not_utf8, |e| *e == ParseError::NotUtf8),
            ("10,000-deep array", deep_array.as_bytes(), |e| {
                matches!(e, ParseError::Syntax { .. } | ParseError::Shape { .. })
            }),
            ("100,000-deep array in a field", deep_in_field.as_bytes(), |e| {
                *e == ParseError::Missing("repository")
            }),
            ("100,000-deep object in a field", deep_object.as_bytes(), |e| {
                *e == ParseError::Missing("repository")
            }),
            ("unclosed deep array", unclosed_deep.as_bytes(), |e| {
                *e == ParseError::Eof
            }),
        ];
        for (name, body, want) in cases {
            let err = parse("issue_comment", body).expect_err(name);
            assert!(want(&err), "{name}: {err:?}");
            assert!(!err.to_string().contains(secret_text), "{name}: {err}");
        }
    }

    #[test]
    fn serde_json_keeps_its_recursion_limit() {
        // Guards against `unbounded_depth` creeping into the build.
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        let err = serde_json::from_str::<Value>(&deep).unwrap_err();
        assert!(err.to_string().contains("recursion limit"), "{err}");
        assert!(matches!(ParseError::from(err), ParseError::Syntax { .. }));
    }

    #[test]
    fn unknown_events_are_not_parsed() {
        assert!(matches!(parse("push", b"not even json"), Ok(Parsed::Ignored { .. })));
        assert_eq!(parse("ping", b"\xff"), Ok(Parsed::Ping));
        let Ok(Parsed::Ignored { reason }) = parse("we\u{1b}ird\nevent", b"{}") else {
            panic!()
        };
        assert!(!reason.contains('\n') && !reason.contains('\u{1b}'), "{reason}");
    }

    #[test]
    fn identity_comes_from_the_body_and_tells_distinct_events_apart() {
        let base = fixture("issue_comment.created");
        let id = |event: &str, v: &Value| candidate_of(event, v).identity();
        let same = id("issue_comment", &base);
        // The exact text is a contract: e2e/demo.sh derives run names from it.
        assert_eq!(
            same,
            r#"["issue_comment","created","codertocat/hello-world",1,492700400,null,null,null]"#
        );
        // Same body, parsed again: same identity (the delivery id plays no part).
        assert_eq!(same, id("issue_comment", &base));
        // Text, title and association are not identity: an edit is ignored anyway.
        let mut v = base.clone();
        v["comment"]["body"] = json!("@claude something else");
        v["issue"]["title"] = json!("new title");
        assert_eq!(same, id("issue_comment", &v));
        // Repository names are case-insensitive on GitHub.
        let mut v = base.clone();
        v["repository"]["full_name"] = json!("CODERTOCAT/hello-world");
        assert_eq!(same, id("issue_comment", &v));
        // What does make another event.
        let changes: &[(&str, Value)] = &[
            ("comment id", json!({"comment": {"id": 492700401}})),
            ("issue number", json!({"issue": {"number": 2}})),
            ("repository", json!({"repository": {"full_name": "Codertocat/Other"}})),
        ];
        for (what, change) in changes {
            let mut v = base.clone();
            for (k, inner) in change.as_object().unwrap() {
                for (f, x) in inner.as_object().unwrap() {
                    v[k][f] = x.clone();
                }
            }
            assert_ne!(same, id("issue_comment", &v), "{what}");
        }

        let labeled = fixture("issues.labeled");
        let first = id("issues", &labeled);
        let mut other_label = labeled.clone();
        other_label["label"]["name"] = json!("claude");
        assert_ne!(first, id("issues", &other_label), "another label");
        let mut relabeled = labeled.clone();
        relabeled["issue"]["updated_at"] = json!("2019-05-15T16:00:00Z");
        assert_ne!(first, id("issues", &relabeled), "the same label added again later");

        let assigned = fixture("issues.assigned");
        let mut other = assigned.clone();
        other["assignee"]["login"] = json!("someone-else");
        assert_ne!(id("issues", &assigned), id("issues", &other), "another assignee");
        assert_ne!(id("issues", &assigned), first, "assigned is not labeled");
        // `opened` and `labeled` of the same issue are different triggers.
        assert_ne!(id("issues", &fixture("issues.opened")), first);
    }
}
