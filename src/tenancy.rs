//! Tenancy: what the cluster admin lets each namespace's policies claim, set
//! at install (`--tenancy-file`, the chart's `tenancy` value) and read once at
//! start by the receiver and the controller. Per namespace: the repository
//! patterns its policies may claim, the most a run's token may be granted, and
//! the runner images it may use. [`Tenancy::check_policy`] is the one check
//! both components apply; [`route`] picks the one policy that serves a
//! repository, the same way in both.
//!
//! Without a file the built-in default applies: every namespace may claim any
//! repository and use any runner image, and a token may get the permissions
//! of [`PERMISSIONS`] up to their default ceiling; the dangerous ones
//! (`workflows`, `administration`, `secrets`, `organization_*`, ...) are never
//! granted. With a file, a namespace that no entry names gets the file's
//! `default` grant, or nothing at all when it has none.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use serde::Deserialize;

use crate::admission::matching::{Claim, Match, PolicyKey, PolicyMatcher, resolve};
use crate::api::conditions::reasons;
pub use crate::api::permissions::{KnownPermission, PERMISSIONS, known_permission};
use crate::api::{ClaudeRunPolicy, ClaudeRunPolicySpec, TokenAccess};

/// Why a policy is not allowed: a condition reason and a message for the
/// policy's status (and the run's, at admission).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub reason: &'static str,
    pub message: String,
}

/// A configuration that cannot be used: the process does not start.
#[derive(Debug, thiserror::Error)]
pub enum TenancyError {
    #[error("reading the tenancy file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("the tenancy file is not valid: {0}")]
    Parse(String),
    #[error("tenancy {place}: {message}")]
    Invalid { place: String, message: String },
}

// ---- The file ----

/// The file as written (YAML or JSON).
#[derive(Deserialize, Debug, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct File {
    #[serde(default)]
    namespaces: Vec<EntryFile>,
    #[serde(default)]
    default: Option<GrantFile>,
}

#[derive(Deserialize, Debug)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct EntryFile {
    names: Vec<String>,
    #[serde(default)]
    repositories: Vec<String>,
    #[serde(default)]
    permissions: Option<BTreeMap<String, TokenAccess>>,
    #[serde(default)]
    runner_images: Option<Vec<String>>,
}

#[derive(Deserialize, Debug)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct GrantFile {
    #[serde(default)]
    repositories: Vec<String>,
    #[serde(default)]
    permissions: Option<BTreeMap<String, TokenAccess>>,
    #[serde(default)]
    runner_images: Option<Vec<String>>,
}

// ---- The checked configuration ----

/// What one namespace may do.
#[derive(Debug, Clone)]
pub struct Grant {
    /// `owner/name` patterns (`*` and `?` in either part).
    repositories: Vec<String>,
    /// Permission name to the most a token may get.
    ceiling: BTreeMap<String, TokenAccess>,
    /// Runner image globs; `None`: any image.
    images: Option<(Vec<String>, GlobSet)>,
    /// Whether this grant names the namespace (an entry), rather than being
    /// the default every other namespace gets: a named grant wins overlaps.
    named: bool,
}

impl Grant {
    fn builtin() -> Self {
        Self {
            repositories: vec!["*/*".into()],
            ceiling: default_ceiling(),
            images: None,
            named: false,
        }
    }

    /// Whether `pattern` (a policy's repository pattern, or a repository)
    /// lies within this grant.
    pub fn allows_repository(&self, pattern: &str) -> bool {
        self.repositories.iter().any(|g| pattern_within(pattern, g))
    }
}

fn default_ceiling() -> BTreeMap<String, TokenAccess> {
    PERMISSIONS
        .iter()
        .filter_map(|p| p.default_ceiling.map(|c| (p.name.to_owned(), c)))
        .collect()
}

/// The cluster's tenancy configuration.
#[derive(Debug, Clone)]
pub struct Tenancy {
    entries: Vec<(Vec<String>, GlobSet, Grant)>,
    default: Option<Grant>,
    /// Whether it came from a file (for the start-up log line).
    pub configured: bool,
}

impl Default for Tenancy {
    /// The built-in default: any namespace, any repository, any image, no
    /// dangerous permission.
    fn default() -> Self {
        Self {
            entries: vec![],
            default: Some(Grant::builtin()),
            configured: false,
        }
    }
}

