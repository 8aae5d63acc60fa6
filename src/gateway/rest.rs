//! GitHub's REST API for a run (`<gateway>/github/<path>`): the few calls a
//! run needs, forwarded to `--gateway-github-api-url` with the run's token.
//!
//! What a run may do ([`decide`]): read its own repository, open a *draft*
//! pull request from its own branch, comment on its trigger's thread and
//! edit the App's own comments there. Everything else, GraphQL included (a
//! query cannot be scoped to one repository), is refused with a 403 whose
//! message says what is allowed. Write bodies are at most 1 MiB and must not
//! carry a credential ([`super::scan`]). The pod's own `Authorization` (its
//! capability) never goes upstream.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use secrecy::ExposeSecret;

use super::meter::MeterError;
use super::server::State;
use super::{Grant, Kind, Refusal, audit, reasons, scan};
use crate::grant::GrantFacts;

/// Where the server mounts this handler.
pub const PREFIX: &str = "/github";
/// Largest request body accepted, bytes.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// The GitHub REST API when `--gateway-github-api-url` is not set.
pub const DEFAULT_API_URL: &str = "https://api.github.com";
const DEFAULT_ACCEPT: &str = "application/vnd.github+json";
const DEFAULT_API_VERSION: &str = "2022-11-28";
const USER_AGENT: &str = concat!("claude-operator-gateway/", env!("CARGO_PKG_VERSION"));
/// Whole upstream exchange, body included (file contents can be large).
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(120);
/// Response headers passed back to the pod besides the status and body.
const PASSED_HEADERS: [header::HeaderName; 3] = [header::CONTENT_TYPE, header::LINK, header::ETAG];

/// What the gateway does with one REST request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// A read (GET/HEAD) in the run's repository: forwarded as is.
    Read,
    /// `POST /repos/{o}/{r}/pulls`: forwarded once [`draft_pull_body`] accepts the body.
    CreatePull,
    /// `POST /repos/{o}/{r}/issues/{number}/comments` on the run's thread.
    Comment,
    /// `PATCH /repos/{o}/{r}/issues/comments/{id}`: forwarded once the
    /// comment, read upstream, is the App's on the run's thread ([`comment_is_the_runs`]).
    EditComment {
        /// The comment's id.
        id: u64,
    },
    /// `POST /repos/{o}/{r}/pulls/{number}/reviews` by an automatic review
    /// run, on its own pull request: forwarded once [`review_body`] accepts
    /// the body, and only once per run (claimed on the run's shared meter).
    Review,
    /// Refused.
    Refuse(Refusal),
}

impl Decision {
    fn is_write(&self) -> bool {
        matches!(
            self,
            Decision::CreatePull | Decision::Comment | Decision::EditComment { .. } | Decision::Review
        )
    }
}

fn prefixed(message: impl std::fmt::Display) -> String {
    format!("claude-operator gateway: {message}")
}

/// What a run may call, for refusal messages.
fn allowed_calls(facts: &GrantFacts) -> String {
    let repo = &facts.repository;
    let n = facts.number;
    if facts.review {
        return format!(
            "this run may only read {repo} (GET /repos/{repo}/...), post one review of #{n} \
             (POST /repos/{repo}/pulls/{n}/reviews), comment on #{n} and edit the App's comments there"
        );
    }
    format!(
        "this run may only read {repo} (GET /repos/{repo}/...), open a draft pull request from its branch \
         (POST /repos/{repo}/pulls), comment on #{n} (POST /repos/{repo}/issues/{n}/comments) and edit \
         the App's comments there (PATCH /repos/{repo}/issues/comments/{{id}})"
    )
}

fn not_allowed(facts: &GrantFacts, what: &str) -> Decision {
    Decision::Refuse(Refusal::new(
        StatusCode::FORBIDDEN,
        reasons::API_NOT_ALLOWED,
        prefixed(format!("{what} is not allowed; {}", allowed_calls(facts))),
    ))
}

fn malformed(message: &str) -> Refusal {
    Refusal::new(StatusCode::BAD_REQUEST, reasons::MALFORMED, prefixed(message))
}

/// Percent-decodes one path segment; `None` on a bad escape.
fn percent_decode(segment: &str) -> Option<Vec<u8>> {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Some(out)
}

