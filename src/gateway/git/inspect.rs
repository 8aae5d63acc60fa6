//! The content check of a push: what the pushed commits really change,
//! established with the `git` binary in a private temporary repository, not
//! taken from the client.
//!
//! The base commits (the branch's current value, the admitted head or the
//! default branch's tip) are fetched from upstream at depth 1, the pushed
//! pack is indexed against them, and then: the new value must be a commit; an
//! update must be a fast-forward; every commit the push adds is diffed
//! against each of its parents (a parent the gateway cannot see refuses the
//! push) and no changed path may be protected; every object the push adds
//! (blobs, trees, commits, tags) is scanned for credentials.
//!
//! Blocking: run it on a blocking thread. The token reaches git through the
//! environment only (`GIT_CONFIG_*`), never argv.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use axum::http::StatusCode;
use globset::GlobSet;

use super::pkt::is_oid;
use super::policy::{self, PushKind, PushPlan};
use crate::gateway::{Refusal, reasons};

/// What to check.
pub struct Push<'a> {
    /// `<github_git_url>/<owner>/<name>.git`.
    pub upstream_url: &'a str,
    /// The `Authorization` header value for upstream (a secret).
    pub authorization: &'a str,
    /// The run's token (scanned for, and redacted from anything git prints).
    pub token: &'a str,
    /// The admitted command.
    pub plan: &'a PushPlan,
    /// The admitted head commit, when the run has one.
    pub head_sha: Option<&'a str>,
    /// The pushed pack (may be empty when the push adds no object).
    pub pack: &'a [u8],
    /// Protected paths.
    pub protected: &'a GlobSet,
    /// Most bytes the added objects may hold uncompressed.
    pub max_unpacked_bytes: u64,
}

/// A temporary directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> std::io::Result<TempDir> {
        let mut bytes = [0u8; 12];
        getrandom::fill(&mut bytes).map_err(|e| std::io::Error::other(e.to_string()))?;
        let path = std::env::temp_dir().join(format!("co-gitguard-{}", hex::encode(bytes)));
        std::fs::create_dir(&path)?;
        Ok(TempDir(path))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn internal(what: &str) -> Refusal {
    Refusal::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        reasons::UPSTREAM_ERROR,
        format!("the gateway could not check the push ({what}); nothing was pushed"),
    )
}

fn malformed(message: impl Into<String>) -> Refusal {
    Refusal::new(StatusCode::FORBIDDEN, reasons::MALFORMED, message)
}

struct Repo<'a> {
    dir: PathBuf,
    home: PathBuf,
    push: &'a Push<'a>,
}

struct Out {
    ok: bool,
    code: Option<i32>,
    stdout: Vec<u8>,
}

impl Repo<'_> {
    fn command(&self, with_auth: bool) -> Command {
        let mut cmd = Command::new("git");
        cmd.current_dir(&self.dir)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", &self.home)
            .env("XDG_CONFIG_HOME", &self.home)
            .env("GIT_DIR", &self.dir)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_NO_REPLACE_OBJECTS", "1")
            .env("GIT_ALLOW_PROTOCOL", "http:https")
            .env("LC_ALL", "C");
        // Settings come through the environment: argv is visible to every
        // process on the node, and the token must not be.
        let mut config: Vec<(&str, &str)> = vec![
            ("protocol.version", "2"),
            ("http.lowSpeedLimit", "1000"),
            ("http.lowSpeedTime", "60"),
            ("credential.helper", ""),
            ("core.hooksPath", "/dev/null"),
        ];
        let header;
        if with_auth {
            header = format!("Authorization: {}", self.push.authorization);
            config.push(("http.extraHeader", &header));
        }
        cmd.env("GIT_CONFIG_COUNT", config.len().to_string());
        for (i, (k, v)) in config.iter().enumerate() {
            cmd.env(format!("GIT_CONFIG_KEY_{i}"), k)
                .env(format!("GIT_CONFIG_VALUE_{i}"), v);
        }
        cmd
    }

    /// Runs git; `stdin` is a file to read, or nothing.
    fn run(&self, args: &[&str], stdin: Option<&Path>, with_auth: bool) -> Result<Out, Refusal> {
        let mut cmd = self.command(with_auth);
        cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
        match stdin {
            Some(p) => cmd.stdin(std::fs::File::open(p).map_err(|_| internal("opening the pack"))?),
            None => cmd.stdin(Stdio::null()),
        };
        let out = cmd.output().map_err(|_| internal("running git"))?;
        if !out.status.success() {
            // git does not print credentials, but this line must never carry one.
            let mut stderr = String::from_utf8_lossy(&out.stderr).into_owned();
            let encoded = self.push.authorization.trim_start_matches("Basic ");
            for secret in [self.push.token, encoded] {
                if !secret.is_empty() {
                    stderr = stderr.replace(secret, "[redacted]");
                }
            }
            tracing::debug!(args = ?args, stderr = %stderr.trim(), "git check step failed");
        }
        Ok(Out {
            ok: out.status.success(),
            code: out.status.code(),
            stdout: out.stdout,
        })
    }

    fn lines(out: &Out) -> Vec<String> {
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect()
    }
}

