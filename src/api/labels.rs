//! The labels and annotations the receiver writes on a `ClaudeRun` and the
//! controller reads: a contract between two components, so it lives in the
//! API, not in either of them.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

use super::AuthorAssociation;

/// Label: the policy a run belongs to.
pub const POLICY_LABEL: &str = "claude-operator.dev/policy";
/// Label: the run's repository (`owner.name`, or a hash when too long).
pub const REPOSITORY_LABEL: &str = "claude-operator.dev/repository";
/// Label: the issue or pull request number.
pub const NUMBER_LABEL: &str = "claude-operator.dev/number";
/// Annotation prefix on a waiting run: one approval comment to verify (JSON
/// [`ApprovalRequest`]) per key, the key named after the comment, so that no
/// comment ever displaces another (a stranger's cannot push out a
/// maintainer's). It is under `claude-operator.dev/`, so the chart's
/// admission policy lets only the operator's service accounts write it: a
/// forged approval claiming a maintainer's login cannot be planted. The
/// controller checks each once and removes it.
pub const APPROVAL_ANNOTATION_PREFIX: &str = "claude-operator.dev/approval.";
/// Most approval comments waiting to be checked on one run, counted apart
/// for authors the payload calls members of the repository (owner, member,
/// collaborator) and for everyone else: strangers' comments never take a
/// member's place. Past it a comment is not recorded.
pub const MAX_PENDING_APPROVALS: usize = 10;

/// An approval comment, to be verified by the controller.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApprovalRequest {
    #[serde(skip)]
    pub namespace: String,
    #[serde(skip)]
    pub repository: String,
    #[serde(skip)]
    pub number: i64,
    pub login: String,
    pub id: i64,
    pub comment_id: Option<i64>,
    pub delivery_id: String,
    /// The author's association as the payload states it: only decides
    /// which bound the comment counts against, never whether it approves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub association: Option<AuthorAssociation>,
}

impl ApprovalRequest {
    /// The annotation key this comment is recorded under: its comment id
    /// (a redelivery lands on the same key), else a hash of its delivery.
    pub fn annotation_key(&self) -> String {
        match self.comment_id {
            Some(id) => format!("{APPROVAL_ANNOTATION_PREFIX}c-{id}"),
            None => {
                let digest = Sha256::digest(self.delivery_id.as_bytes());
                format!("{APPROVAL_ANNOTATION_PREFIX}d-{}", &hex::encode(digest)[..32])
            }
        }
    }

    /// Whether the payload says the author belongs to the repository.
    pub fn from_member(&self) -> bool {
        matches!(
            self.association,
            Some(AuthorAssociation::Owner | AuthorAssociation::Member | AuthorAssociation::Collaborator)
        )
    }
}

/// The approval comments recorded on a run, by annotation key (in key
/// order); one that does not parse is `None` (removed and never approves).
pub fn approval_requests(annotations: &BTreeMap<String, String>) -> Vec<(String, Option<ApprovalRequest>)> {
    annotations
        .iter()
        .filter(|(k, _)| k.starts_with(APPROVAL_ANNOTATION_PREFIX))
        .map(|(k, v)| (k.clone(), serde_json::from_str(v).ok()))
        .collect()
}

/// Whether `request` may be recorded on a run with these annotations: it is
/// there already (a redelivery: recording again changes nothing), or fewer
/// than [`MAX_PENDING_APPROVALS`] comments of its kind (member or not) wait.
pub fn approval_has_room(annotations: &BTreeMap<String, String>, request: &ApprovalRequest) -> bool {
    if annotations.contains_key(&request.annotation_key()) {
        return true;
    }
    let same_kind = approval_requests(annotations)
        .iter()
        .filter(|(_, r)| r.as_ref().is_some_and(|r| r.from_member()) == request.from_member())
        .count();
    same_kind < MAX_PENDING_APPROVALS
}

/// Annotation prefix on a run that is not over: one request to cancel it
/// (JSON [`CancelRequest`]) per key, recorded by the receiver from a signed
/// delivery (a cancel comment, the issue or pull request closed) or by the
/// operator itself (a review superseded by a new push). Like approvals, only
/// the operator's service accounts may write it; the controller decides
/// whether each request may cancel, acts, and removes it.
pub const CANCEL_ANNOTATION_PREFIX: &str = "claude-operator.dev/cancel.";
/// Most cancel requests waiting to be checked on one run; past it a request
/// is not recorded (a redelivery always is).
pub const MAX_PENDING_CANCELS: usize = 10;

/// What asked to cancel a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum CancelKind {
    /// A comment with the policy's cancel phrase: it cancels only when its
    /// author is the run's trigger author or has write access.
    Comment,
    /// The issue or pull request was closed (GitHub vouched for it by
    /// signing the delivery).
    Closed,
    /// A newer trigger replaces this run (a new push to a reviewed pull
    /// request).
    Superseded,
}

/// A request to cancel a run, to be decided by the controller.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CancelRequest {
    pub kind: CancelKind,
    /// Who asked: the comment's author, who closed, who pushed.
    pub login: String,
    pub id: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment_id: Option<i64>,
    pub delivery_id: String,
}

impl CancelRequest {
    /// The annotation key this request is recorded under: per comment (a
    /// redelivery lands on the same key), else per delivery.
    pub fn annotation_key(&self) -> String {
        match self.comment_id {
            Some(id) => format!("{CANCEL_ANNOTATION_PREFIX}c-{id}"),
            None => {
                let digest = Sha256::digest(self.delivery_id.as_bytes());
                format!("{CANCEL_ANNOTATION_PREFIX}d-{}", &hex::encode(digest)[..32])
            }
        }
    }
}

