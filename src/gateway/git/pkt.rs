//! git's pkt-line framing: reading a push's command list, rewriting the
//! receive-pack ref advertisement, and writing `report-status` answers.
//! Pure functions over bytes; strict, because what the gateway parses must be
//! exactly what the upstream will parse.

/// One pkt-line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pkt<'a> {
    /// `0000`.
    Flush,
    /// `0001` (protocol v2 only).
    Delim,
    /// A data line, without its length prefix.
    Data(&'a [u8]),
}

/// Largest pkt-line, length prefix included.
pub const MAX_PKT: usize = 65520;

/// Reads the pkt-line at the start of `buf`: the packet and the bytes it took.
pub fn read(buf: &[u8]) -> Result<(Pkt<'_>, usize), String> {
    let Some(head) = buf.get(..4) else {
        return Err("truncated pkt-line".into());
    };
    let len = std::str::from_utf8(head)
        .ok()
        .filter(|h| h.bytes().all(|b| b.is_ascii_hexdigit()))
        .and_then(|h| usize::from_str_radix(h, 16).ok())
        .ok_or_else(|| "bad pkt-line length".to_string())?;
    match len {
        0 => Ok((Pkt::Flush, 4)),
        1 => Ok((Pkt::Delim, 4)),
        2..=4 => Err("bad pkt-line length".into()),
        _ if len > MAX_PKT => Err("pkt-line too long".into()),
        _ => buf
            .get(4..len)
            .map(|data| (Pkt::Data(data), len))
            .ok_or_else(|| "truncated pkt-line".into()),
    }
}

/// One pkt-line holding `data`.
pub fn encode(data: &[u8]) -> Vec<u8> {
    let mut out = format!("{:04x}", data.len() + 4).into_bytes();
    out.extend_from_slice(data);
    out
}

/// The flush packet.
pub const FLUSH: &[u8] = b"0000";

/// Whether `s` is an object id (40 or 64 lower-case hex digits).
pub fn is_oid(s: &str) -> bool {
    (s.len() == 40 || s.len() == 64) && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Whether `oid` is the null id (a create's old value, a delete's new one).
pub fn is_zero(oid: &str) -> bool {
    oid.bytes().all(|b| b == b'0')
}

/// One ref update a push asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Command {
    /// The value the client believes the ref has (zero: create).
    pub old: String,
    /// The value it wants (zero: delete).
    pub new: String,
    /// The full ref name.
    pub refname: String,
}

/// A receive-pack request, parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PushRequest {
    /// The ref updates.
    pub commands: Vec<Command>,
    /// The capabilities the client asked for (on the first command).
    pub capabilities: Vec<String>,
    /// Where the pack starts in the body (after the command list's flush).
    pub pack_offset: usize,
}

fn strip_lf(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\n").unwrap_or(line)
}

/// Parses a receive-pack request body: `<old> <new> <ref>\0<caps>`, more
/// `<old> <new> <ref>`, a flush, then the pack. Anything else (shallow lines,
/// push certificates, junk) is refused: the gateway only lets through what it
/// understands.
pub fn parse_push(body: &[u8]) -> Result<PushRequest, String> {
    let mut at = 0;
    let mut commands = Vec::new();
    let mut capabilities = Vec::new();
    loop {
        let (pkt, used) = read(&body[at..])?;
        at += used;
        let data = match pkt {
            Pkt::Flush => break,
            Pkt::Delim => return Err("unexpected delimiter packet".into()),
            Pkt::Data(d) => strip_lf(d),
        };
        let (line, caps) = if commands.is_empty() {
            match data.iter().position(|&b| b == 0) {
                Some(nul) => (&data[..nul], Some(&data[nul + 1..])),
                None => (data, None),
            }
        } else {
            (data, None)
        };
        let line = std::str::from_utf8(line).map_err(|_| "command is not UTF-8".to_string())?;
        if line.starts_with("shallow ") {
            return Err("pushes from shallow repositories are not supported; fetch the full history".into());
        }
        if line.starts_with("push-cert") {
            return Err("signed pushes are not supported".into());
        }
        let mut parts = line.split(' ');
        let (Some(old), Some(new), Some(refname), None) = (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err("malformed push command".into());
        };
        if !is_oid(old) || !is_oid(new) || old.len() != new.len() {
            return Err("malformed object id in push command".into());
        }
        if refname.is_empty() || refname.bytes().any(|b| b.is_ascii_control()) {
            return Err("malformed ref name in push command".into());
        }
        if data.contains(&0) && !commands.is_empty() {
            return Err("malformed push command".into());
        }
        if let Some(caps) = caps {
            let caps = std::str::from_utf8(caps).map_err(|_| "capabilities are not UTF-8".to_string())?;
            capabilities = caps.split(' ').filter(|c| !c.is_empty()).map(str::to_owned).collect();
        }
        commands.push(Command {
            old: old.to_owned(),
            new: new.to_owned(),
            refname: refname.to_owned(),
        });
    }
    Ok(PushRequest {
        commands,
        capabilities,
        pack_offset: at,
    })
}

