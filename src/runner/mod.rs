//! `claude-operator runner`: the wrapper around the Claude Code CLI inside the
//! runner pod.
//!
//! One run: read the capability and prompt from their files, clone the
//! repository through the gateway (and check out the pull request's admitted
//! head), run `claude -p` isolated from the repository's own configuration
//! with the prompt on standard input and the gateway as its only way out,
//! commit and push what Claude changed to `claude/<run>` or, when the policy
//! says so, the pull request's own branch (never for a fork),
//! open a draft pull request or comment through the gateway, and write the
//! [`RunReport`] to the termination log. The pod holds no credential: the
//! capability is only good at the gateway, for this run. See `docs/runner.md`.

pub mod claude;
pub mod git;
pub mod github;
pub mod termination;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use secrecy::SecretString;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::{Instrument, error, info, warn};

use crate::cli::RunnerArgs;
use crate::report::RunReport;

/// Outcomes of the wrapper's own failures (Claude Code's are its subtypes).
pub mod outcome {
    pub const SUCCESS: &str = "success";
    pub const ERROR_DURING_EXECUTION: &str = "error_during_execution";
    pub const ERROR_SETUP: &str = "error_setup";
    pub const ERROR_CLONE: &str = "error_clone";
    pub const ERROR_PUSH: &str = "error_push";
    /// Claude's work is done (and pushed), but the comment or pull request
    /// could not be created.
    pub const ERROR_COMMENT: &str = "error_comment";
}