/// The path's segments, if it is a plain API path: absolute, no empty, `.`
/// or `..` segment (also not percent-encoded, nor hidden behind an encoded
/// slash), no backslash, no control character. URL parsers and servers
/// normalise such segments, which would move a request out of the
/// repository this module checked.
fn segments(path: &str) -> Option<Vec<&str>> {
    let rest = path.strip_prefix('/')?;
    let segs: Vec<&str> = rest.split('/').collect();
    for seg in &segs {
        if seg.is_empty() || seg.contains('\\') {
            return None;
        }
        let decoded = percent_decode(seg)?;
        if decoded.iter().any(|b| b.is_ascii_control()) {
            return None;
        }
        if decoded
            .split(|b| *b == b'/' || *b == b'\\')
            .any(|part| part == b"." || part == b"..")
        {
            return None;
        }
    }
    Some(segs)
}

/// Whether `owner`/`name` (raw path segments) name the run's repository.
/// GitHub names are case-insensitive; an escaped character in either is
/// refused (a plain name has none).
fn is_runs_repository(owner: &str, name: &str, facts: &GrantFacts) -> bool {
    let Some((o, n)) = facts.repository.split_once('/') else {
        return false;
    };
    !owner.contains('%') && !name.contains('%') && owner.eq_ignore_ascii_case(o) && name.eq_ignore_ascii_case(n)
}

/// Decides a REST call: `path` is GitHub's API path (what follows
/// [`PREFIX`], without the query).
pub fn decide(method: &Method, path: &str, facts: &GrantFacts) -> Decision {
    let Some(segs) = segments(path) else {
        return Decision::Refuse(malformed("the path is not a plain GitHub API path"));
    };
    match segs.as_slice() {
        ["graphql"] => Decision::Refuse(Refusal::new(
            StatusCode::FORBIDDEN,
            reasons::API_NOT_ALLOWED,
            prefixed(format!(
                "GraphQL is not allowed (a query cannot be limited to one repository): use the REST API; {}",
                allowed_calls(facts)
            )),
        )),
        ["repos", owner, name, rest @ ..] => {
            if !is_runs_repository(owner, name, facts) {
                return Decision::Refuse(Refusal::new(
                    StatusCode::FORBIDDEN,
                    reasons::WRONG_REPOSITORY,
                    prefixed(format!("this run may only use {}", facts.repository)),
                ));
            }
            match (method, rest) {
                (m, _) if m == Method::GET || m == Method::HEAD => Decision::Read,
                (m, ["pulls"]) if m == Method::POST => Decision::CreatePull,
                (m, ["issues", n, "comments"]) if m == Method::POST => {
                    if n.parse::<u64>().ok() == Some(facts.number) {
                        Decision::Comment
                    } else {
                        not_allowed(facts, &format!("commenting on #{n}"))
                    }
                }
                (m, ["pulls", n, "reviews"]) if m == Method::POST => {
                    if !facts.review {
                        not_allowed(
                            facts,
                            "posting a pull request review (only an automatic review run may)",
                        )
                    } else if facts.is_pull_request && n.parse::<u64>().ok() == Some(facts.number) {
                        Decision::Review
                    } else {
                        not_allowed(facts, &format!("reviewing #{n}"))
                    }
                }
                (m, ["issues", "comments", id]) if m == Method::PATCH => match id.parse::<u64>() {
                    Ok(id) => Decision::EditComment { id },
                    Err(_) => Decision::Refuse(malformed("a comment id is a number")),
                },
                _ => not_allowed(facts, &format!("{method} {path}")),
            }
        }
        _ => not_allowed(facts, &format!("{method} {path}")),
    }
}