/// One ref of an advertisement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdvertisedRef {
    /// Its value.
    pub oid: String,
    /// Its name (`HEAD`, `refs/heads/main`, `capabilities^{}`, `.have`).
    pub name: String,
}

/// A smart HTTP `info/refs` answer (protocol v0/v1), parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Advertisement {
    /// The service named in the `# service=` line.
    pub service: String,
    /// The refs in order.
    pub refs: Vec<AdvertisedRef>,
    /// The capabilities of the first line.
    pub capabilities: Vec<String>,
}

/// Parses an `info/refs?service=...` answer.
pub fn parse_advertisement(body: &[u8]) -> Result<Advertisement, String> {
    let (pkt, mut at) = read(body)?;
    let Pkt::Data(first) = pkt else {
        return Err("advertisement without a service line".into());
    };
    let service = std::str::from_utf8(strip_lf(first))
        .ok()
        .and_then(|l| l.strip_prefix("# service="))
        .ok_or_else(|| "advertisement without a service line".to_string())?
        .to_owned();
    let (pkt, used) = read(&body[at..])?;
    at += used;
    if pkt != Pkt::Flush {
        return Err("advertisement: no flush after the service line".into());
    }
    let mut refs = Vec::new();
    let mut capabilities = Vec::new();
    loop {
        let (pkt, used) = read(&body[at..])?;
        at += used;
        let data = match pkt {
            Pkt::Flush => break,
            Pkt::Delim => return Err("advertisement: unexpected delimiter".into()),
            Pkt::Data(d) => strip_lf(d),
        };
        if refs.is_empty() && data == b"version 1" {
            continue;
        }
        let (line, caps) = match data.iter().position(|&b| b == 0) {
            Some(nul) if refs.is_empty() => (&data[..nul], Some(&data[nul + 1..])),
            Some(_) => return Err("advertisement: capabilities after the first line".into()),
            None => (data, None),
        };
        let line = std::str::from_utf8(line).map_err(|_| "advertisement is not UTF-8".to_string())?;
        let (oid, name) = line
            .split_once(' ')
            .filter(|(oid, name)| is_oid(oid) && !name.is_empty())
            .ok_or_else(|| "advertisement: malformed ref line".to_string())?;
        if let Some(caps) = caps {
            let caps = std::str::from_utf8(caps).map_err(|_| "capabilities are not UTF-8".to_string())?;
            capabilities = caps.split(' ').filter(|c| !c.is_empty()).map(str::to_owned).collect();
        }
        refs.push(AdvertisedRef {
            oid: oid.to_owned(),
            name: name.to_owned(),
        });
    }
    if at != body.len() {
        return Err("advertisement: trailing bytes".into());
    }
    Ok(Advertisement {
        service,
        refs,
        capabilities,
    })
}

/// Capabilities the gateway lets a push use. The others (`atomic`,
/// `push-options`, `report-status-v2`, `delete-refs`, `push-cert`...) are
/// neither advertised nor accepted: the gateway would have to understand
/// them to guard them.
pub fn push_capability_allowed(cap: &str) -> bool {
    matches!(cap, "report-status" | "side-band-64k" | "quiet" | "ofs-delta")
        || cap.starts_with("agent=")
        || cap.starts_with("object-format=")
}

