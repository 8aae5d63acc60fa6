//! The runner's few GitHub REST calls, made through the gateway's `/github`
//! with the run's capability (the gateway adds the token): a comment on the
//! issue or pull request, and a draft pull request from `claude/<run>`.
//! Failures are returned, never retried for long: the caller records them in
//! the report.

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};

#[derive(Debug, thiserror::Error)]
pub enum GithubError {
    #[error("GitHub API client: {0}")]
    Client(#[source] octocrab::Error),
    #[error("GitHub API request {route} failed: {source}")]
    Request {
        route: String,
        #[source]
        source: octocrab::Error,
    },
}

/// A client for one repository.
pub struct Github {
    client: octocrab::Octocrab,
    repository: String,
}

impl Github {
    pub fn new(api_url: &str, repository: &str, token: &SecretString) -> Result<Self, GithubError> {
        let client = octocrab::Octocrab::builder()
            .base_uri(api_url.trim_end_matches('/'))
            .map_err(GithubError::Client)?
            .personal_token(token.expose_secret().to_owned())
            .set_connect_timeout(Some(Duration::from_secs(10)))
            .set_read_timeout(Some(Duration::from_secs(30)))
            .build()
            .map_err(GithubError::Client)?;
        Ok(Github {
            client,
            repository: repository.to_owned(),
        })
    }

    /// Comments on an issue or pull request; returns the comment's URL.
    pub async fn comment(&self, number: u64, body: &str) -> Result<Option<String>, GithubError> {
        let route = format!("/repos/{}/issues/{number}/comments", self.repository);
        self.post(route, json!({ "body": body })).await
    }

    /// Opens a draft pull request of `head` into `base`; returns its URL.
    pub async fn draft_pull_request(
        &self,
        title: &str,
        head: &str,
        base: &str,
        body: &str,
    ) -> Result<Option<String>, GithubError> {
        let route = format!("/repos/{}/pulls", self.repository);
        let request = json!({ "title": title, "head": head, "base": base, "body": body, "draft": true });
        self.post(route, request).await
    }

    async fn post(&self, route: String, body: Value) -> Result<Option<String>, GithubError> {
        let response: Value = self
            .client
            .post(&route, Some(&body))
            .await
            .map_err(|source| GithubError::Request { route, source })?;
        Ok(response.get("html_url").and_then(Value::as_str).map(str::to_owned))
    }
}