/// The body of a pull request the run may open, forced to a draft: `head`
/// must be the run's branch (`branch` or `owner:branch` with the
/// repository's owner); `base` may be any branch. Refused when the run has
/// no branch (read-only), for another head, another `head_repo`, or
/// `issue` (converting an issue changes it).
pub fn draft_pull_body(body: &[u8], facts: &GrantFacts) -> Result<Vec<u8>, Refusal> {
    let Some(branch) = facts.push_branch.as_deref() else {
        return Err(Refusal::new(
            StatusCode::FORBIDDEN,
            reasons::API_NOT_ALLOWED,
            prefixed("this run is read-only: it may not open a pull request"),
        ));
    };
    if facts.push_to_pull_request {
        return Err(Refusal::new(
            StatusCode::FORBIDDEN,
            reasons::API_NOT_ALLOWED,
            prefixed("this run pushes to its pull request's own branch: it opens no pull request"),
        ));
    }
    let (owner, name) = facts.repository.split_once('/').unwrap_or((&facts.repository, ""));
    let mut value: serde_json::Value =
        serde_json::from_slice(body).map_err(|_| malformed("a pull request body is a JSON object"))?;
    let Some(obj) = value.as_object_mut() else {
        return Err(malformed("a pull request body is a JSON object"));
    };
    let wrong_head = || {
        Refusal::new(
            StatusCode::FORBIDDEN,
            reasons::API_NOT_ALLOWED,
            prefixed(format!(
                "a pull request's head must be the run's branch {branch:?} (or \"{owner}:{branch}\")"
            )),
        )
    };
    let head = obj
        .get("head")
        .and_then(serde_json::Value::as_str)
        .ok_or_else(wrong_head)?;
    let head_ok = head == branch
        || head
            .split_once(':')
            .is_some_and(|(o, b)| o.eq_ignore_ascii_case(owner) && b == branch);
    if !head_ok {
        return Err(wrong_head());
    }
    if let Some(head_repo) = obj.get("head_repo") {
        let same = head_repo
            .as_str()
            .is_some_and(|r| r.eq_ignore_ascii_case(name) || r.eq_ignore_ascii_case(&facts.repository));
        if !same {
            return Err(wrong_head());
        }
    }
    if obj.contains_key("issue") {
        return Err(Refusal::new(
            StatusCode::FORBIDDEN,
            reasons::API_NOT_ALLOWED,
            prefixed("converting an issue into a pull request is not allowed; give a title"),
        ));
    }
    obj.insert("draft".into(), serde_json::Value::Bool(true));
    serde_json::to_vec(&value).map_err(|_| malformed("a pull request body is a JSON object"))
}

/// Most line comments one review may carry.
pub const MAX_REVIEW_COMMENTS: usize = 50;

/// The review an automatic review run may post, rebuilt from what it sent:
/// `event` `COMMENT` only (a run never approves or requests changes),
/// `commit_id` the admitted head (set when absent), a `body`, and at most
/// [`MAX_REVIEW_COMMENTS`] line comments of `path`, `line` (and optionally
/// `side`, `start_line`, `start_side`) and `body`. Anything else in the body
/// is dropped.
pub fn review_body(body: &[u8], facts: &GrantFacts) -> Result<Vec<u8>, Refusal> {
    use serde_json::{Map, Value};
    let refuse = |message: String| Refusal::new(StatusCode::FORBIDDEN, reasons::API_NOT_ALLOWED, prefixed(message));
    let shape = || malformed("a review is a JSON object with `body` and `comments` ([{path, line, body}])");
    let value: Value = serde_json::from_slice(body).map_err(|_| shape())?;
    let obj = value.as_object().ok_or_else(shape)?;
    match obj.get("event").and_then(Value::as_str) {
        None | Some("COMMENT") => {}
        Some(other) => return Err(refuse(format!("a run's review is a COMMENT, never {other}"))),
    }
    let head = facts
        .head_sha
        .as_deref()
        .ok_or_else(|| refuse("the run has no admitted head to review".into()))?;
    match obj.get("commit_id") {
        None => {}
        Some(Value::String(c)) if c == head => {}
        Some(_) => return Err(refuse(format!("a run reviews its admitted head {head} only"))),
    }
    let mut out = Map::new();
    out.insert("event".into(), "COMMENT".into());
    out.insert("commit_id".into(), head.into());
    out.insert(
        "body".into(),
        obj.get("body").and_then(Value::as_str).unwrap_or_default().into(),
    );
    let comments = match obj.get("comments") {
        None => Vec::new(),
        Some(Value::Array(items)) => items.clone(),
        Some(_) => return Err(shape()),
    };
    if comments.len() > MAX_REVIEW_COMMENTS {
        return Err(refuse(format!("a review has at most {MAX_REVIEW_COMMENTS} comments")));
    }
    let mut kept = Vec::with_capacity(comments.len());
    for c in &comments {
        let (Some(path), Some(line), Some(text)) = (
            c.get("path").and_then(Value::as_str),
            c.get("line").and_then(Value::as_u64).filter(|l| *l > 0),
            c.get("body").and_then(Value::as_str),
        ) else {
            return Err(shape());
        };
        let mut one = Map::new();
        one.insert("path".into(), path.into());
        one.insert("line".into(), line.into());
        one.insert("body".into(), text.into());
        for side in ["side", "start_side"] {
            match c.get(side).and_then(Value::as_str) {
                Some(s @ ("LEFT" | "RIGHT")) => {
                    one.insert(side.into(), s.into());
                }
                Some(_) => return Err(shape()),
                None => {}
            }
        }
        if let Some(start) = c
            .get("start_line")
            .and_then(Value::as_u64)
            .filter(|l| *l > 0 && *l < line)
        {
            one.insert("start_line".into(), start.into());
        }
        kept.push(Value::Object(one));
    }
    out.insert("comments".into(), Value::Array(kept));
    serde_json::to_vec(&Value::Object(out)).map_err(|_| shape())
}