/// Whether this process can check pushes: the `git` binary runs and the
/// temporary directory is writable. The gateway should refuse to start
/// without them (pushes would all be refused, failing closed).
pub fn preflight() -> Result<(), String> {
    let out = Command::new("git")
        .arg("--version")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("the gateway needs the git binary to check pushes: {e}"))?;
    if !out.status.success() {
        return Err("the gateway needs the git binary to check pushes: `git --version` failed".into());
    }
    TempDir::new().map(drop).map_err(|e| {
        format!(
            "the gateway needs a writable temporary directory ({}) to check pushes: {e}",
            std::env::temp_dir().display()
        )
    })
}

/// Checks a push; `Ok` means it may be forwarded as it is.
pub fn check(push: &Push<'_>) -> Result<(), Refusal> {
    let tmp = TempDir::new().map_err(|_| internal("creating a temporary directory"))?;
    let repo = Repo {
        dir: tmp.0.join("repo.git"),
        home: tmp.0.clone(),
        push,
    };
    let format = if push.plan.new.len() == 64 { "sha256" } else { "sha1" };
    let init = Command::new("git")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", &tmp.0)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .args(["init", "--quiet", "--bare", &format!("--object-format={format}")])
        .arg(&repo.dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(|_| internal("running git"))?;
    if !init.success() {
        return Err(internal("git init"));
    }

    // The bases: what the client's thin pack may build on.
    let mut wants: Vec<&str> = Vec::new();
    if let PushKind::Update { old } = &push.plan.kind {
        wants.push(old);
    }
    match push.head_sha {
        Some(h) if is_oid(h) => wants.push(h),
        Some(_) => return Err(internal("the admitted head is not an object id")),
        None => wants.push("HEAD"),
    }
    let mut args = vec!["fetch", "--quiet", "--depth=1", "--no-tags", push.upstream_url];
    args.extend(wants.iter().copied());
    if !repo.run(&args, None, true)?.ok {
        return Err(Refusal::new(
            StatusCode::BAD_GATEWAY,
            reasons::UPSTREAM_ERROR,
            "the gateway could not fetch the push's base commits from upstream; nothing was pushed",
        ));
    }
    let fetch_head =
        std::fs::read_to_string(repo.dir.join("FETCH_HEAD")).map_err(|_| internal("reading FETCH_HEAD"))?;
    let bases: Vec<String> = fetch_head
        .lines()
        .filter_map(|l| l.split('\t').next())
        .filter(|oid| is_oid(oid))
        .map(str::to_owned)
        .collect();
    if bases.is_empty() {
        return Err(internal("no base commit"));
    }

    let present: HashSet<String> = Repo::lines(&repo.run(
        &["cat-file", "--batch-all-objects", "--batch-check=%(objectname)"],
        None,
        false,
    )?)
    .into_iter()
    .collect();

    // The pushed objects: what the pack adds to what upstream already had.
    let mut pushed: Vec<String> = Vec::new();
    if !push.pack.is_empty() {
        if !push.pack.starts_with(b"PACK") {
            return Err(malformed("the push's pack is malformed"));
        }
        let pack_file = tmp.0.join("push.pack");
        std::fs::write(&pack_file, push.pack).map_err(|_| internal("writing the pack"))?;
        let indexed = repo.run(&["index-pack", "--stdin", "--fix-thin"], Some(&pack_file), false)?;
        let name = Repo::lines(&indexed)
            .into_iter()
            .find_map(|l| {
                l.strip_prefix("pack\t")
                    .or_else(|| l.strip_prefix("keep\t"))
                    .map(str::to_owned)
            })
            .filter(|h| is_oid(h));
        let (true, Some(name)) = (indexed.ok, name) else {
            return Err(malformed(
                "the push's pack could not be read against the branch's base; base the commits on the \
                 branch's current tip or the admitted head and push again",
            ));
        };
        let idx = repo.dir.join("objects/pack").join(format!("pack-{name}.idx"));
        let listed = repo.run(&["show-index"], Some(&idx), false)?;
        if !listed.ok {
            return Err(internal("listing the pack"));
        }
        for line in Repo::lines(&listed) {
            let oid = line.split_whitespace().nth(1).unwrap_or_default();
            if !is_oid(oid) {
                return Err(internal("listing the pack"));
            }
            if !present.contains(oid) {
                pushed.push(oid.to_owned());
            }
        }
    }

    let new = &push.plan.new;
    let kind = repo.run(&["cat-file", "-t", new], None, false)?;
    if !kind.ok || Repo::lines(&kind).first().map(String::as_str) != Some("commit") {
        return Err(malformed(format!(
            "{} must point to a commit the push carries",
            push.plan.refname
        )));
    }
    if let PushKind::Update { old } = &push.plan.kind {
        let ff = repo.run(&["merge-base", "--is-ancestor", old, new], None, false)?;
        if ff.code != Some(0) {
            return Err(Refusal::new(
                StatusCode::FORBIDDEN,
                reasons::REF_NOT_ALLOWED,
                format!("{} may only be fast-forwarded (no force push)", push.plan.refname),
            ));
        }
    }

    // Every commit the push adds, against each of its parents.
    let mut rev_list: Vec<&str> = vec!["rev-list", new, "--not"];
    rev_list.extend(bases.iter().map(String::as_str));
    let commits = repo.run(&rev_list, None, false)?;
    if !commits.ok {
        return Err(malformed(
            "the pushed commits build on history the gateway cannot see; base them on the branch's current \
             tip or the admitted head and push again",
        ));
    }
    let mut blob_paths: HashMap<String, String> = HashMap::new();
    for commit in Repo::lines(&commits) {
        let diff = repo.run(
            &[
                "diff-tree",
                "-r",
                "-m",
                "--root",
                "--raw",
                "-z",
                "--no-renames",
                "--no-commit-id",
                &commit,
            ],
            None,
            false,
        )?;
        if !diff.ok {
            return Err(malformed(format!(
                "the gateway cannot see a parent of the pushed commit {commit}; base the commits on the \
                 branch's current tip or the admitted head and push again"
            )));
        }
        for (new_blob, path) in parse_raw_diff(&diff.stdout).map_err(|_| internal("reading a diff"))? {
            if policy::is_protected(push.protected, &path) {
                return Err(policy::protected_refusal(&path));
            }
            if let Some(b) = new_blob {
                blob_paths.entry(b).or_insert(path);
            }
        }
    }

    scan_objects(&repo, &pushed, &blob_paths, push)
}

/// Parses `diff-tree --raw -z` output: each change's new blob (none for a
/// deletion or a submodule) and its path.
fn parse_raw_diff(out: &[u8]) -> Result<Vec<(Option<String>, String)>, ()> {
    let mut fields = out.split(|&b| b == 0);
    let mut changes = Vec::new();
    while let Some(meta) = fields.next() {
        if meta.is_empty() {
            continue;
        }
        let meta = std::str::from_utf8(meta).map_err(|_| ())?;
        let path = fields.next().filter(|p| !p.is_empty()).ok_or(())?;
        let path = String::from_utf8_lossy(path).into_owned();
        // ":<old mode> <new mode> <old oid> <new oid> <status>"
        let parts: Vec<&str> = meta.strip_prefix(':').ok_or(())?.split(' ').collect();
        let [_, new_mode, _, new_oid, status] = parts[..] else {
            return Err(());
        };
        let blob = (!status.starts_with('D') && new_mode != "160000" && !super::pkt::is_zero(new_oid))
            .then(|| new_oid.to_owned());
        changes.push((blob, path));
    }
    Ok(changes)
}

/// Bytes scanned at once, and kept from the previous window so that a
/// credential across a window boundary is still found.
const WINDOW: usize = 1 << 20;
const OVERLAP: usize = 4096;

fn scan_objects(
    repo: &Repo<'_>,
    pushed: &[String],
    blob_paths: &HashMap<String, String>,
    push: &Push<'_>,
) -> Result<(), Refusal> {
    if pushed.is_empty() {
        return Ok(());
    }
    let list = repo.home.join("pushed.txt");
    std::fs::write(&list, pushed.join("\n") + "\n").map_err(|_| internal("writing the object list"))?;
    let sizes = repo.run(&["cat-file", "--batch-check=%(objectsize)"], Some(&list), false)?;
    let mut total: u64 = 0;
    for line in Repo::lines(&sizes) {
        total = total.saturating_add(line.parse::<u64>().map_err(|_| internal("sizing the pushed objects"))?);
    }
    if !sizes.ok || total > push.max_unpacked_bytes {
        return Err(Refusal::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            reasons::TOO_LARGE,
            format!(
                "the push unpacks to more than {} bytes, the gateway's limit",
                push.max_unpacked_bytes
            ),
        ));
    }
    let mut child = repo
        .command(false)
        .args(["cat-file", "--batch"])
        .stdin(std::fs::File::open(&list).map_err(|_| internal("opening the object list"))?)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|_| internal("running git"))?;
    let stdout = child.stdout.take().ok_or_else(|| internal("running git"))?;
    let found = scan_batch(BufReader::new(stdout), push.token);
    let _ = child.kill();
    let status = child.wait().map_err(|_| internal("running git"))?;
    match found {
        Err(()) => Err(internal("reading the pushed objects")),
        Ok(Some(found)) => {
            let place = blob_paths
                .get(&found.oid)
                .map(|p| format!("in {p}"))
                .unwrap_or_else(|| format!("in the {} {}", found.object_type, found.oid));
            let kind = found.credential;
            Err(Refusal::new(
                StatusCode::FORBIDDEN,
                reasons::CREDENTIAL_IN_CONTENT,
                format!("the push carries a credential ({kind}) {place}; remove it from the commits and push again"),
            ))
        }
        Ok(None) if status.success() => Ok(()),
        Ok(None) => Err(internal("reading the pushed objects")),
    }
}