impl Tenancy {
    /// Reads `--tenancy-file`, or the built-in default without one.
    pub fn load(path: Option<&Path>) -> Result<Arc<Self>, TenancyError> {
        let Some(path) = path else {
            return Ok(Arc::new(Self::default()));
        };
        let text = std::fs::read_to_string(path).map_err(|source| TenancyError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_yaml(&text).map(Arc::new)
    }

    /// Parses and checks a configuration (YAML or JSON).
    pub fn from_yaml(text: &str) -> Result<Self, TenancyError> {
        let file: File = if text.trim().is_empty() {
            File::default()
        } else {
            serde_yaml::from_str(text).map_err(|e| TenancyError::Parse(e.to_string()))?
        };
        let mut entries = Vec::new();
        for (i, e) in file.namespaces.into_iter().enumerate() {
            let place = format!("namespaces[{i}]");
            if e.names.is_empty() {
                return Err(invalid(&place, "names is empty"));
            }
            let mut set = GlobSetBuilder::new();
            for n in &e.names {
                let ok = !n.is_empty()
                    && n.len() <= 63
                    && n.chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-*?".contains(c));
                if !ok {
                    return Err(invalid(
                        &place,
                        format!("`{n}` is not a namespace name or a glob of one (`*`, `?`)"),
                    ));
                }
                set.add(
                    GlobBuilder::new(n)
                        .build()
                        .map_err(|err| invalid(&place, err.to_string()))?,
                );
            }
            let set = set.build().map_err(|err| invalid(&place, err.to_string()))?;
            let grant = grant(&place, e.repositories, e.permissions, e.runner_images, true)?;
            entries.push((e.names, set, grant));
        }
        let default = match file.default {
            Some(g) => Some(grant("default", g.repositories, g.permissions, g.runner_images, false)?),
            None => None,
        };
        Ok(Self {
            entries,
            default,
            configured: true,
        })
    }

    /// The grant of `namespace`: the first entry naming it, else the default.
    pub fn grant(&self, namespace: &str) -> Option<&Grant> {
        self.entries
            .iter()
            .find(|(_, set, _)| set.is_match(namespace))
            .map(|(_, _, g)| g)
            .or(self.default.as_ref())
    }

    /// Whether an entry naming `namespace` grants it `pattern`: such a claim
    /// wins over one the default allows.
    pub fn names_grant(&self, namespace: &str, pattern: &str) -> bool {
        self.grant(namespace)
            .is_some_and(|g| g.named && g.allows_repository(pattern))
    }

    /// Whether the policy `spec` in `namespace` stays within its namespace's
    /// grant: every repository pattern, every token permission, the runner
    /// image. The first violation is returned.
    pub fn check_policy(&self, namespace: &str, spec: &ClaudeRunPolicySpec) -> Result<(), Violation> {
        let Some(grant) = self.grant(namespace) else {
            return Err(Violation {
                reason: reasons::REPOSITORY_NOT_ALLOWED,
                message: format!("the tenancy configuration grants namespace {namespace} no repository"),
            });
        };
        if let Some(p) = spec.repositories.iter().find(|p| !grant.allows_repository(p)) {
            return Err(Violation {
                reason: reasons::REPOSITORY_NOT_ALLOWED,
                message: format!("namespace {namespace} may not claim {p} (tenancy configuration)"),
            });
        }
        check_permissions(namespace, &spec.github.permissions, &grant.ceiling)?;
        if let Some((_, set)) = &grant.images
            && !set.is_match(&spec.runner.image)
        {
            return Err(Violation {
                reason: reasons::RUNNER_IMAGE_NOT_ALLOWED,
                message: format!(
                    "namespace {namespace} may not use the runner image {} (tenancy configuration)",
                    spec.runner.image
                ),
            });
        }
        Ok(())
    }
}

fn invalid(place: &str, message: impl Into<String>) -> TenancyError {
    TenancyError::Invalid {
        place: place.to_owned(),
        message: message.into(),
    }
}

fn grant(
    place: &str,
    repositories: Vec<String>,
    permissions: Option<BTreeMap<String, TokenAccess>>,
    images: Option<Vec<String>>,
    named: bool,
) -> Result<Grant, TenancyError> {
    for r in &repositories {
        check_grant_pattern(r).map_err(|m| invalid(place, format!("repository `{r}`: {m}")))?;
    }
    let ceiling = match permissions {
        None => default_ceiling(),
        Some(map) => {
            for (name, level) in &map {
                let known = known_permission(name).ok_or_else(|| {
                    invalid(
                        place,
                        format!("`{name}` is not a GitHub App permission the operator knows"),
                    )
                })?;
                if *level > known.max {
                    return Err(invalid(place, format!("GitHub offers `{name}` at read only")));
                }
            }
            map
        }
    };
    let images = match images {
        None => None,
        Some(list) => {
            let mut set = GlobSetBuilder::new();
            for i in &list {
                if i.is_empty() || i.len() > 512 {
                    return Err(invalid(place, "a runner image glob must have 1 to 512 characters"));
                }
                set.add(
                    GlobBuilder::new(i)
                        .literal_separator(true)
                        .build()
                        .map_err(|e| invalid(place, format!("runner image `{i}`: {}", e.kind())))?,
                );
            }
            Some((list, set.build().map_err(|e| invalid(place, e.to_string()))?))
        }
    };
    Ok(Grant {
        repositories,
        ceiling,
        images,
        named,
    })
}

/// The token permissions of a policy against a ceiling: known names only, at
/// a level GitHub offers, within the ceiling.
pub fn check_permissions(
    namespace: &str,
    asked: &BTreeMap<String, TokenAccess>,
    ceiling: &BTreeMap<String, TokenAccess>,
) -> Result<(), Violation> {
    for (name, level) in asked {
        let Some(known) = known_permission(name) else {
            return Err(Violation {
                reason: reasons::UNKNOWN_PERMISSION,
                message: format!("`{name}` is not a GitHub App permission the operator knows"),
            });
        };
        if *level > known.max {
            return Err(Violation {
                reason: reasons::PERMISSION_NOT_ALLOWED,
                message: format!("GitHub offers `{name}` at read only"),
            });
        }
        match ceiling.get(name.as_str()) {
            Some(most) if level <= most => {}
            Some(_) => {
                return Err(Violation {
                    reason: reasons::PERMISSION_NOT_ALLOWED,
                    message: format!("namespace {namespace} may grant `{name}` read only (tenancy configuration)"),
                });
            }
            None => {
                return Err(Violation {
                    reason: reasons::PERMISSION_NOT_ALLOWED,
                    message: format!(
                        "`{name}` needs the cluster admin's leave for namespace {namespace} (tenancy configuration)"
                    ),
                });
            }
        }
    }
    Ok(())
}

// ---- Repository patterns ----

/// A grant pattern: `owner/name`, each part literal characters (GitHub's
/// login and repository name syntax) with `*` and `?`.
fn check_grant_pattern(p: &str) -> Result<(), &'static str> {
    let (owner, name) = p.split_once('/').ok_or("expected `owner/name`")?;
    for part in [owner, name] {
        if part.is_empty() || part.len() > 100 {
            return Err("each part must have 1 to 100 characters");
        }
        if !part.chars().all(|c| c.is_ascii_alphanumeric() || "-_.*?".contains(c)) {
            return Err("only letters, digits, `-`, `_`, `.`, `*` and `?`");
        }
    }
    Ok(())
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Lit(char),
    One,
    Many,
    /// A `[...]` class of a policy pattern: one character of some set.
    Class,
}

