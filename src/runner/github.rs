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

/// A pull request review as Claude answers it (see
/// `github::trigger::REVIEW_FORMAT`).
#[derive(Clone, Debug, Default, PartialEq, serde::Deserialize, serde::Serialize)]
pub struct Review {
    /// The summary.
    #[serde(default)]
    pub body: String,
    /// Line comments.
    #[serde(default)]
    pub comments: Vec<LineComment>,
}

/// One line comment of a review.
#[derive(Clone, Debug, PartialEq, serde::Deserialize, serde::Serialize)]
pub struct LineComment {
    /// The file, as the pull request changes it.
    pub path: String,
    /// The line in the file's new version.
    pub line: u64,
    /// The comment.
    pub body: String,
}

impl Review {
    /// The review in Claude's answer: the JSON object it holds (the text
    /// from its first `{` to its last `}`, so a Markdown fence around it
    /// does not matter), else the whole answer as the summary with no line
    /// comment. Line comments without a path, a line or a text are dropped.
    pub fn from_answer(answer: &str) -> Review {
        let object = match (answer.find('{'), answer.rfind('}')) {
            (Some(start), Some(end)) if start < end => &answer[start..=end],
            _ => "",
        };
        let Ok(value) = serde_json::from_str::<Value>(object) else {
            return Review {
                body: answer.trim().to_owned(),
                comments: vec![],
            };
        };
        let comments = value
            .get("comments")
            .and_then(Value::as_array)
            .map(|items| {
                items
                    .iter()
                    .filter_map(|c| serde_json::from_value::<LineComment>(c.clone()).ok())
                    .filter(|c| c.line > 0 && !c.path.is_empty() && !c.body.trim().is_empty())
                    .collect()
            })
            .unwrap_or_default();
        Review {
            body: value.get("body").and_then(Value::as_str).unwrap_or_default().to_owned(),
            comments,
        }
    }
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

    /// Posts one review (`event` `COMMENT`) of pull request `number` at
    /// `commit_id`, with line comments; returns its URL.
    pub async fn review(&self, number: u64, commit_id: &str, review: &Review) -> Result<Option<String>, GithubError> {
        let route = format!("/repos/{}/pulls/{number}/reviews", self.repository);
        let request = json!({
            "commit_id": commit_id,
            "event": "COMMENT",
            "body": review.body,
            "comments": review.comments,
        });
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_review_is_read_from_the_answer() {
        let json = r#"{"body": "Two problems.", "comments": [
            {"path": "src/lib.rs", "line": 3, "body": "Off by one."},
            {"path": "src/lib.rs", "line": 0, "body": "no line"},
            {"path": "", "line": 2, "body": "no path"},
            {"line": 2, "body": "no path at all"},
            {"path": "README.md", "line": 1, "body": "Typo."}
        ]}"#;
        let want = Review {
            body: "Two problems.".into(),
            comments: vec![
                LineComment {
                    path: "src/lib.rs".into(),
                    line: 3,
                    body: "Off by one.".into(),
                },
                LineComment {
                    path: "README.md".into(),
                    line: 1,
                    body: "Typo.".into(),
                },
            ],
        };
        assert_eq!(Review::from_answer(json), want);
        assert_eq!(
            Review::from_answer(&format!("Here it is:\n```json\n{json}\n```\n")),
            want
        );
        let plain = Review::from_answer("  Looks good to me.  ");
        assert_eq!((plain.body.as_str(), plain.comments.len()), ("Looks good to me.", 0));
        let broken = Review::from_answer("{not json}");
        assert_eq!(broken.body, "{not json}");
    }
}
