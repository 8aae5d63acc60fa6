//! The tests' fake GitHub (`tests/support/fake_github.rs`) as a standalone
//! process, for `make demo` (`e2e/demo.sh`) and for poking at the operator by
//! hand:
//!
//! ```sh
//! cargo run --example fake_github -- --listen 127.0.0.1:28081 \
//!     --key-out app.pem --setup setup.json --url-out url --stats-out stats.json
//! ```
//!
//! It generates a fresh GitHub App key (App id 4242) and writes its private
//! key PEM to `--key-out` (mode 0600), configures users, repository roles,
//! organization and team members and App installations from `--setup`, and
//! serves until SIGTERM or Ctrl-C. `--stats-out` is rewritten every second
//! (atomically) with what the operator did to GitHub: tokens minted and
//! revoked per repository, comments posted, reactions, requests; the same
//! summary is printed on exit.
//!
//! The fake itself binds an ephemeral port; `--listen` puts a plain TCP
//! forwarder on a fixed address in front of it. `--url-out` receives the base
//! URL to give the operator (`--github-api-url`).
//!
//! The setup file:
//!
//! ```json
//! {
//!   "installations": {"acme/api": 77},
//!   "users": [
//!     {"login": "alice", "id": 1001, "roles": {"acme/api": "write"},
//!      "orgs": ["acme"], "teams": ["acme/platform"]},
//!     {"login": "mallory", "id": 6666}
//!   ]
//! }
//! ```

#[path = "../tests/support/fake_github.rs"]
mod fake_github;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use fake_github::{APP_ID, FakeGitHub};
use serde::Deserialize;
use serde_json::{Value, json};

/// A fake GitHub REST API (the tests' fake) as a standalone process.
#[derive(Parser, Debug)]
#[command(name = "fake_github")]
struct Args {
    /// Serve on this address (a TCP forwarder in front of the fake's own
    /// ephemeral port). Without it, the fake's own address is used.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Write the GitHub App's private key (PEM) here.
    #[arg(long)]
    key_out: PathBuf,
    /// JSON file with installations and users (see the module docs).
    #[arg(long)]
    setup: Option<PathBuf>,
    /// Write the base URL to give the operator here, once serving.
    #[arg(long)]
    url_out: Option<PathBuf>,
    /// Rewrite this JSON file every second with tokens minted/revoked,
    /// comments and requests.
    #[arg(long)]
    stats_out: Option<PathBuf>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Setup {
    /// `owner/name` -> installation id.
    #[serde(default)]
    installations: BTreeMap<String, i64>,
    #[serde(default)]
    users: Vec<SetupUser>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetupUser {
    login: String,
    id: i64,
    /// `User` (default), `Bot` or `Organization`.
    #[serde(default = "user_type", rename = "type")]
    type_: String,
    /// `owner/name` -> role (`read`, `triage`, `write`, `maintain`, `admin`).
    #[serde(default)]
    roles: BTreeMap<String, String>,
    /// Organizations the user is a member of.
    #[serde(default)]
    orgs: Vec<String>,
    /// `org/team-slug` the user is an active member of.
    #[serde(default)]
    teams: Vec<String>,
}

fn user_type() -> String {
    "User".into()
}

fn apply(fake: &FakeGitHub, setup: &Setup) -> Result<(), String> {
    for (repository, id) in &setup.installations {
        if !repository.contains('/') {
            return Err(format!("installation {repository:?}: expected owner/name"));
        }
        fake.install(repository, *id);
    }
    for u in &setup.users {
        fake.add_user(&u.login, u.id, &u.type_);
        for (repository, role) in &u.roles {
            if !["read", "triage", "write", "maintain", "admin"].contains(&role.as_str()) {
                return Err(format!("{}: unknown role {role:?} on {repository}", u.login));
            }
            fake.set_role(repository, &u.login, role);
        }
        for org in &u.orgs {
            fake.add_org_member(org, &u.login);
        }
        for team in &u.teams {
            let (org, slug) = team
                .split_once('/')
                .ok_or_else(|| format!("{}: team {team:?} is not org/slug", u.login))?;
            fake.set_team_membership(org, slug, &u.login, "active");
        }
    }
    Ok(())
}

fn stats(fake: &FakeGitHub) -> Value {
    let s = fake.state();
    let total = |m: &BTreeMap<String, u32>| m.values().sum::<u32>();
    // Tokens scoped to repositories (the per-run tokens) apart from
    // installation-wide ones (`*`: the operator's own, for its API lookups).
    let scoped = |m: &BTreeMap<String, u32>| m.iter().filter(|(k, _)| *k != "*").map(|(_, v)| v).sum::<u32>();
    let comments: Vec<Value> = s
        .comments
        .iter()
        .map(|(id, (repo, number, body))| json!({"id": id, "repository": repo, "number": number, "body": body}))
        .collect();
    let reactions: Vec<Value> = s
        .reactions
        .iter()
        .map(|(id, content)| json!({"comment_id": id, "content": content}))
        .collect();
    let live = s.tokens.values().filter(|t| !t.revoked).count();
    json!({
        "minted": s.minted,
        "revoked": s.revoked,
        "minted_total": total(&s.minted),
        "revoked_total": total(&s.revoked),
        "minted_repository_scoped": scoped(&s.minted),
        "revoked_repository_scoped": scoped(&s.revoked),
        "minted_installation_wide": s.minted.get("*").copied().unwrap_or(0),
        "unrevoked_tokens": live,
        "comments": comments,
        "reactions": reactions,
        "requests": s.requests.iter().map(|(m, p)| format!("{m} {p}")).collect::<Vec<_>>(),
    })
}

/// Writes `contents` to `path` through a temporary file and a rename, so a
/// reader never sees half a file.
fn write_atomic(path: &Path, contents: &[u8], private: bool) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        use std::io::Write;
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        if private {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut f = options.open(&tmp)?;
        f.write_all(contents)?;
    }
    std::fs::rename(&tmp, path)
}

/// Forwards every connection on `listener` to `target`.
async fn forward(listener: tokio::net::TcpListener, target: SocketAddr) {
    loop {
        let Ok((mut inbound, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            }
        });
    }
}