fn tokens(part: &str) -> Option<Vec<Tok>> {
    let mut out = Vec::new();
    let mut chars = part.chars();
    while let Some(c) = chars.next() {
        out.push(match c {
            '*' => Tok::Many,
            '?' => Tok::One,
            '[' => {
                // Up to the closing `]` (a `]` first in the class is literal).
                let mut first = true;
                loop {
                    match chars.next()? {
                        ']' if !first => break,
                        _ => first = false,
                    }
                }
                Tok::Class
            }
            c => Tok::Lit(c.to_ascii_lowercase()),
        });
    }
    Some(out)
}

/// Whether every repository the policy pattern `pattern` can match is also
/// matched by the grant pattern `grant` (case-insensitive): `acme/api-?` lies
/// within `acme/api-*`, `acme/*` does not lie within `acme/api-*`. Sound: a
/// `?` of the grant never stands for a `*` of the policy. A pattern that
/// cannot be read lies within nothing.
pub fn pattern_within(pattern: &str, grant: &str) -> bool {
    let (Some((po, pn)), Some((go, gn))) = (pattern.split_once('/'), grant.split_once('/')) else {
        return false;
    };
    part_within(po, go) && part_within(pn, gn)
}

fn part_within(pattern: &str, grant: &str) -> bool {
    let (Some(p), Some(g)) = (tokens(pattern), tokens(grant)) else {
        return false;
    };
    if g.contains(&Tok::Class) {
        return false;
    }
    // cover[i][j]: g[i..] covers p[j..].
    let mut cover = vec![vec![false; p.len() + 1]; g.len() + 1];
    cover[g.len()][p.len()] = true;
    for i in (0..g.len()).rev() {
        for j in (0..=p.len()).rev() {
            cover[i][j] = match &g[i] {
                Tok::Many => cover[i + 1][j] || (j < p.len() && cover[i][j + 1]),
                Tok::One => j < p.len() && p[j] != Tok::Many && cover[i + 1][j + 1],
                Tok::Lit(c) => j < p.len() && p[j] == Tok::Lit(*c) && cover[i + 1][j + 1],
                Tok::Class => false,
            };
        }
    }
    cover[0][0]
}

