//! What a git request may do: pure decisions, table-tested. The handler
//! ([`super::handle`]) only gathers facts and applies these.

use axum::http::{Method, StatusCode};
use globset::{GlobBuilder, GlobSet, GlobSetBuilder};

use super::pkt::{Command, is_zero, push_capability_allowed};
use crate::gateway::{Refusal, reasons};

/// A smart HTTP service.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Service {
    /// Fetch and clone.
    UploadPack,
    /// Push.
    ReceivePack,
}

impl Service {
    /// The service's name in URLs.
    pub fn as_str(self) -> &'static str {
        match self {
            Service::UploadPack => "git-upload-pack",
            Service::ReceivePack => "git-receive-pack",
        }
    }
}

/// Which of the smart HTTP endpoints a request is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// `GET info/refs?service=...`.
    InfoRefs(Service),
    /// `POST git-upload-pack` / `POST git-receive-pack`.
    Rpc(Service),
}

/// A git request's repository and endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    /// `owner/name` as the request spelled it.
    pub repository: String,
    /// The endpoint.
    pub endpoint: Endpoint,
}

fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s != "."
        && s != ".."
        && s.len() <= 100
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// The route of `method path?query`, or `None` (404) for anything that is
/// not one of the three smart HTTP endpoints of `/git/<owner>/<name>.git`.
pub fn parse_route(method: &Method, path: &str, query: Option<&str>) -> Option<Route> {
    let rest = path.strip_prefix("/git/")?;
    let mut parts = rest.splitn(3, '/');
    let (owner, repo, tail) = (parts.next()?, parts.next()?, parts.next()?);
    let name = repo.strip_suffix(".git")?;
    if !is_name(owner) || !is_name(name) {
        return None;
    }
    let endpoint = match (method, tail, query) {
        (&Method::GET, "info/refs", Some("service=git-upload-pack")) => Endpoint::InfoRefs(Service::UploadPack),
        (&Method::GET, "info/refs", Some("service=git-receive-pack")) => Endpoint::InfoRefs(Service::ReceivePack),
        (&Method::POST, "git-upload-pack", None) => Endpoint::Rpc(Service::UploadPack),
        (&Method::POST, "git-receive-pack", None) => Endpoint::Rpc(Service::ReceivePack),
        _ => return None,
    };
    Some(Route {
        repository: format!("{owner}/{name}"),
        endpoint,
    })
}

/// The run may use only its own repository.
pub fn check_repository(requested: &str, granted: &str) -> Result<(), Refusal> {
    if requested.eq_ignore_ascii_case(granted) {
        Ok(())
    } else {
        Err(Refusal::new(
            StatusCode::FORBIDDEN,
            reasons::WRONG_REPOSITORY,
            format!("this run may only use the repository {granted}, not {requested}"),
        ))
    }
}

/// Refusal of any push by a read-only run.
pub fn read_only() -> Refusal {
    Refusal::new(
        StatusCode::FORBIDDEN,
        reasons::REF_NOT_ALLOWED,
        "this run is read-only: it may not push",
    )
}

/// The ref a run with `push_branch` may push.
pub fn branch_ref(push_branch: &str) -> String {
    format!("refs/heads/{push_branch}")
}

/// What an admitted push does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PushKind {
    /// The branch does not exist yet.
    Create,
    /// The branch moves from `old`; must be a fast-forward (checked on the content).
    Update {
        /// Its current value.
        old: String,
    },
}

/// An admitted push's one command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PushPlan {
    /// The ref.
    pub refname: String,
    /// The new value.
    pub new: String,
    /// Create or update.
    pub kind: PushKind,
}

fn ref_refusal(message: String) -> Refusal {
    Refusal::new(StatusCode::FORBIDDEN, reasons::REF_NOT_ALLOWED, message)
}

