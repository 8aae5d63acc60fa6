//! Which `ClaudeRunPolicy` covers a repository. Patterns are `owner/name`:
//! the owner is literal, the name a glob (`*`, `?`, `[...]`), both compared
//! without regard to case, as GitHub does. When several policies cover a
//! repository, [`resolve`] picks the one that serves it, by a fixed rule the
//! receiver and the controller share (see `tenancy::route`).

use std::collections::HashMap;

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};

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
}
