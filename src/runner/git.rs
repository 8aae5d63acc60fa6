//! Git for the runner: clone through the gateway (`<gateway>/git/<owner>/<name>.git`),
//! check out a pull request's admitted head, commit what Claude changed and
//! push it to the run's one branch only: `claude/<run>` or the pull
//! request's own head branch (the gateway enforces that too).
//!
//! The capability reaches git through a credential helper that reads the
//! mounted capability file when git asks, scoped to the gateway's git URL:
//! it is never in a URL, an argument or a log. Every git command runs with a
//! cleared environment (no proxy: git talks to the gateway directly), no
//! system or global configuration, no hooks and no fsmonitor, and the
//! clone's `.git/config` is restored after Claude ran, so nothing Claude
//! wrote into the repository's configuration redirects the push.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Stdio;

/// Variable through which the credential helper finds the capability file
/// (a path, not a secret).
const CAPABILITY_FILE_VAR: &str = "CLAUDE_OPERATOR_GIT_CAPABILITY_FILE";

/// The credential helper: answers `get` with the capability file's contents
/// as the password of `run`.
const CREDENTIAL_HELPER: &str = concat!(
    "!f() { test \"$1\" = get || exit 0; echo username=run; ",
    "printf 'password=%s\\n' \"$(cat \"$CLAUDE_OPERATOR_GIT_CAPABILITY_FILE\")\"; }; f"
);

/// Author and committer of the commit the runner makes.
const COMMITTER_NAME: &str = "Claude";
const COMMITTER_EMAIL: &str = "noreply@anthropic.com";

#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error("could not start git: {0}")]
    Spawn(#[source] std::io::Error),
    #[error("git {command} failed ({status}): {stderr}")]
    Failed {
        command: String,
        status: std::process::ExitStatus,
        stderr: String,
    },
    #[error("the admitted head commit {0} is not in the repository")]
    HeadMissing(String),
    #[error("could not read or restore {path}: {source}")]
    Config {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// How to reach one repository.
#[derive(Clone, Debug)]
pub struct Remote {
    /// `<gateway>/git/<owner>/<name>.git`, without credentials.
    pub url: String,
    /// The part of the URL the credential helper is scoped to: the gateway
    /// (git matches credential configuration by scheme, host and port).
    pub base_url: String,
    pub capability_file: PathBuf,
}

impl Remote {
    pub fn new(gateway_url: &str, repository: &str, capability_file: &Path) -> Self {
        let base_url = gateway_url.trim_end_matches('/').to_owned();
        Remote {
            url: format!("{base_url}/git/{repository}.git"),
            base_url,
            capability_file: capability_file.to_owned(),
        }
    }

    /// A git command: cleared environment (plus `PATH`, `HOME`, `LANG`), no
    /// prompts, no system or global configuration, no hooks, no fsmonitor,
    /// and the credential helper for this remote's host only.
    fn git(&self, dir: Option<&Path>) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new("git");
        cmd.env_clear();
        for name in ["PATH", "HOME", "LANG", "LC_ALL", "TZ"] {
            if let Some(value) = std::env::var_os(name) {
                cmd.env(name, value);
            }
        }
        cmd.env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env(CAPABILITY_FILE_VAR, &self.capability_file)
            .args(["-c", "credential.helper="])
            .arg("-c")
            .arg(format!("credential.{}.helper={CREDENTIAL_HELPER}", self.base_url))
            .args(["-c", "core.hooksPath=/dev/null", "-c", "core.fsmonitor=false"])
            .args(["-c", "protocol.allow=never", "-c", "protocol.https.allow=always"])
            .args(["-c", "protocol.http.allow=always"])
            .stdin(Stdio::null())
            .kill_on_drop(true);
        if let Some(dir) = dir {
            cmd.current_dir(dir);
        }
        cmd
    }

    async fn run<I, S>(&self, dir: Option<&Path>, args: I) -> Result<String, GitError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let args: Vec<_> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
        let output = self.git(dir).args(&args).output().await.map_err(GitError::Spawn)?;
        if !output.status.success() {
            let command = args
                .first()
                .map(|a| a.to_string_lossy().into_owned())
                .unwrap_or_default();
            let stderr = String::from_utf8_lossy(&output.stderr);
            let stderr = stderr.trim();
            let stderr = match stderr.char_indices().nth(1000) {
                Some((cut, _)) => format!("{}…", &stderr[..cut]),
                None => stderr.to_owned(),
            };
            return Err(GitError::Failed {
                command,
                status: output.status,
                stderr,
            });
        }
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
    }

    /// Clones into `dir`; for a pull request, fetches `pull/<n>/head` and
    /// checks it out (detached); with `head_sha`, checks out exactly that
    /// commit (fetched by id when the pull request's head moved on), or fails.
    pub async fn clone(&self, dir: &Path, pull_request: Option<u64>, head_sha: Option<&str>) -> Result<(), GitError> {
        self.run(
            None,
            [
                OsStr::new("clone"),
                OsStr::new("--quiet"),
                OsStr::new("--no-recurse-submodules"),
                OsStr::new(&self.url),
                dir.as_os_str(),
            ],
        )
        .await?;
        if let Some(n) = pull_request {
            let local = format!("refs/remotes/origin/pull/{n}");
            self.run(
                Some(dir),
                [
                    "fetch",
                    "--quiet",
                    "--no-tags",
                    &self.url,
                    &format!("+refs/pull/{n}/head:{local}"),
                ],
            )
            .await?;
            if head_sha.is_none() {
                self.run(Some(dir), ["checkout", "--quiet", "--detach", &local]).await?;
            }
        }
        if let Some(sha) = head_sha {
            let commit = format!("{sha}^{{commit}}");
            if self.run(Some(dir), ["cat-file", "-e", &commit]).await.is_err() {
                // Not reachable from what was fetched: ask for it by id.
                let _ = self
                    .run(Some(dir), ["fetch", "--quiet", "--no-tags", &self.url, sha])
                    .await;
                if self.run(Some(dir), ["cat-file", "-e", &commit]).await.is_err() {
                    return Err(GitError::HeadMissing(sha.to_owned()));
                }
            }
            self.run(Some(dir), ["checkout", "--quiet", "--detach", sha]).await?;
            if self.head(dir).await? != sha {
                return Err(GitError::HeadMissing(sha.to_owned()));
            }
        }
        Ok(())
    }

    /// The default branch of the clone (`main` for `refs/remotes/origin/main`).
    pub async fn default_branch(&self, dir: &Path) -> Option<String> {
        let head = self
            .run(Some(dir), ["symbolic-ref", "--quiet", "refs/remotes/origin/HEAD"])
            .await
            .ok()?;
        head.strip_prefix("refs/remotes/origin/").map(str::to_owned)
    }

    pub async fn head(&self, dir: &Path) -> Result<String, GitError> {
        self.run(Some(dir), ["rev-parse", "HEAD"]).await
    }

    /// Whether the work tree differs from HEAD or HEAD moved from `start`.
    pub async fn has_changes(&self, dir: &Path, start: &str) -> Result<bool, GitError> {
        let status = self
            .run(Some(dir), ["status", "--porcelain", "--untracked-files=all"])
            .await?;
        Ok(!status.is_empty() || self.head(dir).await? != start)
    }

    /// Commits everything in the work tree (if anything is uncommitted).
    pub async fn commit_all(&self, dir: &Path, message: &str) -> Result<(), GitError> {
        self.run(Some(dir), ["add", "--all"]).await?;
        let staged = self.run(Some(dir), ["diff", "--cached", "--name-only"]).await?;
        if staged.is_empty() {
            return Ok(());
        }
        let name = format!("user.name={COMMITTER_NAME}");
        let email = format!("user.email={COMMITTER_EMAIL}");
        self.run(
            Some(dir),
            [
                "-c",
                &name,
                "-c",
                &email,
                "commit",
                "--quiet",
                "--no-verify",
                "--no-gpg-sign",
                "-m",
                message,
            ],
        )
        .await?;
        Ok(())
    }

    /// Pushes HEAD to `refs/heads/<branch>` of the remote URL (never a
    /// remote name): `claude/<run>`, or the pull request's own branch,
    /// which git (and the gateway) move only by a fast-forward.
    pub async fn push(&self, dir: &Path, branch: &str) -> Result<String, GitError> {
        self.run(
            Some(dir),
            [
                "push",
                "--quiet",
                "--no-verify",
                "--porcelain",
                &self.url,
                &format!("HEAD:refs/heads/{branch}"),
            ],
        )
        .await?;
        Ok(branch.to_owned())
    }
}