/// Whether a comment (GitHub's JSON for it) is on the run's thread and was
/// written by a bot (the App: a run's token can only edit the App's own
/// comments or, with write access, anyone's, hence this check).
pub fn comment_is_the_runs(comment: &serde_json::Value, facts: &GrantFacts) -> bool {
    let thread = format!("/repos/{}/issues/{}", facts.repository, facts.number).to_ascii_lowercase();
    let on_thread = comment
        .get("issue_url")
        .and_then(serde_json::Value::as_str)
        .is_some_and(|u| u.to_ascii_lowercase().ends_with(&thread));
    let by_bot = comment
        .pointer("/user/type")
        .and_then(serde_json::Value::as_str)
        .is_some_and(|t| t == "Bot");
    on_thread && by_bot
}

/// The refusal as the pod sees it: GitHub-shaped JSON.
pub fn refusal_response(refusal: &Refusal) -> Response {
    let body = serde_json::json!({
        "message": refusal.message,
        "reason": refusal.reason,
        "documentation_url": "https://docs.github.com/rest",
    });
    (refusal.status, axum::Json(body)).into_response()
}

/// The capability the pod authenticated with (`Authorization: Bearer|token
/// <cap>`), to look for in what it sends.
fn pod_credential(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (_, cred) = value.split_once(' ')?;
    Some(cred.trim().to_owned())
}

/// One request's audit facts; logged once, when dropped (after the
/// response body has been sent or abandoned).
struct AuditLine {
    run: String,
    target: String,
    method: String,
    status: u16,
    bytes_in: u64,
    bytes_out: u64,
    reason: &'static str,
}

impl Drop for AuditLine {
    fn drop(&mut self) {
        audit::log(&audit::Record {
            run: std::mem::take(&mut self.run),
            kind: Some(Kind::GitHub),
            target: std::mem::take(&mut self.target),
            method: &self.method,
            status: self.status,
            bytes_in: self.bytes_in,
            bytes_out: self.bytes_out,
            tokens: 0,
            cost_micros: 0,
            allowed: self.reason.is_empty(),
            reason: self.reason,
        });
    }
}

impl AuditLine {
    fn refuse(mut self, refusal: &Refusal) -> Response {
        self.status = refusal.status.as_u16();
        self.reason = refusal.reason;
        refusal_response(refusal)
    }
}

/// Reads the body, at most [`MAX_BODY_BYTES`].
async fn read_body(headers: &HeaderMap, body: Body) -> Result<bytes::Bytes, Refusal> {
    let too_large = || {
        Refusal::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            reasons::TOO_LARGE,
            prefixed(format!("request bodies are at most {MAX_BODY_BYTES} bytes")),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return Err(too_large());
    }
    match Limited::new(body, MAX_BODY_BYTES).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => Err(too_large()),
        Err(_) => Err(malformed("the request body could not be read")),
    }
}

fn api_base(state: &State) -> &str {
    state
        .args
        .gateway_github_api_url
        .as_deref()
        .unwrap_or(DEFAULT_API_URL)
        .trim_end_matches('/')
}

/// A request to the GitHub API with the run's token and GitHub's headers.
fn upstream(state: &State, grant: &Grant, method: Method, url: &str, pod: &HeaderMap) -> reqwest::RequestBuilder {
    let mut token = HeaderValue::from_str(&format!("token {}", grant.github_token.expose_secret()))
        // A token that is not a header value cannot authenticate anyway;
        // an empty header fails upstream rather than here.
        .unwrap_or_else(|_| HeaderValue::from_static(""));
    token.set_sensitive(true);
    let pick = |name: &str, default: &'static str| {
        pod.get(name)
            .cloned()
            .unwrap_or_else(|| HeaderValue::from_static(default))
    };
    state
        .http
        .request(method, url)
        .timeout(UPSTREAM_TIMEOUT)
        .header(header::AUTHORIZATION, token)
        .header(header::ACCEPT, pick("accept", DEFAULT_ACCEPT))
        .header(
            "x-github-api-version",
            pick("x-github-api-version", DEFAULT_API_VERSION),
        )
        .header(header::USER_AGENT, USER_AGENT)
}