/// Decides a push's command list: one command, to exactly the run's branch,
/// no delete, no tag, only capabilities the gateway understands. With
/// `update_only` (the branch is a pull request's own head) the branch must
/// exist: the push only moves it, and the content check makes sure it is a
/// fast-forward.
pub fn decide_push(
    commands: &[Command],
    capabilities: &[String],
    push_branch: Option<&str>,
    update_only: bool,
) -> Result<PushPlan, Refusal> {
    let Some(branch) = push_branch else {
        return Err(read_only());
    };
    let allowed = branch_ref(branch);
    if let Some(cap) = capabilities.iter().find(|c| !push_capability_allowed(c)) {
        return Err(Refusal::new(
            StatusCode::FORBIDDEN,
            reasons::MALFORMED,
            format!("the gateway does not support the push capability {cap:?}"),
        ));
    }
    let [cmd] = commands else {
        return Err(ref_refusal(format!(
            "push exactly one ref per push: {allowed} (got {})",
            commands.len()
        )));
    };
    if cmd.refname.starts_with("refs/tags/") {
        return Err(ref_refusal(format!(
            "tags may not be pushed; only {allowed} may be pushed"
        )));
    }
    if cmd.refname != allowed {
        return Err(ref_refusal(format!(
            "only {allowed} may be pushed, not {}",
            cmd.refname
        )));
    }
    if is_zero(&cmd.new) {
        return Err(ref_refusal(format!("{allowed} may not be deleted")));
    }
    let kind = if is_zero(&cmd.old) {
        if update_only {
            return Err(ref_refusal(format!(
                "{allowed} is the pull request's branch: it may only be fast-forwarded, not created"
            )));
        }
        PushKind::Create
    } else {
        PushKind::Update { old: cmd.old.clone() }
    };
    Ok(PushPlan {
        refname: cmd.refname.clone(),
        new: cmd.new.clone(),
        kind,
    })
}

/// The protected path globs, compiled. A glob that does not compile makes
/// every push refused (fail closed).
pub fn protected_set(globs: &[String]) -> Result<GlobSet, Refusal> {
    let mut builder = GlobSetBuilder::new();
    for g in globs {
        let glob = GlobBuilder::new(g.trim_start_matches('/'))
            .literal_separator(true)
            .case_insensitive(true)
            .build()
            .map_err(|e| {
                Refusal::new(
                    StatusCode::FORBIDDEN,
                    reasons::PROTECTED_PATH,
                    format!("the policy's protected path {g:?} is not a valid glob ({e}); no push is allowed"),
                )
            })?;
        builder.add(glob);
    }
    builder.build().map_err(|e| {
        Refusal::new(
            StatusCode::FORBIDDEN,
            reasons::PROTECTED_PATH,
            format!("the policy's protected paths are unusable ({e}); no push is allowed"),
        )
    })
}

/// Whether changing `path` is forbidden: the path or any directory above it
/// matches a protected glob (so `.github` protects everything under it).
pub fn is_protected(set: &GlobSet, path: &str) -> bool {
    let mut at = 0;
    loop {
        let end = path[at..].find('/').map(|i| at + i);
        let prefix = &path[..end.unwrap_or(path.len())];
        if set.is_match(prefix) {
            return true;
        }
        match end {
            Some(e) => at = e + 1,
            None => return false,
        }
    }
}