/// A saved copy of the clone's `.git/config`, put back after Claude ran.
pub struct SavedConfig {
    path: PathBuf,
    contents: Vec<u8>,
}

impl SavedConfig {
    pub async fn save(clone: &Path) -> Result<Self, GitError> {
        let path = clone.join(".git").join("config");
        let contents = tokio::fs::read(&path).await.map_err(|source| GitError::Config {
            path: path.clone(),
            source,
        })?;
        Ok(SavedConfig { path, contents })
    }

    pub async fn restore(&self) -> Result<(), GitError> {
        // Replace, not write through: the path may have become a symlink.
        let _ = tokio::fs::remove_file(&self.path).await;
        tokio::fs::write(&self.path, &self.contents)
            .await
            .map_err(|source| GitError::Config {
                path: self.path.clone(),
                source,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_remote_is_the_gateways_and_carries_no_credentials() {
        let r = Remote::new("http://10.96.0.20:8081/", "octo/hello", Path::new("/run/cap"));
        assert_eq!(r.url, "http://10.96.0.20:8081/git/octo/hello.git");
        assert_eq!(r.base_url, "http://10.96.0.20:8081");
    }

    #[test]
    fn the_credential_helper_reads_the_file_and_names_no_secret() {
        assert!(CREDENTIAL_HELPER.contains("$CLAUDE_OPERATOR_GIT_CAPABILITY_FILE"));
        assert!(CREDENTIAL_HELPER.starts_with('!'));
        let r = Remote::new("http://127.0.0.1:9", "o/r", Path::new("/run/token"));
        let cmd = r.git(None);
        let args: Vec<String> = cmd
            .as_std()
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert!(args.contains(&format!("credential.http://127.0.0.1:9.helper={CREDENTIAL_HELPER}")));
        assert!(args.contains(&"core.hooksPath=/dev/null".to_owned()));
        let envs: Vec<_> = cmd.as_std().get_envs().collect();
        assert!(envs.contains(&(OsStr::new(CAPABILITY_FILE_VAR), Some(OsStr::new("/run/token")))));
        assert!(
            !envs
                .iter()
                .any(|(k, _)| k.to_string_lossy().to_lowercase().contains("proxy"))
        );
    }
}