fn upstream_error() -> Refusal {
    Refusal::new(
        StatusCode::BAD_GATEWAY,
        reasons::UPSTREAM_ERROR,
        prefixed("GitHub could not be reached"),
    )
}

/// Checks upstream that comment `id` is the App's on the run's thread.
async fn check_comment(state: &State, grant: &Grant, id: u64) -> Result<(), Refusal> {
    let url = format!(
        "{}/repos/{}/issues/comments/{id}",
        api_base(state),
        grant.facts.repository
    );
    // GitHub's default headers, not the pod's: the answer must be JSON.
    let resp = upstream(state, grant, Method::GET, &url, &HeaderMap::new())
        .send()
        .await
        .map_err(|_| upstream_error())?;
    let refused = || {
        Refusal::new(
            StatusCode::FORBIDDEN,
            reasons::API_NOT_ALLOWED,
            prefixed(format!(
                "only the App's own comments on #{} may be edited",
                grant.facts.number
            )),
        )
    };
    if !resp.status().is_success() {
        return Err(refused());
    }
    let body = resp.bytes().await.map_err(|_| upstream_error())?;
    let comment: serde_json::Value = serde_json::from_slice(&body).map_err(|_| upstream_error())?;
    if comment_is_the_runs(&comment, &grant.facts) {
        Ok(())
    } else {
        Err(refused())
    }
}