// ---- Routing ----

/// The policy that serves a repository, and the ones it wins over.
#[derive(Debug, Clone)]
pub enum Route {
    /// No policy in its namespace's grant covers the repository.
    None,
    /// This policy serves it; `losers` also cover it and are not used for it.
    To {
        policy: Arc<ClaudeRunPolicy>,
        losers: Vec<PolicyKey>,
    },
}

fn key_of(p: &ClaudeRunPolicy) -> PolicyKey {
    PolicyKey::new(
        p.metadata.namespace.clone().unwrap_or_default(),
        p.metadata.name.clone().unwrap_or_default(),
    )
}

/// The claim `policy` makes on `pattern` (a repository, or a pattern of an
/// overlapping policy), ranked as [`resolve`] ranks claims.
pub fn claim(policy: &ClaudeRunPolicy, pattern: &str, tenancy: &Tenancy) -> Claim {
    let key = key_of(policy);
    Claim {
        granted: tenancy.names_grant(&key.namespace, pattern),
        created: policy.metadata.creation_timestamp.as_ref().map(|t| t.0.as_second()),
        key,
    }
}

/// Which policy serves `repository`: among the policies within their
/// namespace's grant that cover it, the one [`resolve`] ranks first. The
/// receiver routes triggers with it and the controller admits runs with it,
/// so both always agree.
pub fn route(repository: &str, policies: &[Arc<ClaudeRunPolicy>], tenancy: &Tenancy) -> Route {
    let eligible: Vec<&Arc<ClaudeRunPolicy>> = policies
        .iter()
        .filter(|p| {
            // A policy being deleted serves nothing.
            let ns = p.metadata.namespace.as_deref().unwrap_or_default();
            p.metadata.deletion_timestamp.is_none() && tenancy.check_policy(ns, &p.spec).is_ok()
        })
        .collect();
    let matcher = PolicyMatcher::new(eligible.iter().map(|p| {
        let k = key_of(p);
        (k.namespace, k.name, p.spec.repositories.clone())
    }));
    let keys = match matcher.match_repository(repository) {
        Match::None => return Route::None,
        Match::One(k) => vec![k],
        Match::Many(ks) => ks,
    };
    let claims: Vec<Claim> = eligible
        .iter()
        .filter(|p| keys.contains(&key_of(p)))
        .map(|p| claim(p, repository, tenancy))
        .collect();
    let Some(resolved) = resolve(&claims) else {
        return Route::None;
    };
    match eligible.into_iter().find(|p| key_of(p) == resolved.winner) {
        Some(policy) => Route::To {
            policy: policy.clone(),
            losers: resolved.losers,
        },
        None => Route::None,
    }
}

#[cfg(test)]
#[path = "tenancy_tests.rs"]
mod tests;