/// The receive-pack advertisement the client sees: only `branch_ref` (when
/// it exists upstream) and `.have` lines for `haves` (so the client's thin
/// pack is based on commits the gateway can fetch), with the capabilities
/// the gateway supports.
pub fn rewrite_receive_advertisement(upstream: &Advertisement, branch_ref: &str, haves: &[String]) -> Vec<u8> {
    let caps: Vec<&str> = upstream
        .capabilities
        .iter()
        .map(String::as_str)
        .filter(|c| push_capability_allowed(c))
        .collect();
    let caps = caps.join(" ");
    let zero_len = if upstream.capabilities.iter().any(|c| c == "object-format=sha256") {
        64
    } else {
        40
    };
    let mut lines: Vec<(String, &str)> = Vec::new();
    if let Some(r) = upstream.refs.iter().find(|r| r.name == branch_ref) {
        lines.push((r.oid.clone(), branch_ref));
    }
    for have in haves {
        if !lines.iter().any(|(oid, _)| oid == have) {
            lines.push((have.clone(), ".have"));
        }
    }
    if lines.is_empty() {
        lines.push(("0".repeat(zero_len), "capabilities^{}"));
    }
    let mut out = encode(format!("# service={}\n", upstream.service).as_bytes());
    out.extend_from_slice(FLUSH);
    for (i, (oid, name)) in lines.iter().enumerate() {
        let line = if i == 0 {
            format!("{oid} {name}\0{caps}\n")
        } else {
            format!("{oid} {name}\n")
        };
        out.extend_from_slice(&encode(line.as_bytes()));
    }
    out.extend_from_slice(FLUSH);
    out
}

