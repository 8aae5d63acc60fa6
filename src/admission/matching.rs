//! Which `ClaudeRunPolicy` covers a repository. Patterns are `owner/name`:
//! the owner is literal, the name a glob (`*`, `?`, `[...]`), both compared
//! without regard to case, as GitHub does. Exactly one policy should match;
//! the caller treats several as an overlap and ignores the trigger.

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
    /// Several policies, sorted: an overlap to report; the trigger is ignored.
    Many(Vec<PolicyKey>),
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

    #[test]
    fn one_pattern_set_covers_what_its_globs_match() {
        let m = PolicyMatcher::of_patterns(&["acme/api".to_owned(), "acme/billing-*".to_owned()]);
        assert!(m.covers("acme/api") && m.covers("Acme/billing-eu"));
        assert!(!m.covers("acme/web") && !m.covers("other/api"));
    }
}