/// An object carrying a credential.
#[derive(Debug, PartialEq, Eq)]
struct Found {
    oid: String,
    object_type: String,
    credential: &'static str,
}

/// Reads `cat-file --batch` output and scans each object; the first object
/// carrying a credential.
fn scan_batch(mut r: impl BufRead, token: &str) -> Result<Option<Found>, ()> {
    let mut header = String::new();
    let mut window: Vec<u8> = Vec::with_capacity(WINDOW + OVERLAP);
    loop {
        header.clear();
        if r.read_line(&mut header).map_err(|_| ())? == 0 {
            return Ok(None);
        }
        let mut parts = header.split_whitespace();
        let (Some(oid), Some(object_type), Some(size)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(());
        };
        let (oid, object_type) = (oid.to_owned(), object_type.to_owned());
        let mut left: u64 = size.parse().map_err(|_| ())?;
        window.clear();
        let mut chunk = vec![0u8; WINDOW];
        loop {
            let want = usize::try_from(left.min(WINDOW as u64)).map_err(|_| ())?;
            r.read_exact(&mut chunk[..want]).map_err(|_| ())?;
            left -= want as u64;
            window.extend_from_slice(&chunk[..want]);
            if let Some(credential) = crate::gateway::scan::find_credential(&window, &[token]) {
                return Ok(Some(Found {
                    oid,
                    object_type,
                    credential,
                }));
            }
            if left == 0 {
                break;
            }
            let keep = window.len().min(OVERLAP);
            window.drain(..window.len() - keep);
        }
        let mut lf = [0u8; 1];
        r.read_exact(&mut lf).map_err(|_| ())?;
        if lf[0] != b'\n' {
            return Err(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preflight_passes_where_git_is_installed() {
        preflight().unwrap();
    }

    #[test]
    fn raw_diffs_parse() {
        let z = "0".repeat(40);
        let a = "a".repeat(40);
        let b = "b".repeat(40);
        let out = format!(
            ":100644 100644 {a} {b} M\0src/x.rs\0:000000 100644 {z} {a} A\0new file\0:100644 000000 {a} {z} D\0gone\0:000000 160000 {z} {b} A\0sub\0"
        );
        let got = parse_raw_diff(out.as_bytes()).unwrap();
        assert_eq!(
            got,
            vec![
                (Some(b.clone()), "src/x.rs".to_string()),
                (Some(a.clone()), "new file".to_string()),
                (None, "gone".to_string()),
                (None, "sub".to_string()),
            ]
        );
        assert!(parse_raw_diff(b":100644 M\0x\0").is_err());
        assert!(parse_raw_diff(format!(":100644 100644 {a} {b} M\0").as_bytes()).is_err());
    }

    fn batch(objects: &[(&str, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        for (oid, content) in objects {
            out.extend_from_slice(format!("{oid} blob {}\n", content.len()).as_bytes());
            out.extend_from_slice(content);
            out.push(b'\n');
        }
        out
    }

    #[test]
    fn the_batch_scan_finds_the_token_anywhere_even_across_windows() {
        let token = "tok-1234567890";
        let clean = batch(&[("a", b"hello"), ("b", b"")]);
        assert_eq!(scan_batch(&clean[..], token).unwrap(), None);

        let mut big = vec![b'x'; WINDOW - 5];
        big.extend_from_slice(token.as_bytes());
        big.extend_from_slice(&[b'y'; 100]);
        let dirty = batch(&[("a", b"hello"), ("b", &big)]);
        assert_eq!(
            scan_batch(&dirty[..], token).unwrap().map(|f| f.oid),
            Some("b".to_string())
        );

        let mut late = vec![b'x'; 3 * WINDOW + 17];
        late.extend_from_slice(token.as_bytes());
        let dirty = batch(&[("c", &late)]);
        assert_eq!(
            scan_batch(&dirty[..], token).unwrap().map(|f| f.oid),
            Some("c".to_string())
        );

        assert!(scan_batch(&b"a blob 10\nshort"[..], token).is_err());
        assert!(scan_batch(&b"garbage\n"[..], token).is_err());
    }
}