/// Longest comment the runner posts (GitHub accepts 65,536 characters).
const MAX_COMMENT_CHARS: usize = 60_000;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid argument --{flag}: {reason}")]
    InvalidArgument { flag: &'static str, reason: &'static str },
    #[error("could not read {path}: {source}")]
    ReadSecret {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is empty")]
    EmptySecret { path: PathBuf },
    #[error("could not run {bin}: {source}")]
    SpawnClaude {
        bin: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Git(#[from] git::GitError),
    #[error(transparent)]
    Access(#[from] claude::AccessError),
    #[error(transparent)]
    Github(#[from] github::GithubError),
}

/// Runs the wrapper; the exit code is zero only when the outcome is
/// `success`. The report is written in every case.
pub async fn run(args: RunnerArgs) -> ExitCode {
    let span = tracing::info_span!("runner", run = %args.run_name, repository = %args.repository, number = args.number);
    let report = execute(&args).instrument(span).await;
    let json = match termination::write(&args.termination_log, &report).await {
        Ok(json) => json,
        Err(e) => {
            error!(path = %args.termination_log.display(), error = %e, "could not write the termination log");
            termination::to_json(&report)
        }
    };
    println!("{json}");
    if report.outcome == outcome::SUCCESS {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// How long the runner waits for its way out before the first clone.
const GATEWAY_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Whether the gateway at `url` accepts a TCP connection within `within`,
/// trying every 200 ms. A pod's network is programmed by agents on its node
/// (the NetworkPolicy agent allowing its egress to the gateway, kube-proxy's
/// Service rules) a moment after its container may start: on a real node the
/// first connection can be refused by that race, so the clone waits for it.
async fn gateway_accepts(url: &str, within: std::time::Duration) -> bool {
    let Some(address) = reqwest::Url::parse(url)
        .ok()
        .and_then(|u| Some(format!("{}:{}", u.host_str()?, u.port_or_known_default()?)))
    else {
        return false;
    };
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let attempt = tokio::time::timeout(
            std::time::Duration::from_secs(1),
            tokio::net::TcpStream::connect(&address),
        );
        if matches!(attempt.await, Ok(Ok(_))) {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

fn failed(outcome: &str, error: &dyn std::fmt::Display) -> RunReport {
    error!(outcome, %error, "run failed");
    RunReport {
        outcome: outcome.to_owned(),
        result: Some(error.to_string()),
        ..RunReport::default()
    }
}

async fn execute(args: &RunnerArgs) -> RunReport {
    if let Err(e) = validate(args) {
        return failed(outcome::ERROR_SETUP, &e);
    }
    let secrets = match Secrets::read(args).await {
        Ok(s) => s,
        Err(e) => return failed(outcome::ERROR_SETUP, &e),
    };
    let name = args.repository.split_once('/').map_or("repo", |(_, name)| name);
    let clone = args.workspace.join(name);
    let remote = git::Remote::new(&secrets.access.url, &args.repository, &args.capability_file);
    let pull_request = args.pull_request.then_some(args.number);
    if !gateway_accepts(&secrets.access.url, GATEWAY_WAIT).await {
        warn!(within = ?GATEWAY_WAIT, "the gateway accepts no connection yet; cloning anyway");
    }
    if let Err(e) = remote.clone(&clone, pull_request, args.head_sha.as_deref()).await {
        return failed(outcome::ERROR_CLONE, &e);
    }
    info!(dir = %clone.display(), "cloned");
    let prepared = async {
        let start = remote.head(&clone).await?;
        let config = git::SavedConfig::save(&clone).await?;
        Ok::<_, Error>((start, config))
    };
    let (start, config) = match prepared.await {
        Ok(p) => p,
        Err(e) => return failed(outcome::ERROR_SETUP, &e),
    };

    let claude = match run_claude(args, &clone, &secrets).await {
        Ok(c) => c,
        Err(e) => return failed(outcome::ERROR_SETUP, &e),
    };
    info!(outcome = %claude.subtype, cost = ?claude.total_cost_usd, turns = claude.num_turns, "claude finished");
    let mut report = RunReport {
        outcome: claude.subtype.clone(),
        total_cost_usd: claude.total_cost_usd.clone(),
        usage: claude.usage.clone(),
        num_turns: claude.num_turns,
        duration_ms: claude.duration_ms,
        session_id: claude.session_id.clone(),
        url: None,
        result: claude.text.clone(),
    };

    // Whatever Claude wrote into the repository's configuration goes.
    if let Err(e) = config.restore().await {
        report.outcome = outcome::ERROR_PUSH.into();
        report.result = Some(e.to_string());
        return report;
    }
    let changed = match remote.has_changes(&clone, &start).await {
        Ok(changed) => changed,
        Err(e) => {
            warn!(error = %e, "could not tell whether Claude changed anything");
            false
        }
    };
    if args.review {
        if changed {
            info!("an automatic review pushes nothing; Claude's changes are dropped");
        }
        match post_review(args, &secrets, &claude).await {
            Ok(url) => report.url = url,
            Err(e) => {
                warn!(error = %e, "could not post the review");
                if report.outcome == outcome::SUCCESS {
                    report.outcome = outcome::ERROR_COMMENT.into();
                }
            }
        }
        return report;
    }
    let mut pushed = None;
    if changed && args.fork {
        info!("changes from a fork's pull request are not pushed");
    } else if changed {
        let message = format!("Changes by Claude for #{}\n\nClaudeRun: {}", args.number, args.run_name);
        let branch = push_branch(args);
        let result = async {
            remote.commit_all(&clone, &message).await?;
            remote.push(&clone, &branch).await
        };
        match result.await {
            Ok(branch) => {
                info!(%branch, "pushed");
                pushed = Some(branch);
            }
            Err(e) => {
                error!(error = %e, "push failed");
                report.outcome = outcome::ERROR_PUSH.into();
                report.result = Some(e.to_string());
                return report;
            }
        }
    }

    match publish(args, &remote, &clone, &secrets, &claude, pushed.as_deref(), changed).await {
        Ok(url) => report.url = url,
        Err(e) => {
            warn!(error = %e, "could not comment on GitHub");
            if report.outcome == outcome::SUCCESS {
                report.outcome = outcome::ERROR_COMMENT.into();
            }
        }
    }
    report
}

/// The flags that end up in a command line or a ref are checked first.
fn validate(args: &RunnerArgs) -> Result<(), Error> {
    let invalid = |flag, reason| Err(Error::InvalidArgument { flag, reason });
    let part_ok = |p: &str| {
        !p.is_empty() && p != "." && p != ".." && p.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    };
    match args.repository.split_once('/') {
        Some((owner, name)) if part_ok(owner) && part_ok(name) => {}
        _ => return invalid("repository", "must be owner/name"),
    }
    let run = &args.run_name;
    let run_ok = !run.is_empty()
        && run.len() <= 253
        && run
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-.".contains(&b))
        && !run.starts_with(['.', '-'])
        && !run.ends_with(['.', '-'])
        && !run.contains("..")
        && !run.ends_with(".lock");
    if !run_ok {
        return invalid("run-name", "must be a Kubernetes object name");
    }
    if claude::plain_decimal(&args.max_budget_usd).is_none() || args.max_budget_usd.starts_with('-') {
        return invalid("max-budget-usd", "must be a positive decimal number");
    }
    if args.model.is_empty() || args.model.starts_with('-') || args.model.contains(char::is_whitespace) {
        return invalid("model", "must be a model name");
    }
    if args
        .push_branch
        .as_deref()
        .is_some_and(|b| !crate::sandbox::is_branch_name(b))
    {
        return invalid("push-branch", "must be a branch name");
    }
    if let Some(sha) = &args.head_sha {
        let hex = sha.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !(hex && (sha.len() == 40 || sha.len() == 64)) {
            return invalid("head-sha", "must be a full lower-case commit id");
        }
    }
    Ok(())
}

/// The branch the run pushes to: the one its grant allows (`--push-branch`),
/// else `claude/<run>`.
fn push_branch(args: &RunnerArgs) -> String {
    args.push_branch
        .clone()
        .unwrap_or_else(|| crate::sandbox::push_branch(&args.run_name))
}

/// The capability (with the gateway it is good at) and the prompt, read
/// once from their files.
struct Secrets {
    access: claude::GatewayAccess,
    prompt: Vec<u8>,
}

impl Secrets {
    async fn read(args: &RunnerArgs) -> Result<Self, Error> {
        let capability = read_trimmed(&args.capability_file).await?;
        let access = claude::GatewayAccess::new(&args.gateway_url, capability)?;
        let prompt = tokio::fs::read(&args.prompt_file)
            .await
            .map_err(|source| Error::ReadSecret {
                path: args.prompt_file.clone(),
                source,
            })?;
        if prompt.iter().all(u8::is_ascii_whitespace) {
            return Err(Error::EmptySecret {
                path: args.prompt_file.clone(),
            });
        }
        Ok(Secrets { access, prompt })
    }
}

async fn read_trimmed(path: &Path) -> Result<SecretString, Error> {
    let text = tokio::fs::read_to_string(path)
        .await
        .map_err(|source| Error::ReadSecret {
            path: path.to_owned(),
            source,
        })?;
    let text = text.trim();
    if text.is_empty() {
        return Err(Error::EmptySecret { path: path.to_owned() });
    }
    Ok(SecretString::from(text.to_owned()))
}

/// Runs Claude Code with the prompt on standard input and reads its result.
async fn run_claude(args: &RunnerArgs, clone: &Path, secrets: &Secrets) -> Result<claude::ClaudeResult, Error> {
    let mut child = claude::command(args, clone, &secrets.access)
        .spawn()
        .map_err(|source| Error::SpawnClaude {
            bin: args.claude_bin.clone(),
            source,
        })?;
    let mut stdin = child.stdin.take().expect("stdin is piped");
    let prompt = secrets.prompt.clone();
    let writer = tokio::spawn(async move {
        // Claude Code may exit before reading it all; that shows in its result.
        let _ = stdin.write_all(&prompt).await;
        let _ = stdin.shutdown().await;
    });
    let mut stdout = Vec::new();
    let mut out = child.stdout.take().expect("stdout is piped");
    let read = out.read_to_end(&mut stdout).await;
    let status = child.wait().await.map_err(|source| Error::SpawnClaude {
        bin: args.claude_bin.clone(),
        source,
    })?;
    let _ = writer.await;
    if let Err(e) = read {
        warn!(error = %e, "could not read Claude Code's output");
    }
    let stdout = String::from_utf8_lossy(&stdout);
    Ok(claude::parse_output(&stdout, &args.model).unwrap_or_else(|| {
        warn!(%status, "Claude Code gave no result");
        claude::ClaudeResult {
            subtype: outcome::ERROR_DURING_EXECUTION.into(),
            is_error: true,
            text: Some(format!("Claude Code exited ({status}) without a result")),
            ..Default::default()
        }
    }))
}

/// Posts Claude's review of the pull request, as one review at the admitted
/// head; an answer that is not a finished review becomes the summary.
async fn post_review(
    args: &RunnerArgs,
    secrets: &Secrets,
    claude: &claude::ClaudeResult,
) -> Result<Option<String>, Error> {
    let head = args.head_sha.as_deref().ok_or(Error::InvalidArgument {
        flag: "head-sha",
        reason: "a review needs the admitted head",
    })?;
    let mut review = match (&claude.text, claude.subtype.as_str()) {
        (Some(text), outcome::SUCCESS) => github::Review::from_answer(text),
        (text, subtype) => github::Review {
            body: format!(
                "Claude Code stopped ({subtype}): {}",
                text.as_deref().unwrap_or("no details")
            ),
            comments: vec![],
        },
    };
    if review.body.trim().is_empty() {
        // GitHub refuses a COMMENT review without a body.
        review.body = "Claude reviewed this pull request.".into();
    }
    review.body = limit(&review.body);
    for c in &mut review.comments {
        c.body = limit(&c.body);
    }
    let api_url = format!("{}/github", secrets.access.url);
    let api = github::Github::new(&api_url, &args.repository, &secrets.access.capability)?;
    Ok(api.review(args.number, head, &review).await?)
}

/// Tells the issue or pull request what happened: a draft pull request for
/// work pushed from an issue, a comment otherwise. Returns the URL.
async fn publish(
    args: &RunnerArgs,
    remote: &git::Remote,
    clone: &Path,
    secrets: &Secrets,
    claude: &claude::ClaudeResult,
    pushed: Option<&str>,
    changed: bool,
) -> Result<Option<String>, github::GithubError> {
    let api_url = format!("{}/github", secrets.access.url);
    let api = github::Github::new(&api_url, &args.repository, &secrets.access.capability)?;
    let mut body = match (&claude.text, claude.subtype.as_str()) {
        (Some(text), outcome::SUCCESS) => text.clone(),
        (text, subtype) => format!(
            "Claude Code stopped ({subtype}): {}",
            text.as_deref().unwrap_or("no details")
        ),
    };
    if let Some(branch) = pushed {
        if !args.pull_request
            && let Some(base) = remote.default_branch(clone).await
        {
            let title = format!("Claude: changes for #{}", args.number);
            let body = limit(&format!("{body}\n\nFor #{}.", args.number));
            return api.draft_pull_request(&title, branch, &base, &body).await;
        }
        if args.pull_request
            && args.push_branch.as_deref() == Some(branch)
            && branch != crate::sandbox::push_branch(&args.run_name)
        {
            body.push_str(&format!("\n\nChanges pushed to this pull request's branch `{branch}`."));
        } else {
            body.push_str(&format!("\n\nChanges pushed to branch `{branch}`."));
        }
    } else if changed && args.fork {
        body.push_str("\n\nClaude changed files, but nothing is pushed for a pull request from a fork.");
    }
    api.comment(args.number, &limit(&body)).await
}

fn limit(text: &str) -> String {
    match text.char_indices().nth(MAX_COMMENT_CHARS) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn waits_for_a_gateway_that_starts_listening_late() {
        // A free port, listened on only after a while.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let late = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(600)).await;
            let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap();
            let _ = listener.accept().await;
        });
        assert!(gateway_accepts(&format!("http://127.0.0.1:{port}"), Duration::from_secs(10)).await);
        late.abort();
    }

    #[tokio::test]
    async fn gives_up_on_a_gateway_that_never_listens() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        assert!(!gateway_accepts(&format!("http://127.0.0.1:{port}"), Duration::from_millis(500)).await);
        assert!(!gateway_accepts("not a url", Duration::from_millis(500)).await);
    }
}