/// The refusal for a change to `path`.
pub fn protected_refusal(path: &str) -> Refusal {
    Refusal::new(
        StatusCode::FORBIDDEN,
        reasons::PROTECTED_PATH,
        format!("the push changes the protected path {path}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "1111111111111111111111111111111111111111";
    const B: &str = "2222222222222222222222222222222222222222";
    const Z: &str = "0000000000000000000000000000000000000000";

    fn cmd(old: &str, new: &str, r: &str) -> Command {
        Command {
            old: old.into(),
            new: new.into(),
            refname: r.into(),
        }
    }

    #[test]
    fn routes() {
        let get = Method::GET;
        let post = Method::POST;
        type Case<'a> = (&'a Method, &'a str, Option<&'a str>, Option<(&'a str, Endpoint)>);
        let cases: &[Case] = &[
            (
                &get,
                "/git/o/r.git/info/refs",
                Some("service=git-upload-pack"),
                Some(("o/r", Endpoint::InfoRefs(Service::UploadPack))),
            ),
            (
                &get,
                "/git/My-Org/r.x_y.git/info/refs",
                Some("service=git-receive-pack"),
                Some(("My-Org/r.x_y", Endpoint::InfoRefs(Service::ReceivePack))),
            ),
            (
                &post,
                "/git/o/r.git/git-upload-pack",
                None,
                Some(("o/r", Endpoint::Rpc(Service::UploadPack))),
            ),
            (
                &post,
                "/git/o/r.git/git-receive-pack",
                None,
                Some(("o/r", Endpoint::Rpc(Service::ReceivePack))),
            ),
            (&get, "/git/o/r.git/info/refs", None, None),
            (&get, "/git/o/r.git/info/refs", Some("service=other"), None),
            (
                &get,
                "/git/o/r.git/info/refs",
                Some("service=git-upload-pack&x=1"),
                None,
            ),
            (&post, "/git/o/r.git/info/refs", Some("service=git-upload-pack"), None),
            (&get, "/git/o/r.git/git-upload-pack", None, None),
            (&get, "/git/o/r.git/HEAD", None, None),
            (&get, "/git/o/r.git/objects/info/packs", None, None),
            (&post, "/git/o/r/git-upload-pack", None, None),
            (&post, "/git/../r.git/git-upload-pack", None, None),
            (&post, "/git/o/..git/git-upload-pack", None, None),
            (&post, "/git/o%2fx/r.git/git-upload-pack", None, None),
            (&post, "/git/o/r.git/git-upload-pack/", None, None),
            (&post, "/git/o/x/r.git/git-upload-pack", None, None),
            (&post, "/git//r.git/git-upload-pack", None, None),
            (&post, "/other/o/r.git/git-upload-pack", None, None),
        ];
        for (m, p, q, want) in cases {
            let got = parse_route(m, p, *q);
            let want = want.map(|(r, e)| Route {
                repository: r.into(),
                endpoint: e,
            });
            assert_eq!(got, want, "{m} {p} {q:?}");
        }
    }

    #[test]
    fn only_the_runs_repository() {
        assert!(check_repository("Octo/Repo", "octo/repo").is_ok());
        let r = check_repository("octo/other", "octo/repo").unwrap_err();
        assert_eq!(r.reason, reasons::WRONG_REPOSITORY);
        assert_eq!(r.status, StatusCode::FORBIDDEN);
    }

    #[test]
    fn push_decisions() {
        let caps = vec![
            "report-status".to_string(),
            "side-band-64k".into(),
            "agent=git/2".into(),
        ];
        let b = "refs/heads/claude/run-1";
        let ok_create = PushPlan {
            refname: b.into(),
            new: A.into(),
            kind: PushKind::Create,
        };
        let ok_update = PushPlan {
            refname: b.into(),
            new: B.into(),
            kind: PushKind::Update { old: A.into() },
        };
        // Commands, capabilities, the run's branch, and the plan or (reason, message part).
        type Case<'a> = (
            Vec<Command>,
            Vec<String>,
            Option<&'a str>,
            Result<PushPlan, (&'a str, &'a str)>,
        );
        let cases: Vec<Case> = vec![
            (vec![cmd(Z, A, b)], caps.clone(), Some("claude/run-1"), Ok(ok_create)),
            (vec![cmd(A, B, b)], caps.clone(), Some("claude/run-1"), Ok(ok_update)),
            (
                vec![cmd(Z, A, b)],
                caps.clone(),
                None,
                Err((reasons::REF_NOT_ALLOWED, "read-only")),
            ),
            (
                vec![cmd(Z, A, "refs/heads/main")],
                caps.clone(),
                Some("claude/run-1"),
                Err((reasons::REF_NOT_ALLOWED, "not refs/heads/main")),
            ),
            (
                vec![cmd(Z, A, "refs/heads/claude/run-10")],
                caps.clone(),
                Some("claude/run-1"),
                Err((reasons::REF_NOT_ALLOWED, "only refs/heads/claude/run-1")),
            ),
            (
                vec![cmd(Z, A, "refs/tags/v1")],
                caps.clone(),
                Some("claude/run-1"),
                Err((reasons::REF_NOT_ALLOWED, "tags")),
            ),
            (
                vec![cmd(A, Z, b)],
                caps.clone(),
                Some("claude/run-1"),
                Err((reasons::REF_NOT_ALLOWED, "deleted")),
            ),
            (
                vec![cmd(Z, A, b), cmd(Z, B, "refs/heads/other")],
                caps.clone(),
                Some("claude/run-1"),
                Err((reasons::REF_NOT_ALLOWED, "exactly one")),
            ),
            (
                vec![],
                caps.clone(),
                Some("claude/run-1"),
                Err((reasons::REF_NOT_ALLOWED, "exactly one")),
            ),
            (
                vec![cmd(Z, A, b)],
                vec!["report-status".into(), "push-options".into()],
                Some("claude/run-1"),
                Err((reasons::MALFORMED, "push-options")),
            ),
            (
                vec![cmd(Z, A, b)],
                vec!["atomic".into()],
                Some("claude/run-1"),
                Err((reasons::MALFORMED, "atomic")),
            ),
        ];
        for (cmds, caps, branch, want) in cases {
            let got = decide_push(&cmds, &caps, branch, false);
            match (got, want) {
                (Ok(g), Ok(w)) => assert_eq!(g, w),
                (Err(g), Err((reason, text))) => {
                    assert_eq!(g.reason, reason, "{cmds:?}");
                    assert!(g.message.contains(text), "{} / {text}", g.message);
                    assert_eq!(g.status, StatusCode::FORBIDDEN);
                }
                (g, w) => panic!("{cmds:?}: got {g:?}, want {w:?}"),
            }
        }
    }

    #[test]
    fn a_pull_request_s_branch_is_only_moved() {
        let caps = vec!["report-status".to_string()];
        let b = "refs/heads/feature/retry";
        let plan = decide_push(&[cmd(A, B, b)], &caps, Some("feature/retry"), true).unwrap();
        assert_eq!(plan.kind, PushKind::Update { old: A.into() });
        for (cmds, text) in [
            (vec![cmd(Z, A, b)], "not created"),
            (vec![cmd(A, Z, b)], "deleted"),
            (vec![cmd(A, B, "refs/heads/main")], "only refs/heads/feature/retry"),
            (
                vec![cmd(Z, A, "refs/heads/claude/run-1")],
                "only refs/heads/feature/retry",
            ),
        ] {
            let r = decide_push(&cmds, &caps, Some("feature/retry"), true).unwrap_err();
            assert_eq!(r.reason, reasons::REF_NOT_ALLOWED, "{cmds:?}");
            assert!(r.message.contains(text), "{} / {text}", r.message);
        }
    }

    #[test]
    fn protected_paths() {
        let set = protected_set(&[".github/workflows/**".into(), "CODEOWNERS".into(), "/secrets".into()]).unwrap();
        for (path, protected) in [
            (".github/workflows/ci.yml", true),
            (".github/workflows/sub/dir/x.yaml", true),
            (".GitHub/Workflows/ci.yml", true),
            (".github/dependabot.yml", false),
            ("CODEOWNERS", true),
            ("docs/CODEOWNERS", false),
            ("secrets/key", true),
            ("src/main.rs", false),
            ("x/.github/workflows/ci.yml", false),
        ] {
            assert_eq!(is_protected(&set, path), protected, "{path}");
        }
        let dir = protected_set(&[".github".into()]).unwrap();
        assert!(is_protected(&dir, ".github/workflows/ci.yml"));
        assert!(!is_protected(&dir, ".githubx/a"));
        let star = protected_set(&["*.pem".into()]).unwrap();
        assert!(is_protected(&star, "key.pem"));
        assert!(!is_protected(&star, "dir/key.pem"), "* does not cross directories");
        let bad = protected_set(&["a[".into()]).unwrap_err();
        assert_eq!(bad.reason, reasons::PROTECTED_PATH);
        assert!(
            protected_refusal(".github/workflows/x.yml")
                .message
                .contains(".github/workflows/x.yml")
        );
    }
}
