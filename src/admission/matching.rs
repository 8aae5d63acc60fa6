//! Which `ClaudeRunPolicy` covers a repository. Patterns are `owner/name`:
//! the owner is literal, the name a glob (`*`, `?`, `[...]`), both compared
//! without regard to case, as GitHub does. When several policies cover a
//! repository, [`resolve`] picks the one that serves it, by a fixed rule the
//! receiver and the controller share (see `tenancy::route`). Also which pull
//! requests get an automatic review ([`review_filter`], [`review_paths`]).

use std::collections::HashMap;

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};

use crate::api::{ReviewTriggers, TriggerEvent};

/// A policy, by namespace and name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PolicyKey {
    /// Namespace of the policy.
    pub namespace: String,
    /// Name of the policy.
    pub name: String,
}

impl PolicyKey {
    /// A key from namespace and name.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

/// The policies covering a repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Match {
    /// No policy: the trigger is ignored.
    None,
    /// Exactly one policy.
    One(PolicyKey),
    /// Several policies, sorted: an overlap, settled by [`resolve`].
    Many(Vec<PolicyKey>),
}

/// One policy's claim on a repository, with what ranks it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// The policy.
    pub key: PolicyKey,
    /// Whether the cluster admin's tenancy configuration grants this
    /// repository to the policy's namespace by name (not by its default).
    pub granted: bool,
    /// The policy's creationTimestamp, Unix seconds (`None`: unknown).
    pub created: Option<i64>,
}

/// Which claim wins, and the ones it wins over (sorted by rank).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub winner: PolicyKey,
    pub losers: Vec<PolicyKey>,
}

/// Settles an overlap: a claim the tenancy configuration grants by name wins
/// over one it does not; among equals the oldest policy wins (an unknown
/// creation time counts as newest), then the first by namespace and name. So
/// a policy created later, in any namespace, never displaces one already
/// serving a repository, and a namespace the admin named for a repository
/// cannot be displaced at all. `None` when there is no claim.
pub fn resolve(claims: &[Claim]) -> Option<Resolved> {
    let mut ranked: Vec<&Claim> = claims.iter().collect();
    ranked.sort_by(|a, b| {
        let rank = |c: &Claim| (!c.granted, c.created.is_none(), c.created.unwrap_or(i64::MAX));
        rank(a).cmp(&rank(b)).then_with(|| a.key.cmp(&b.key))
    });
    ranked.dedup_by(|a, b| a.key == b.key);
    let (winner, losers) = ranked.split_first()?;
    Some(Resolved {
        winner: winner.key.clone(),
        losers: losers.iter().map(|c| c.key.clone()).collect(),
    })
}

/// A pattern that could not be used, and why. The rest of its policy's
/// patterns still apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidPattern {
    /// The policy the pattern belongs to.
    pub policy: PolicyKey,
    /// The pattern as written.
    pub pattern: String,
    /// Why it was skipped.
    pub reason: String,
}

/// Per owner (lowercased), one glob set over repository names, each glob
/// pointing at the policy it came from.
#[derive(Debug)]
struct OwnerGlobs {
    set: GlobSet,
    policies: Vec<usize>,
}

/// Matches repositories to policies. Build once per change of the policy
/// set; matching is a hash lookup and one glob-set match.
#[derive(Debug)]
pub struct PolicyMatcher {
    keys: Vec<PolicyKey>,
    owners: HashMap<String, OwnerGlobs>,
    invalid: Vec<InvalidPattern>,
}