/// The cancel requests recorded on a run, by annotation key; one that does
/// not parse is `None` (removed, and never cancels).
pub fn cancel_requests(annotations: &BTreeMap<String, String>) -> Vec<(String, Option<CancelRequest>)> {
    annotations
        .iter()
        .filter(|(k, _)| k.starts_with(CANCEL_ANNOTATION_PREFIX))
        .map(|(k, v)| (k.clone(), serde_json::from_str(v).ok()))
        .collect()
}

/// Whether `request` may be recorded on a run with these annotations.
pub fn cancel_has_room(annotations: &BTreeMap<String, String>, request: &CancelRequest) -> bool {
    annotations.contains_key(&request.annotation_key()) || cancel_requests(annotations).len() < MAX_PENDING_CANCELS
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(login: &str, comment: i64, association: AuthorAssociation) -> ApprovalRequest {
        ApprovalRequest {
            namespace: String::new(),
            repository: String::new(),
            number: 1,
            login: login.into(),
            id: 1,
            comment_id: Some(comment),
            delivery_id: format!("d-{comment}"),
            association: Some(association),
        }
    }

    fn recorded(requests: &[ApprovalRequest]) -> BTreeMap<String, String> {
        requests
            .iter()
            .map(|r| (r.annotation_key(), serde_json::to_string(r).unwrap()))
            .collect()
    }

    #[test]
    fn each_comment_has_its_own_key_so_none_displaces_another() {
        let maintainer = request("alice", 1, AuthorAssociation::Member);
        let stranger = request("nina", 2, AuthorAssociation::None);
        assert_ne!(maintainer.annotation_key(), stranger.annotation_key());
        let mut no_id = request("x", 0, AuthorAssociation::None);
        no_id.comment_id = None;
        let key = no_id.annotation_key();
        assert!(key.starts_with(APPROVAL_ANNOTATION_PREFIX) && key.len() - APPROVAL_ANNOTATION_PREFIX.len() <= 63);
        let annotations = recorded(&[maintainer.clone(), stranger.clone()]);
        let read = approval_requests(&annotations);
        assert_eq!(read.len(), 2);
        // What the annotation carries: who wrote which comment (the rest is
        // the run's own).
        let who = |r: &ApprovalRequest| (r.login.clone(), r.comment_id, r.association);
        let read: Vec<_> = read.iter().map(|(_, r)| who(r.as_ref().unwrap())).collect();
        assert!(read.contains(&who(&maintainer)));
        assert!(read.contains(&who(&stranger)));
    }

    #[test]
    fn strangers_fill_only_their_own_bound() {
        // Row: (strangers recorded, members recorded, comment from member?, room?)
        let table = [
            (0, 0, false, true),
            (9, 0, false, true),
            (10, 0, false, false),
            (10, 0, true, true),
            (10, 9, true, true),
            (10, 10, true, false),
            (0, 10, false, true),
        ];
        for (strangers, members, from_member, room) in table {
            let mut all = vec![];
            for i in 0..strangers {
                all.push(request(&format!("s{i}"), 100 + i, AuthorAssociation::None));
            }
            for i in 0..members {
                all.push(request(&format!("m{i}"), 200 + i, AuthorAssociation::Collaborator));
            }
            let annotations = recorded(&all);
            let association = if from_member {
                AuthorAssociation::Owner
            } else {
                AuthorAssociation::FirstTimer
            };
            let new = request("new", 999, association);
            assert_eq!(
                approval_has_room(&annotations, &new),
                room,
                "{strangers} strangers, {members} members, member: {from_member}"
            );
            if let Some(first) = all.first() {
                assert!(approval_has_room(&annotations, first), "a redelivery always fits");
            }
        }
    }

    #[test]
    fn an_unreadable_recorded_approval_is_none() {
        let annotations = BTreeMap::from([
            (format!("{APPROVAL_ANNOTATION_PREFIX}c-1"), "{".to_owned()),
            ("other/annotation".to_owned(), "x".to_owned()),
        ]);
        assert_eq!(
            approval_requests(&annotations),
            vec![(format!("{APPROVAL_ANNOTATION_PREFIX}c-1"), None)]
        );
    }

    #[test]
    fn cancel_requests_have_their_own_keys_and_a_bound() {
        let request = |comment: Option<i64>, delivery: &str| CancelRequest {
            kind: CancelKind::Comment,
            login: "alice".into(),
            id: 1,
            comment_id: comment,
            delivery_id: delivery.into(),
        };
        let a = request(Some(1), "d1");
        let b = request(None, "d2");
        assert_ne!(a.annotation_key(), b.annotation_key());
        assert!(b.annotation_key().starts_with(CANCEL_ANNOTATION_PREFIX));
        assert!(b.annotation_key().len() - "claude-operator.dev/".len() <= 63);
        let mut annotations: BTreeMap<String, String> = (0..MAX_PENDING_CANCELS as i64)
            .map(|i| {
                let r = request(Some(100 + i), "x");
                (r.annotation_key(), serde_json::to_string(&r).unwrap())
            })
            .collect();
        assert!(!cancel_has_room(&annotations, &a), "full");
        assert!(
            cancel_has_room(&annotations, &request(Some(100), "x")),
            "a redelivery fits"
        );
        annotations.insert(format!("{CANCEL_ANNOTATION_PREFIX}c-bad"), "{".into());
        let read = cancel_requests(&annotations);
        assert_eq!(read.len(), MAX_PENDING_CANCELS + 1);
        assert_eq!(read.iter().filter(|(_, r)| r.is_none()).count(), 1);
        assert_eq!(read[0].1.as_ref().unwrap().kind, CancelKind::Comment);
    }
}