/// A receive-pack answer refusing every ref in `refnames` with `message`,
/// as git prints it (`! [remote rejected] ... (message)`). With side-band the
/// report goes on band 1 and the message also on band 2 (git shows it as
/// `remote: gateway: ...`).
pub fn report_refusal(refnames: &[&str], message: &str, side_band: bool) -> Vec<u8> {
    let one_line: String = message.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    let mut report = encode(b"unpack ok\n");
    for refname in refnames {
        report.extend_from_slice(&encode(format!("ng {refname} {one_line}\n").as_bytes()));
    }
    report.extend_from_slice(FLUSH);
    if !side_band {
        return report;
    }
    let mut out = Vec::new();
    let mut progress = vec![2u8];
    progress.extend_from_slice(format!("gateway: {one_line}\n").as_bytes());
    out.extend_from_slice(&encode(&progress));
    for chunk in report.chunks(MAX_PKT - 5) {
        let mut band = vec![1u8];
        band.extend_from_slice(chunk);
        out.extend_from_slice(&encode(&band));
    }
    out.extend_from_slice(FLUSH);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "1111111111111111111111111111111111111111";
    const B: &str = "2222222222222222222222222222222222222222";
    const Z: &str = "0000000000000000000000000000000000000000";

    fn body(lines: &[&[u8]], pack: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        for l in lines {
            out.extend_from_slice(&encode(l));
        }
        out.extend_from_slice(FLUSH);
        out.extend_from_slice(pack);
        out
    }

    #[test]
    fn reads_packets_and_rejects_bad_lengths() {
        assert_eq!(read(b"0000").unwrap(), (Pkt::Flush, 4));
        assert_eq!(read(b"0006a\nrest").unwrap(), (Pkt::Data(b"a\n"), 6));
        for bad in [&b"00"[..], b"zzzz", b"0003", b"0009abc", b"ffff", b"+00a"] {
            assert!(read(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn parses_a_push() {
        let first = format!("{Z} {A} refs/heads/claude/x\0 report-status side-band-64k agent=git/2.39");
        let second = format!("{A} {B} refs/heads/other\n");
        let b = body(&[first.as_bytes(), second.as_bytes()], b"PACKdata");
        let p = parse_push(&b).unwrap();
        assert_eq!(p.commands.len(), 2);
        assert_eq!(p.commands[0].old, Z);
        assert_eq!(p.commands[0].refname, "refs/heads/claude/x");
        assert_eq!(p.commands[1].refname, "refs/heads/other");
        assert_eq!(p.capabilities, ["report-status", "side-band-64k", "agent=git/2.39"]);
        assert_eq!(&b[p.pack_offset..], b"PACKdata");
    }

    #[test]
    fn refuses_what_it_does_not_understand() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (body(&[format!("shallow {A}").as_bytes()], b""), "shallow"),
            (body(&[b"push-cert\0 report-status"], b""), "signed"),
            (body(&[format!("{Z} {A}").as_bytes()], b""), "malformed push command"),
            (
                body(&[format!("{Z} {A} r extra").as_bytes()], b""),
                "malformed push command",
            ),
            (body(&[format!("{Z} xyz r").as_bytes()], b""), "object id"),
            (body(&[format!("{Z} {}{} r", A, "00").as_bytes()], b""), "object id"),
            (body(&[format!("{Z} {A} refs/heads/a\x07").as_bytes()], b""), "ref name"),
            (
                body(
                    &[format!("{Z} {A} r\0 c").as_bytes(), format!("{Z} {A} s\0 c").as_bytes()],
                    b"",
                ),
                "malformed",
            ),
            (b"PACK\x00\x00\x00\x02".to_vec(), "pkt-line"),
            (encode(format!("{Z} {A} r").as_bytes()), "truncated"),
        ];
        for (b, want) in cases {
            let err = parse_push(&b).unwrap_err();
            assert!(err.contains(want), "{err} / {want}");
        }
    }

    fn advert(lines: &[String]) -> Vec<u8> {
        let mut out = encode(b"# service=git-receive-pack\n");
        out.extend_from_slice(FLUSH);
        for l in lines {
            out.extend_from_slice(&encode(l.as_bytes()));
        }
        out.extend_from_slice(FLUSH);
        out
    }

    #[test]
    fn the_advertisement_shows_only_the_branch_and_the_bases() {
        let up = parse_advertisement(&advert(&[
            format!("{A} refs/heads/main\0report-status report-status-v2 delete-refs side-band-64k quiet atomic ofs-delta push-options object-format=sha1 agent=git/2.39\n"),
            format!("{B} refs/heads/claude/x\n"),
            format!("{B} refs/tags/v1\n"),
        ]))
        .unwrap();
        assert_eq!(up.refs.len(), 3);
        let out = parse_advertisement(&rewrite_receive_advertisement(
            &up,
            "refs/heads/claude/x",
            &[A.to_owned()],
        ))
        .unwrap();
        assert_eq!(
            out.refs,
            [
                AdvertisedRef {
                    oid: B.into(),
                    name: "refs/heads/claude/x".into()
                },
                AdvertisedRef {
                    oid: A.into(),
                    name: ".have".into()
                }
            ]
        );
        assert_eq!(
            out.capabilities,
            [
                "report-status",
                "side-band-64k",
                "quiet",
                "ofs-delta",
                "object-format=sha1",
                "agent=git/2.39"
            ]
        );
        // No branch yet, no base: the empty-repository form.
        let out = parse_advertisement(&rewrite_receive_advertisement(&up, "refs/heads/claude/new", &[])).unwrap();
        assert_eq!(out.refs[0].oid, Z);
        assert_eq!(out.refs[0].name, "capabilities^{}");
        // A base only: `.have` carries the capabilities.
        let out = parse_advertisement(&rewrite_receive_advertisement(
            &up,
            "refs/heads/claude/new",
            &[A.into()],
        ))
        .unwrap();
        assert_eq!(out.refs.len(), 1);
        assert_eq!(out.refs[0].name, ".have");
        assert!(out.capabilities.contains(&"report-status".to_string()));
    }

    #[test]
    fn malformed_advertisements_are_errors() {
        assert!(parse_advertisement(b"").is_err());
        assert!(parse_advertisement(&encode(b"hello\n")).is_err());
        let mut trailing = advert(&[format!("{A} refs/heads/main\0x\n")]);
        trailing.extend_from_slice(b"junk");
        assert!(parse_advertisement(&trailing).is_err());
        assert!(parse_advertisement(&advert(&[format!("{A} refs/heads/main\0x\n"), format!("{B} b\0y\n")])).is_err());
        assert!(parse_advertisement(&advert(&["nonsense\n".into()])).is_err());
    }

    #[test]
    fn refusal_reports_parse_as_git_would() {
        let plain = report_refusal(&["refs/heads/main"], "only refs/heads/claude/x\nmay be pushed", false);
        let (p, n) = read(&plain).unwrap();
        assert_eq!(p, Pkt::Data(b"unpack ok\n"));
        let (p, _) = read(&plain[n..]).unwrap();
        assert_eq!(
            p,
            Pkt::Data(b"ng refs/heads/main only refs/heads/claude/x may be pushed\n")
        );
        assert!(plain.ends_with(FLUSH));

        let banded = report_refusal(&["refs/heads/main"], "no", true);
        let (p, n) = read(&banded).unwrap();
        assert_eq!(p, Pkt::Data(b"\x02gateway: no\n"));
        let (p, _) = read(&banded[n..]).unwrap();
        let Pkt::Data(d) = p else { panic!() };
        assert_eq!(d[0], 1);
        assert!(d[1..].starts_with(&encode(b"unpack ok\n")));
    }
}