impl PolicyMatcher {
    /// Builds the matcher from `(namespace, name, repository patterns)`.
    /// Invalid patterns are skipped and listed by [`PolicyMatcher::invalid`].
    pub fn new<I, P, S>(policies: I) -> Self
    where
        I: IntoIterator<Item = (String, String, P)>,
        P: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut keys = Vec::new();
        let mut invalid = Vec::new();
        let mut builders: HashMap<String, (GlobSetBuilder, Vec<usize>)> = HashMap::new();
        for (namespace, name, patterns) in policies {
            let key = PolicyKey::new(namespace, name);
            let index = keys.len();
            for pattern in patterns {
                let pattern = pattern.as_ref();
                match compile(pattern) {
                    Ok((owner, glob)) => {
                        let (builder, policies) = builders
                            .entry(owner)
                            .or_insert_with(|| (GlobSetBuilder::new(), Vec::new()));
                        builder.add(glob);
                        policies.push(index);
                    }
                    Err(reason) => invalid.push(InvalidPattern {
                        policy: key.clone(),
                        pattern: pattern.to_owned(),
                        reason,
                    }),
                }
            }
            keys.push(key);
        }
        let mut owners = HashMap::new();
        for (owner, (builder, policies)) in builders {
            match builder.build() {
                Ok(set) => {
                    owners.insert(owner, OwnerGlobs { set, policies });
                }
                // Each glob compiled alone, so this should not happen; if it
                // does, every pattern of the owner is reported and none used.
                Err(err) => {
                    for &i in &policies {
                        invalid.push(InvalidPattern {
                            policy: keys[i].clone(),
                            pattern: format!("{owner}/…"),
                            reason: err.to_string(),
                        });
                    }
                }
            }
        }
        Self { keys, owners, invalid }
    }

    /// The patterns that were skipped.
    pub fn invalid(&self) -> &[InvalidPattern] {
        &self.invalid
    }

    /// A matcher of one pattern set, to ask whether it covers a name.
    pub fn of_patterns(patterns: &[String]) -> Self {
        Self::new([(String::new(), String::new(), patterns.iter().cloned())])
    }

    /// Whether any policy covers `full_name`.
    pub fn covers(&self, full_name: &str) -> bool {
        !matches!(self.match_repository(full_name), Match::None)
    }

    /// The policies whose patterns cover `full_name` (`owner/name`).
    pub fn match_repository(&self, full_name: &str) -> Match {
        let Some((owner, name)) = full_name.split_once('/') else {
            return Match::None;
        };
        if owner.is_empty() || name.is_empty() || name.contains('/') {
            return Match::None;
        }
        let Some(globs) = self.owners.get(&owner.to_ascii_lowercase()) else {
            return Match::None;
        };
        let mut hits: Vec<usize> = globs.set.matches(name).into_iter().map(|g| globs.policies[g]).collect();
        hits.sort_unstable();
        hits.dedup();
        match hits.as_slice() {
            [] => Match::None,
            [one] => Match::One(self.keys[*one].clone()),
            many => {
                let mut keys: Vec<PolicyKey> = many.iter().map(|&i| self.keys[i].clone()).collect();
                keys.sort();
                Match::Many(keys)
            }
        }
    }
}

/// Splits and checks a pattern: a literal owner (GitHub's login syntax) and
/// a name glob that cannot cross `/`.
fn compile(pattern: &str) -> Result<(String, globset::Glob), String> {
    let (owner, name) = pattern
        .split_once('/')
        .ok_or_else(|| "expected `owner/name`".to_owned())?;
    let owner_ok = !owner.is_empty()
        && owner.len() <= 39
        && owner.starts_with(|c: char| c.is_ascii_alphanumeric())
        && owner.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    if !owner_ok {
        return Err("the owner must be a literal GitHub login".to_owned());
    }
    if name.is_empty() || name.len() > 100 {
        return Err("the name must have 1 to 100 characters".to_owned());
    }
    if name.contains('/') {
        return Err("the name cannot contain `/`".to_owned());
    }
    if name.contains("**") {
        return Err("`**` is not allowed in a name".to_owned());
    }
    let glob = GlobBuilder::new(name)
        .case_insensitive(true)
        .literal_separator(true)
        .backslash_escape(false)
        .build()
        .map_err(|err| err.kind().to_string())?;
    Ok((owner.to_ascii_lowercase(), glob))
}

/// Why a pull request gets no automatic review: a machine-readable reason
/// and a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReviewSkip {
    /// `ReviewNotWanted`, for the run's admission.
    pub reason: &'static str,
    /// What a person should know.
    pub message: String,
}

use crate::api::conditions::reasons::REVIEW_NOT_WANTED;

fn skip(message: impl Into<String>) -> ReviewSkip {
    ReviewSkip {
        reason: REVIEW_NOT_WANTED,
        message: message.into(),
    }
}

