//! The receiver's pure intake path for one delivery: verify the signature,
//! parse the event, find the trigger phrase and match the repository to a
//! policy, on GitHub's example `issue_comment` payload: 14 KiB compact, so
//! above the 10 KiB the target names (the comment is padded only when a
//! fixture is smaller), and the figure is a conservative one.

use std::hint::black_box;

use claude_operator::admission::matching::{Match, PolicyMatcher};
use claude_operator::github::events::{Parsed, parse};
use claude_operator::github::signature::{WebhookSecrets, sign};
use claude_operator::github::trigger::find_trigger;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

const TARGET_BYTES: usize = 10 * 1024;

fn payload() -> Vec<u8> {
    let text = include_str!("../tests/fixtures/webhooks/issue_comment.created.json");
    let mut v: serde_json::Value = serde_json::from_str(text).unwrap();
    // GitHub sends compact JSON; pad the comment so the whole is at least 10 KiB.
    let compact = serde_json::to_vec(&v).unwrap().len();
    let mut body = String::from(
        "Thanks for the report.\n\n> quoted @claude text is ignored\n\n@claude please fix the typo in `README.md` and add a test.\n\n",
    );
    let line = "Some more context about the problem, with a [link](https://example.com) and `code`.\n";
    while compact + body.len() + line.len() < TARGET_BYTES {
        body.push_str(line);
    }
    v["comment"]["body"] = serde_json::Value::String(body);
    serde_json::to_vec(&v).unwrap()
}

fn matcher() -> PolicyMatcher {
    PolicyMatcher::new((0..50).map(|i| {
        let owner = if i == 7 {
            "Codertocat".to_owned()
        } else {
            format!("org-{i}")
        };
        (
            format!("team-{i}"),
            "policy".to_owned(),
            vec![format!("{owner}/Hello-*"), format!("{owner}/svc-?")],
        )
    }))
}

fn intake(c: &mut Criterion) {
    let body = payload();
    let secrets = WebhookSecrets::from_file_contents("old-secret\ncurrent-secret\n").unwrap();
    let header = sign("current-secret", &body);
    let matcher = matcher();

    let mut group = c.benchmark_group("webhook_intake");
    group.throughput(Throughput::Bytes(body.len() as u64));
    group.bench_function(format!("verify+parse+trigger+match {} bytes", body.len()), |b| {
        b.iter(|| {
            secrets.verify(Some(black_box(&header)), black_box(&body)).unwrap();
            let Parsed::Candidate(candidate) = parse("issue_comment", black_box(&body)).unwrap() else {
                panic!("not a candidate")
            };
            let instruction = find_trigger(&candidate.body, "@claude").unwrap();
            let policy = matcher.match_repository(&candidate.repository);
            assert!(matches!(policy, Match::One(_)));
            black_box((instruction, policy))
        })
    });
    group.bench_function("verify only", |b| {
        b.iter(|| secrets.verify(Some(black_box(&header)), black_box(&body)))
    });
    group.bench_function("parse only", |b| b.iter(|| parse("issue_comment", black_box(&body))));
    group.finish();
}

criterion_group!(benches, intake);
criterion_main!(benches);
