//! The thread's context for a run's prompt: fetched from GitHub once, when
//! the run's Secret (which holds the prompt) is made, filtered under the
//! policy's `context.thread`, and rendered by `github::context::render`
//! after the instruction. Best effort: a thread that cannot be read leaves
//! a note in the prompt, never a stalled run.

use std::collections::BTreeMap;

use kube::ResourceExt;

use super::Context;
use super::run::{actor_facts, installation};
use crate::admission;
use crate::api::{Actor, ActorType, ClaudeRun, ClaudeRunPolicy, ThreadAuthors};
use crate::github::context::{self, Thread};

/// Comment pages (100 each) read at most.
const MAX_COMMENT_PAGES: u32 = 10;
/// Changed-file pages (100 each) read at most.
const MAX_FILE_PAGES: u32 = 3;
/// Distinct authors checked with GitHub under `context.thread: Authorized`
/// (the newest comments' first); the rest are left out.
const MAX_CHECKED_AUTHORS: usize = 20;
/// What marks the operator's own status comments (`feedback::status_comment`):
/// they say nothing an agent needs.
const STATUS_COMMENT_MARK: &str = "<sub>claude-operator run `";

/// The run's prompt: its instruction (`spec.prompt`), then the thread.
pub(super) async fn prompt(run: &ClaudeRun, ctx: &Context, policy: &ClaudeRunPolicy) -> String {
    let budget = usize::try_from(policy.spec.context.max_bytes).unwrap_or(0);
    if budget == 0 {
        return run.spec.prompt.clone();
    }
    match thread(run, ctx, policy).await {
        Ok(thread) => format!("{}{}", run.spec.prompt, context::render(&thread, budget)),
        Err(e) => {
            tracing::warn!(run = %run.name_any(), error = %e, "the thread's context could not be read");
            format!(
                "{}\n\n---\n(The GitHub thread could not be read for context.)\n",
                run.spec.prompt
            )
        }
    }
}

async fn thread(
    run: &ClaudeRun,
    ctx: &Context,
    policy: &ClaudeRunPolicy,
) -> Result<Thread, Box<dyn std::error::Error + Send + Sync>> {
    let (owner, repo) = run.spec.repository.split_once('/').ok_or("malformed repository")?;
    let installation = installation(ctx, policy, owner, repo).await?;
    let trigger = &run.spec.trigger;
    let gh = &ctx.github;
    let files = async {
        if trigger.is_pull_request {
            gh.pull_changed_files(installation, owner, repo, trigger.number, MAX_FILE_PAGES)
                .await
        } else {
            Ok(vec![])
        }
    };
    let (post, comments, files, slug) = futures::join!(
        gh.issue_post(installation, owner, repo, trigger.number),
        gh.issue_comments(installation, owner, repo, trigger.number, MAX_COMMENT_PAGES),
        files,
        gh.app_slug(),
    );
    let (title, body) = post?;
    let bot = slug.map(|s| format!("{s}[bot]")).ok();
    let mut posts = Vec::new();
    for c in comments? {
        // The trigger's own text is the instruction already.
        if Some(c.id) == trigger.comment_id {
            continue;
        }
        let mut post = c.post;
        if bot.as_deref().is_some_and(|b| b.eq_ignore_ascii_case(&post.author)) {
            if post.body.contains(STATUS_COMMENT_MARK) {
                continue;
            }
            post.earlier_run = true;
        }
        posts.push((post, c.user_type));
    }
    let mut thread = Thread {
        pull_request: trigger.is_pull_request,
        title,
        body: Some(body),
        comments: vec![],
        excluded: 0,
        files: files?,
    };
    if policy.spec.context.thread == ThreadAuthors::Authorized {
        let allowed = authorized_authors(run, ctx, policy, &thread, &posts).await;
        let ok = |login: &str| allowed.get(&login.to_ascii_lowercase()).copied().unwrap_or(false);
        if thread.body.as_ref().is_some_and(|b| !ok(&b.author)) {
            thread.body = None;
        }
        let before = posts.len();
        posts.retain(|(p, _)| p.earlier_run || ok(&p.author));
        thread.excluded = before - posts.len();
    }
    thread.comments = posts.into_iter().map(|(p, _)| p).collect();
    Ok(thread)
}

/// Which authors of the body and comments pass the policy's authorization
/// on their own, by lower-case login: the trigger's author does (the run was
/// admitted); the others are checked with GitHub as an approver is, the
/// newest comments' authors first, at most [`MAX_CHECKED_AUTHORS`]; any
/// failure leaves the author out.
async fn authorized_authors(
    run: &ClaudeRun,
    ctx: &Context,
    policy: &ClaudeRunPolicy,
    thread: &Thread,
    posts: &[(context::Post, String)],
) -> BTreeMap<String, bool> {
    let trigger = &run.spec.trigger;
    let mut verdicts = BTreeMap::from([(trigger.actor.login.to_ascii_lowercase(), true)]);
    let mut authors: Vec<(String, String)> = posts
        .iter()
        .rev()
        .filter(|(p, _)| !p.earlier_run)
        .map(|(p, t)| (p.author.clone(), t.clone()))
        .collect();
    if let Some(b) = &thread.body {
        authors.push((b.author.clone(), "User".into()));
    }
    let mut checked = 0;
    for (login, type_) in authors {
        let key = login.to_ascii_lowercase();
        if login.is_empty() || verdicts.contains_key(&key) {
            continue;
        }
        if checked >= MAX_CHECKED_AUTHORS {
            verdicts.insert(key, false);
            continue;
        }
        checked += 1;
        let author = Actor {
            login: login.clone(),
            id: 0,
            type_: if type_ == "Bot" {
                ActorType::Bot
            } else {
                ActorType::User
            },
        };
        let facts = actor_facts(run, policy, ctx, &login).await;
        let ok = admission::approver_may_approve(&policy.spec.authorization, trigger, &author, &facts).is_ok();
        verdicts.insert(key, ok);
    }
    verdicts
}