/// Globs over `/`-separated names: `*` stays within one segment, `**`
/// crosses them. An invalid glob fails the whole filter (no review).
fn path_globs(globs: &[String]) -> Result<GlobSet, ReviewSkip> {
    let mut builder = GlobSetBuilder::new();
    for g in globs {
        let glob = GlobBuilder::new(g.trim_start_matches('/'))
            .literal_separator(true)
            .build()
            .map_err(|e| skip(format!("the review filter {g:?} is not a valid glob ({})", e.kind())))?;
        builder.add(glob);
    }
    builder
        .build()
        .map_err(|e| skip(format!("the review filters are unusable ({e})")))
}

/// Whether `path` or a directory above it matches.
fn matches_path_or_parent(set: &GlobSet, path: &str) -> bool {
    let mut prefix_end = 0;
    loop {
        let next = path[prefix_end..].find('/').map(|i| prefix_end + i);
        if set.is_match(&path[..next.unwrap_or(path.len())]) {
            return true;
        }
        match next {
            Some(end) => prefix_end = end + 1,
            None => return false,
        }
    }
}

/// The filters the webhook payload can answer: the event must be one the
/// review rules want (a `labeled` one with `rules.label`), the base branch
/// must match `baseBranches` (when given) and a draft is skipped under
/// `skipDrafts`. Changed paths are checked later, with GitHub's list
/// ([`review_paths`]).
pub fn review_filter(
    rules: &ReviewTriggers,
    event: TriggerEvent,
    base_ref: Option<&str>,
    draft: bool,
    label: Option<&str>,
) -> Result<(), ReviewSkip> {
    if !event.is_review() {
        return Err(skip("not a pull request review event"));
    }
    if event == TriggerEvent::PullRequestLabeled {
        let wanted = rules
            .label
            .as_deref()
            .ok_or_else(|| skip("no review label is configured"))?;
        if !label.is_some_and(|l| l.eq_ignore_ascii_case(wanted)) {
            return Err(skip(format!("the label is not {wanted:?}")));
        }
    }
    if draft && rules.skip_drafts {
        return Err(skip("draft pull requests are not reviewed"));
    }
    if !rules.base_branches.is_empty() {
        let set = path_globs(&rules.base_branches)?;
        let base = base_ref.ok_or_else(|| skip("the base branch is unknown"))?;
        if !set.is_match(base) {
            return Err(skip(format!(
                "the base branch {base} is not one of {}",
                rules.base_branches.join(", ")
            )));
        }
    }
    Ok(())
}