/// Serves one `/github/...` request for the run of `grant`.
pub async fn handle(state: Arc<State>, grant: Arc<Grant>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let api_path = parts.uri.path().strip_prefix(PREFIX).unwrap_or("").to_owned();
    let mut line = AuditLine {
        run: format!("{}/{}", grant.facts.namespace, grant.facts.run),
        target: format!("{} {api_path}", parts.method),
        method: parts.method.to_string(),
        status: 0,
        bytes_in: 0,
        bytes_out: 0,
        reason: "",
    };
    let decision = decide(&parts.method, &api_path, &grant.facts);
    if let Decision::Refuse(refusal) = &decision {
        return line.refuse(refusal);
    }
    let mut body = match read_body(&parts.headers, body).await {
        Ok(b) => b,
        Err(refusal) => return line.refuse(&refusal),
    };
    line.bytes_in = body.len() as u64;

    if decision.is_write() {
        let capability = pod_credential(&parts.headers).unwrap_or_default();
        let token = grant.github_token.expose_secret();
        if let Some(kind) = scan::find_credential(&body, &[token, &capability]) {
            let refusal = Refusal::new(
                StatusCode::FORBIDDEN,
                reasons::CREDENTIAL_IN_CONTENT,
                prefixed(format!("the request body carries a credential ({kind})")),
            );
            return line.refuse(&refusal);
        }
    }
    match decision {
        Decision::CreatePull => match draft_pull_body(&body, &grant.facts) {
            Ok(rewritten) => body = rewritten.into(),
            Err(refusal) => return line.refuse(&refusal),
        },
        Decision::EditComment { id } => {
            if let Err(refusal) = check_comment(&state, &grant, id).await {
                return line.refuse(&refusal);
            }
        }
        Decision::Review => {
            match review_body(&body, &grant.facts) {
                Ok(rewritten) => body = rewritten.into(),
                Err(refusal) => return line.refuse(&refusal),
            }
            // One review per run, whichever replica serves it: claimed on
            // the run's shared meter before it is forwarded, and never given
            // back (GitHub may have posted a review whose answer was lost).
            let refusal = match state.meter.claim_review(&grant, &state.replica).await {
                Ok(true) => None,
                Ok(false) => Some(Refusal::new(
                    StatusCode::FORBIDDEN,
                    reasons::API_NOT_ALLOWED,
                    prefixed("this run has posted its review already"),
                )),
                Err(MeterError::Closed) => Some(Refusal::new(
                    StatusCode::FORBIDDEN,
                    reasons::RUN_ENDED,
                    prefixed("this run has ended"),
                )),
                Err(err) => {
                    tracing::warn!(run = %line.run, error = %err, "claiming the run's review failed");
                    Some(Refusal::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        reasons::NOT_READY,
                        prefixed("the run's review could not be claimed; try again"),
                    ))
                }
            };
            if let Some(refusal) = refusal {
                return line.refuse(&refusal);
            }
        }
        _ => {}
    }

    let mut url = format!("{}{api_path}", api_base(&state));
    if let Some(query) = parts.uri.query() {
        url.push('?');
        url.push_str(query);
    }
    let mut request = upstream(&state, &grant, parts.method.clone(), &url, &parts.headers);
    if decision.is_write() {
        let content_type = parts
            .headers
            .get(header::CONTENT_TYPE)
            .cloned()
            .unwrap_or_else(|| HeaderValue::from_static("application/json"));
        request = request.header(header::CONTENT_TYPE, content_type).body(body);
    }
    let resp = match request.send().await {
        Ok(resp) => resp,
        Err(_) => return line.refuse(&upstream_error()),
    };

    line.status = resp.status().as_u16();
    let mut builder = Response::builder().status(resp.status());
    for name in PASSED_HEADERS {
        if let Some(v) = resp.headers().get(&name) {
            builder = builder.header(name, v.clone());
        }
    }
    // The audit line goes with the body stream: logged when the body is
    // done (or dropped), with the bytes really sent.
    let stream = resp.bytes_stream().map(move |chunk| {
        // The whole line, not just its counter (a closure would capture a
        // copy of the field and log too early).
        let line = &mut line;
        if let Ok(bytes) = &chunk {
            line.bytes_out += bytes.len() as u64;
        }
        chunk
    });
    builder
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::BAD_GATEWAY.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    // The gateway tests' one grant fixture.
    use crate::gateway::registry::tests::facts;

    fn kind(d: &Decision) -> String {
        match d {
            Decision::Refuse(r) => format!("refuse {} {}", r.status.as_u16(), r.reason),
            other => format!("{other:?}"),
        }
    }

    #[test]
    fn decide_allows_only_the_runs_calls() {
        let f = facts();
        let table: &[(&str, &str, &str)] = &[
            // Reads of the run's repository.
            ("GET", "/repos/acme/widgets", "Read"),
            ("GET", "/repos/ACME/Widgets/issues/7", "Read"),
            ("HEAD", "/repos/acme/widgets/contents/src/lib.rs", "Read"),
            ("GET", "/repos/acme/widgets/branches/claude%2Fgh-1", "Read"),
            ("GET", "/repos/acme/widgets/pulls/3/files", "Read"),
            // The writes a run makes.
            ("POST", "/repos/acme/widgets/pulls", "CreatePull"),
            ("POST", "/repos/acme/widgets/issues/7/comments", "Comment"),
            (
                "PATCH",
                "/repos/acme/widgets/issues/comments/991",
                "EditComment { id: 991 }",
            ),
            // Other repositories.
            ("GET", "/repos/acme/other", "refuse 403 WrongRepository"),
            ("POST", "/repos/evil/widgets/pulls", "refuse 403 WrongRepository"),
            (
                "POST",
                "/repos/acme/widgets-2/issues/7/comments",
                "refuse 403 WrongRepository",
            ),
            ("GET", "/repos/acme/%77idgets", "refuse 403 WrongRepository"),
            // Other threads and other writes.
            (
                "POST",
                "/repos/acme/widgets/issues/8/comments",
                "refuse 403 ApiNotAllowed",
            ),
            (
                "POST",
                "/repos/acme/widgets/issues/07x/comments",
                "refuse 403 ApiNotAllowed",
            ),
            ("DELETE", "/repos/acme/widgets", "refuse 403 ApiNotAllowed"),
            ("PATCH", "/repos/acme/widgets", "refuse 403 ApiNotAllowed"),
            (
                "DELETE",
                "/repos/acme/widgets/issues/comments/991",
                "refuse 403 ApiNotAllowed",
            ),
            (
                "PUT",
                "/repos/acme/widgets/contents/README.md",
                "refuse 403 ApiNotAllowed",
            ),
            ("POST", "/repos/acme/widgets/git/refs", "refuse 403 ApiNotAllowed"),
            (
                "POST",
                "/repos/acme/widgets/pulls/3/reviews",
                "refuse 403 ApiNotAllowed",
            ),
            ("PUT", "/repos/acme/widgets/pulls/3/merge", "refuse 403 ApiNotAllowed"),
            ("POST", "/repos/acme/widgets/hooks", "refuse 403 ApiNotAllowed"),
            (
                "PATCH",
                "/repos/acme/widgets/issues/comments/abc",
                "refuse 400 Malformed",
            ),
            // Outside any repository.
            ("POST", "/graphql", "refuse 403 ApiNotAllowed"),
            ("GET", "/user", "refuse 403 ApiNotAllowed"),
            ("GET", "/installation/repositories", "refuse 403 ApiNotAllowed"),
            ("POST", "/user/repos", "refuse 403 ApiNotAllowed"),
            ("GET", "/", "refuse 400 Malformed"),
            // Paths a URL parser or server would normalise elsewhere.
            ("GET", "/repos/acme/widgets/../../other/repo", "refuse 400 Malformed"),
            (
                "GET",
                "/repos/acme/widgets/%2e%2e/%2E%2E/other/repo",
                "refuse 400 Malformed",
            ),
            ("GET", "/repos/acme/widgets/a%2F..%2F..%2Fother", "refuse 400 Malformed"),
            ("GET", "/repos/acme/widgets/./issues", "refuse 400 Malformed"),
            ("GET", "/repos/acme//widgets", "refuse 400 Malformed"),
            ("GET", "/repos/acme/widgets\\..\\x", "refuse 400 Malformed"),
            ("GET", "/repos/acme/widgets/%zz", "refuse 400 Malformed"),
            ("GET", "/repos/acme/widgets/%0a", "refuse 400 Malformed"),
            ("GET", "repos/acme/widgets", "refuse 400 Malformed"),
            ("GET", "", "refuse 400 Malformed"),
        ];
        for (method, path, want) in table {
            let m = Method::from_bytes(method.as_bytes()).unwrap();
            assert_eq!(kind(&decide(&m, path, &f)), *want, "{method} {path}");
        }
    }

    #[test]
    fn refusals_say_what_is_allowed() {
        let Decision::Refuse(r) = decide(&Method::DELETE, "/repos/acme/widgets", &facts()) else {
            panic!("allowed")
        };
        assert!(r.message.starts_with("claude-operator gateway: "), "{}", r.message);
        assert!(
            r.message.contains("POST /repos/acme/widgets/issues/7/comments"),
            "{}",
            r.message
        );
        let Decision::Refuse(r) = decide(&Method::POST, "/graphql", &facts()) else {
            panic!("allowed")
        };
        assert!(r.message.contains("REST"), "{}", r.message);
    }

    #[test]
    fn pull_requests_come_from_the_runs_branch_and_are_drafts() {
        let f = facts();
        let ok: &[&str] = &[
            r#"{"title":"t","head":"claude/gh-1","base":"main"}"#,
            r#"{"title":"t","head":"acme:claude/gh-1","base":"release","draft":false}"#,
            r#"{"title":"t","head":"ACME:claude/gh-1","base":"main","head_repo":"widgets"}"#,
        ];
        for body in ok {
            let out = draft_pull_body(body.as_bytes(), &f).unwrap_or_else(|r| panic!("{body}: {r:?}"));
            let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
            assert_eq!(v["draft"], true, "{body}");
            assert_eq!(v["title"], "t");
        }
        let refused: &[(&str, &str)] = &[
            (r#"{"title":"t","head":"main","base":"main"}"#, "ApiNotAllowed"),
            (
                r#"{"title":"t","head":"evil:claude/gh-1","base":"main"}"#,
                "ApiNotAllowed",
            ),
            (r#"{"title":"t","head":"claude/gh-2","base":"main"}"#, "ApiNotAllowed"),
            (r#"{"title":"t","base":"main"}"#, "ApiNotAllowed"),
            (r#"{"title":"t","head":7,"base":"main"}"#, "ApiNotAllowed"),
            (
                r#"{"head":"claude/gh-1","base":"main","head_repo":"other"}"#,
                "ApiNotAllowed",
            ),
            (r#"{"head":"claude/gh-1","base":"main","issue":7}"#, "ApiNotAllowed"),
            (r#"["head"]"#, "Malformed"),
            ("not json", "Malformed"),
        ];
        for (body, reason) in refused {
            let r = draft_pull_body(body.as_bytes(), &f).expect_err(body);
            assert_eq!(r.reason, *reason, "{body}");
        }
        let read_only = GrantFacts {
            push_branch: None,
            ..facts()
        };
        let r = draft_pull_body(br#"{"head":"claude/gh-1","base":"main"}"#, &read_only).unwrap_err();
        assert!(r.message.contains("read-only"), "{}", r.message);
    }

    #[test]
    fn only_a_review_run_reviews_and_only_its_own_pull_request() {
        let head = "0123456789abcdef0123456789abcdef01234567";
        let review = GrantFacts {
            review: true,
            is_pull_request: true,
            head_sha: Some(head.into()),
            push_branch: None,
            ..facts()
        };
        let post = Method::POST;
        assert_eq!(
            decide(&post, "/repos/acme/widgets/pulls/7/reviews", &review),
            Decision::Review
        );
        for path in [
            "/repos/acme/widgets/pulls/8/reviews",
            "/repos/acme/widgets/pulls/x/reviews",
        ] {
            assert_eq!(
                kind(&decide(&post, path, &review)),
                "refuse 403 ApiNotAllowed",
                "{path}"
            );
        }
        // A task run posts no review.
        let task = decide(&post, "/repos/acme/widgets/pulls/7/reviews", &facts());
        assert_eq!(kind(&task), "refuse 403 ApiNotAllowed");
        let Decision::Refuse(r) = decide(&Method::DELETE, "/repos/acme/widgets", &review) else {
            panic!("allowed")
        };
        assert!(r.message.contains("post one review of #7"), "{}", r.message);

        // The body is rebuilt: COMMENT at the admitted head, the comments' fields only.
        let out = review_body(
            br#"{"body": "b", "comments": [{"path": "a.rs", "line": 3, "body": "c", "side": "RIGHT", "position": 9, "extra": 1}], "x": 2}"#,
            &review,
        )
        .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"event": "COMMENT", "commit_id": head, "body": "b",
                "comments": [{"path": "a.rs", "line": 3, "body": "c", "side": "RIGHT"}]})
        );
        let refused: &[(&str, &str)] = &[
            (r#"{"body": "b", "event": "APPROVE"}"#, "never APPROVE"),
            (r#"{"body": "b", "event": "REQUEST_CHANGES"}"#, "never REQUEST_CHANGES"),
            (
                r#"{"body": "b", "commit_id": "1111111111111111111111111111111111111111"}"#,
                "admitted head",
            ),
            (
                r#"{"body": "b", "comments": [{"path": "a.rs", "body": "no line"}]}"#,
                "JSON object",
            ),
            (
                r#"{"body": "b", "comments": [{"path": "a.rs", "line": 1, "body": "c", "side": "UP"}]}"#,
                "JSON object",
            ),
            (r#"{"body": "b", "comments": {}}"#, "JSON object"),
            ("[]", "JSON object"),
        ];
        for (body, text) in refused {
            let r = review_body(body.as_bytes(), &review).expect_err(body);
            assert!(r.message.contains(text), "{body}: {}", r.message);
        }
        let many: Vec<_> = (1..=51)
            .map(|i| serde_json::json!({"path": "a", "line": i, "body": "c"}))
            .collect();
        let body = serde_json::to_vec(&serde_json::json!({"body": "b", "comments": many})).unwrap();
        assert!(review_body(&body, &review).unwrap_err().message.contains("at most 50"));
    }

    #[test]
    fn a_run_on_its_pull_request_s_branch_opens_no_pull_request() {
        let f = GrantFacts {
            push_branch: Some("feature".into()),
            push_to_pull_request: true,
            ..facts()
        };
        let r = draft_pull_body(br#"{"title":"t","head":"feature","base":"main"}"#, &f).unwrap_err();
        assert_eq!(r.reason, reasons::API_NOT_ALLOWED);
        assert!(r.message.contains("opens no pull request"), "{}", r.message);
    }

    #[test]
    fn only_the_apps_comments_on_the_runs_thread_may_be_edited() {
        let f = facts();
        let comment = |issue_url: &str, user_type: &str| serde_json::json!({"id": 1, "issue_url": issue_url, "user": {"login": "x", "type": user_type}});
        let api = "https://api.github.com";
        let cases = [
            (comment(&format!("{api}/repos/acme/widgets/issues/7"), "Bot"), true),
            (comment(&format!("{api}/repos/Acme/Widgets/issues/7"), "Bot"), true),
            (comment(&format!("{api}/repos/acme/widgets/issues/7"), "User"), false),
            (comment(&format!("{api}/repos/acme/widgets/issues/8"), "Bot"), false),
            (comment(&format!("{api}/repos/acme/widgets/issues/77"), "Bot"), false),
            (comment(&format!("{api}/repos/xacme/widgets/issues/7"), "Bot"), false),
            (comment(&format!("{api}/repos/other/widgets/issues/7"), "Bot"), false),
            (serde_json::json!({"user": {"type": "Bot"}}), false),
            (
                serde_json::json!({"issue_url": format!("{api}/repos/acme/widgets/issues/7")}),
                false,
            ),
        ];
        for (c, want) in cases {
            assert_eq!(comment_is_the_runs(&c, &f), want, "{c}");
        }
    }
}