fn fail(message: String) -> ! {
    eprintln!("fake_github: {message}");
    std::process::exit(2);
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let setup: Setup = match &args.setup {
        None => Setup::default(),
        Some(path) => {
            let text = std::fs::read_to_string(path).unwrap_or_else(|e| fail(format!("{}: {e}", path.display())));
            serde_json::from_str(&text).unwrap_or_else(|e| fail(format!("{}: {e}", path.display())))
        }
    };

    let fake = FakeGitHub::start().await;
    apply(&fake, &setup).unwrap_or_else(|e| fail(e));
    write_atomic(&args.key_out, fake.private_key_pem().as_bytes(), true)
        .unwrap_or_else(|e| fail(format!("{}: {e}", args.key_out.display())));

    let url = match args.listen {
        None => fake.url.clone(),
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .unwrap_or_else(|e| fail(format!("cannot listen on {addr}: {e}")));
            let served = listener.local_addr().unwrap();
            let target: SocketAddr = fake
                .url
                .trim_start_matches("http://")
                .parse()
                .unwrap_or_else(|e| fail(format!("fake URL {}: {e}", fake.url)));
            tokio::spawn(forward(listener, target));
            format!("http://{served}")
        }
    };
    if let Some(path) = &args.url_out {
        write_atomic(path, format!("{url}\n").as_bytes(), false)
            .unwrap_or_else(|e| fail(format!("{}: {e}", path.display())));
    }
    eprintln!(
        "fake_github: serving {url} (App id {APP_ID}); {} installation(s), {} user(s)",
        setup.installations.len(),
        setup.users.len()
    );

    let write_stats = |fake: &FakeGitHub| {
        if let Some(path) = &args.stats_out {
            let body = serde_json::to_vec_pretty(&stats(fake)).unwrap();
            if let Err(e) = write_atomic(path, &body, false) {
                eprintln!("fake_github: {}: {e}", path.display());
            }
        }
    };
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .unwrap_or_else(|e| fail(format!("SIGTERM handler: {e}")));
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tick.tick() => write_stats(&fake),
            _ = sigterm.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    write_stats(&fake);
    let s = stats(&fake);
    eprintln!(
        "fake_github: stopping; tokens minted {} (per repository {}), revoked {} (per repository {}), {} comment(s) posted, {} request(s)",
        s["minted_total"],
        s["minted"],
        s["revoked_total"],
        s["revoked"],
        s["comments"].as_array().map_or(0, Vec::len),
        s["requests"].as_array().map_or(0, Vec::len),
    );
}