/// Whether a pull request changing `changed` (paths, as GitHub lists the
/// pull request's files) is reviewed under `paths`: any changed path, or a
/// directory above one, matching a glob. Empty `paths`: always.
pub fn review_paths(paths: &[String], changed: &[String]) -> Result<(), ReviewSkip> {
    if paths.is_empty() {
        return Ok(());
    }
    let set = path_globs(paths)?;
    if changed.iter().any(|p| matches_path_or_parent(&set, p)) {
        Ok(())
    } else {
        Err(skip(format!("no changed file matches {}", paths.join(", "))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(ns: &str, name: &str) -> PolicyKey {
        PolicyKey::new(ns, name)
    }

    fn matcher() -> PolicyMatcher {
        PolicyMatcher::new([
            ("team-a".to_owned(), "api".to_owned(), vec!["acme/api", "acme/api-?"]),
            ("team-b".to_owned(), "web".to_owned(), vec!["Acme/web-*", "acme/site"]),
            ("team-c".to_owned(), "all".to_owned(), vec!["other/*"]),
            (
                "team-d".to_owned(),
                "overlap".to_owned(),
                vec!["acme/web-[ab]*", "acme/web-app"],
            ),
            (
                "team-e".to_owned(),
                "bad".to_owned(),
                vec![
                    "acme/[unclosed",
                    "*/x",
                    "noslash",
                    "acme/a/b",
                    "acme/**",
                    "ac.me/x",
                    "acme/",
                ],
            ),
        ])
    }

    #[test]
    fn match_table() {
        let m = matcher();
        let cases: &[(&str, Match)] = &[
            ("acme/api", Match::One(key("team-a", "api"))),
            ("ACME/API", Match::One(key("team-a", "api"))),
            ("acme/api-2", Match::One(key("team-a", "api"))),
            ("acme/api-22", Match::None),
            ("acme/site", Match::One(key("team-b", "web"))),
            ("acme/web-docs", Match::One(key("team-b", "web"))),
            (
                "acme/Web-App",
                Match::Many(vec![key("team-b", "web"), key("team-d", "overlap")]),
            ),
            (
                "acme/web-b",
                Match::Many(vec![key("team-b", "web"), key("team-d", "overlap")]),
            ),
            ("other/anything", Match::One(key("team-c", "all"))),
            ("other/a/b", Match::None),
            ("acme", Match::None),
            ("/api", Match::None),
            ("acme/", Match::None),
            ("nobody/api", Match::None),
            ("acm/api", Match::None),
            ("acme-corp/api", Match::None),
            ("", Match::None),
        ];
        for (repo, want) in cases {
            assert_eq!(m.match_repository(repo), *want, "{repo}");
        }
    }

    #[test]
    fn invalid_patterns_are_reported_and_skipped() {
        let m = matcher();
        let bad: Vec<&str> = m.invalid().iter().map(|i| i.pattern.as_str()).collect();
        assert_eq!(
            bad,
            [
                "acme/[unclosed",
                "*/x",
                "noslash",
                "acme/a/b",
                "acme/**",
                "ac.me/x",
                "acme/"
            ]
        );
        assert!(
            m.invalid()
                .iter()
                .all(|i| i.policy == key("team-e", "bad") && !i.reason.is_empty())
        );
        // The policy with only bad patterns matches nothing.
        assert_eq!(m.match_repository("acme/x"), Match::None);
    }

    #[test]
    fn one_policy_with_several_matching_patterns_is_one_match() {
        let m = PolicyMatcher::new([("ns".to_owned(), "p".to_owned(), vec!["acme/*", "acme/api", "ACME/a*"])]);
        assert_eq!(m.match_repository("acme/api"), Match::One(key("ns", "p")));
        assert!(m.invalid().is_empty());
    }

    fn claim(ns: &str, name: &str, granted: bool, created: Option<i64>) -> Claim {
        Claim {
            key: key(ns, name),
            granted,
            created,
        }
    }

    #[test]
    fn resolve_table() {
        let winner = |claims: &[Claim]| resolve(claims).map(|r| (r.winner.namespace, r.losers.len()));
        type Case<'a> = (&'a str, Vec<Claim>, Option<(&'a str, usize)>);
        let cases: &[Case] = &[
            ("nothing", vec![], None),
            ("alone", vec![claim("a", "p", false, Some(10))], Some(("a", 0))),
            (
                "the older wins",
                vec![claim("b", "p", false, Some(20)), claim("a", "p", false, Some(10))],
                Some(("a", 1)),
            ),
            (
                "a later policy in another namespace does not displace",
                vec![
                    claim("a", "p", false, Some(10)),
                    claim("0-early-name", "p", false, Some(11)),
                ],
                Some(("a", 1)),
            ),
            (
                "a named grant wins over age",
                vec![claim("a", "p", false, Some(10)), claim("b", "p", true, Some(99))],
                Some(("b", 1)),
            ),
            (
                "two named grants: the older",
                vec![claim("b", "p", true, Some(5)), claim("a", "p", true, Some(7))],
                Some(("b", 1)),
            ),
            (
                "same second: namespace, then name",
                vec![claim("b", "p", false, Some(10)), claim("a", "z", false, Some(10))],
                Some(("a", 1)),
            ),
            (
                "unknown creation time counts as newest",
                vec![claim("a", "p", false, None), claim("b", "p", false, Some(i64::MAX - 1))],
                Some(("b", 1)),
            ),
            (
                "the same policy twice is one claim",
                vec![claim("a", "p", false, Some(1)), claim("a", "p", false, Some(1))],
                Some(("a", 0)),
            ),
        ];
        for (what, claims, want) in cases {
            let got = winner(claims);
            assert_eq!(got.as_ref().map(|(n, l)| (n.as_str(), *l)), *want, "{what}");
        }
        // Order of the input does not matter.
        let mut claims = vec![
            claim("c", "p", false, Some(3)),
            claim("a", "p", false, Some(2)),
            claim("b", "p", true, Some(9)),
        ];
        let first = resolve(&claims).unwrap();
        claims.reverse();
        assert_eq!(resolve(&claims).unwrap(), first);
        assert_eq!(first.winner, key("b", "p"));
        assert_eq!(first.losers, vec![key("a", "p"), key("c", "p")]);
    }

    #[test]
    fn one_pattern_set_covers_what_its_globs_match() {
        let m = PolicyMatcher::of_patterns(&["acme/api".to_owned(), "acme/billing-*".to_owned()]);
        assert!(m.covers("acme/api") && m.covers("Acme/billing-eu"));
        assert!(!m.covers("acme/web") && !m.covers("other/api"));
    }

    #[test]
    fn review_filter_table() {
        let rules = ReviewTriggers {
            base_branches: vec!["main".into(), "release/*".into()],
            label: Some("claude-review".into()),
            ..ReviewTriggers::default()
        };
        use TriggerEvent::*;
        type Case<'a> = (&'a str, TriggerEvent, Option<&'a str>, bool, Option<&'a str>, bool);
        let cases: &[Case] = &[
            ("opened on main", PullRequestOpened, Some("main"), false, None, true),
            (
                "pushed to, on a release",
                PullRequestSynchronize,
                Some("release/1.2"),
                false,
                None,
                true,
            ),
            (
                "release/* stays in one segment",
                PullRequestOpened,
                Some("release/1/x"),
                false,
                None,
                false,
            ),
            ("another base", PullRequestOpened, Some("develop"), false, None, false),
            ("unknown base", PullRequestOpened, None, false, None, false),
            ("a draft", PullRequestOpened, Some("main"), true, None, false),
            (
                "marked ready",
                PullRequestReadyForReview,
                Some("main"),
                false,
                None,
                true,
            ),
            (
                "the review label",
                PullRequestLabeled,
                Some("main"),
                false,
                Some("Claude-Review"),
                true,
            ),
            (
                "another label",
                PullRequestLabeled,
                Some("main"),
                false,
                Some("bug"),
                false,
            ),
            ("not a review event", IssueComment, Some("main"), false, None, false),
        ];
        for (what, event, base, draft, label, want) in cases {
            let got = review_filter(&rules, *event, *base, *draft, *label);
            assert_eq!(got.is_ok(), *want, "{what}: {got:?}");
            if let Err(s) = got {
                assert_eq!(s.reason, REVIEW_NOT_WANTED);
                assert!(!s.message.is_empty());
            }
        }
        // Defaults: any base, drafts skipped, no label configured.
        let d = ReviewTriggers::default();
        assert!(review_filter(&d, PullRequestOpened, Some("anything"), false, None).is_ok());
        assert!(review_filter(&d, PullRequestOpened, Some("main"), true, None).is_err());
        assert!(review_filter(&d, PullRequestLabeled, Some("main"), false, Some("x")).is_err());
        let drafts = ReviewTriggers {
            skip_drafts: false,
            ..ReviewTriggers::default()
        };
        assert!(review_filter(&drafts, PullRequestOpened, Some("main"), true, None).is_ok());
    }

    #[test]
    fn review_paths_table() {
        let files = |f: &[&str]| f.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let globs = files(&["src/**/*.rs", "docs", "*.toml"]);
        let cases: &[(&[&str], bool)] = &[
            (&["src/lib.rs"], true),
            (&["src/a/b/c.rs"], true),
            (&["README.md", "docs/guide/intro.md"], true),
            (&["Cargo.toml"], true),
            (&["sub/Cargo.toml"], false),
            (&["README.md", "src/lib.py"], false),
            (&[], false),
        ];
        for (changed, want) in cases {
            assert_eq!(review_paths(&globs, &files(changed)).is_ok(), *want, "{changed:?}");
        }
        assert!(review_paths(&[], &files(&["anything"])).is_ok(), "no paths: always");
        let bad = review_paths(&files(&["src/[x"]), &files(&["src/x"])).unwrap_err();
        assert!(bad.message.contains("not a valid glob"), "{}", bad.message);
    }
}
