//! The restore plan of one node and the restore tool's command line. Reading an archive
//! verifies it whole (`backup::verify`); a bare snapshot is checked against its trailer.
//! Every refusal is exit 4 (a precondition: nothing was changed), bad input exit 2.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use serde::{Deserialize, Serialize};

use crate::backup::Contents;
use crate::backup::tool::{RestoreTool, ToolKind};
use crate::error::{Error, Result};
use crate::manifest::StaticPod;

/// Where the data comes from.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum Source {
    /// An `etcdops backup` archive: member list and id from its `contents.json`. An
    /// encrypted one names the identity file that opens it (the path only: the key stays
    /// where the operator keeps it, and a resume reads it there again).
    Archive {
        path: PathBuf,
        id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        identity: Option<PathBuf>,
    },
    /// A bare snapshot: members from this manifest's `--initial-cluster`, id from its blake3.
    Snapshot { path: PathBuf, id: String },
}

/// What every node of the restore computes alike, and what is this node's own.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RestorePlan {
    pub source: Source,
    /// This member's `--name` and `--initial-advertise-peer-urls` (from the manifest).
    pub name: String,
    pub peer_url: String,
    /// `name=peer URL,...` of every member restored: the archive's member list.
    pub initial_cluster: String,
    /// `--initial-cluster-token`: one per restore attempt, shared by every node of it and
    /// never reused (`restore plan` makes a fresh one, `restore apply --token` takes it). A
    /// token derived from the archive alone gave two restores of one archive the same
    /// member and cluster ids, so a member left from the first passed etcd's only peer
    /// check (the cluster-ID header) and crashed the second ("tocommit(N) is out of range").
    pub token: String,
    /// The member and cluster id etcd derives from the token and the peer URLs (lower-case
    /// hex as etcd prints them): what the restored member will answer as. Empty in
    /// journals written before this existed.
    #[serde(default)]
    pub restored_member_id: String,
    #[serde(default)]
    pub restored_cluster_id: String,
    /// The cluster id the archive was taken from (empty for a bare snapshot).
    #[serde(default)]
    pub old_cluster_id: String,
    /// Every other member's peer URL: each must be fenced before this member starts.
    #[serde(default)]
    pub peers: Vec<String>,
    /// The peer TLS files (host paths) of this node's manifest, to ask a peer which cluster
    /// it serves as etcd's peers ask each other; none for plain-http peers.
    #[serde(default)]
    pub peer_tls: Option<PeerTls>,
    /// The data dir on the host (from the manifest), and the new dir beside it.
    pub data_dir: PathBuf,
    pub restore_dir: PathBuf,
    /// `--bump-revision` / `--mark-compacted` for the restore tool (none in older journals).
    #[serde(default)]
    pub revision_flags: RevisionFlags,
}

/// etcdutl's `--bump-revision N --mark-compacted` (etcd >= 3.5.10): the restored revision
/// jumps by N and is marked compacted, so that watchers and informers that saw revisions
/// after the backup are told to re-list instead of missing changes silently. etcdutl wants
/// both or neither (and N > 0); so do we, before anything changes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevisionFlags {
    pub bump_revision: Option<u64>,
    pub mark_compacted: bool,
}

impl RevisionFlags {
    pub fn is_set(&self) -> bool {
        self.bump_revision.is_some() || self.mark_compacted
    }

    /// Refuse (exit 2) an incomplete pair, and flags the restore tool does not know — asked
    /// of the tool's own `--help`, not guessed from its version.
    pub fn check(&self, tool: &RestoreTool) -> Result<()> {
        match (self.bump_revision, self.mark_compacted) {
            (None, false) => return Ok(()),
            (Some(0), _) => {
                return Err(Error::Usage(
                    "--bump-revision must be greater than 0 (etcdutl refuses 0)".into(),
                ));
            }
            (Some(_), false) => {
                return Err(Error::Usage(
                    "--bump-revision needs --mark-compacted (etcdutl requires both)".into(),
                ));
            }
            (None, true) => {
                return Err(Error::Usage(
                    "--mark-compacted needs --bump-revision N (etcdutl requires both)".into(),
                ));
            }
            (Some(_), true) => {}
        }
        if !supports_revision_flags(tool)? {
            return Err(Error::Usage(format!(
                "--bump-revision/--mark-compacted: {} does not support them (its `snapshot \
                 restore --help` lists neither; they came with etcd 3.5.10): use an etcdutl >= \
                 3.5.10 with --etcdutl, or restore without them",
                tool.path.display()
            )));
        }
        Ok(())
    }
}

/// Whether the tool's `snapshot restore --help` lists `--bump-revision` and
/// `--mark-compacted`.
pub fn supports_revision_flags(tool: &RestoreTool) -> Result<bool> {
    let mut cmd = std::process::Command::new(&tool.path);
    cmd.args(["snapshot", "restore", "--help"])
        .stdin(Stdio::null());
    if tool.kind == ToolKind::Etcdctl {
        cmd.env("ETCDCTL_API", "3");
    }
    let out = cmd.output().map_err(|e| Error::io("run", &tool.path, e))?;
    let help = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(help_lists_revision_flags(&help))
}

fn help_lists_revision_flags(help: &str) -> bool {
    // A flag is listed when a line starts with it (cobra's layout), not when another
    // flag's text mentions it.
    let listed = |flag: &str| {
        help.lines()
            .any(|l| l.split_whitespace().next() == Some(flag))
    };
    listed("--bump-revision") && listed("--mark-compacted")
}

pub use crate::etcd::peer_fence::PeerTls;

/// A fresh token for one restore attempt: `etcdops-restore-<first 8 of the source id>-<UTC
/// time>-<6 random hex digits>`. Never the same twice, so that no two attempts (of one
/// archive, or on two machines) derive the same member and cluster ids.
pub fn fresh_token(source_id: &str) -> String {
    use ring::rand::SecureRandom;
    let mut r = [0u8; 3];
    ring::rand::SystemRandom::new()
        .fill(&mut r)
        .expect("the system's random source works");
    let short: String = source_id.chars().take(8).collect();
    format!(
        "etcdops-restore-{short}-{}-{:02x}{:02x}{:02x}",
        crate::manifest::atomic::timestamp(std::time::SystemTime::now()),
        r[0],
        r[1],
        r[2]
    )
}

/// A token given with `--token`: 1 to 128 of `A-Z a-z 0-9 . _ -` (what `restore plan`
/// prints; nothing a shell or a YAML file would mangle). Bad input is exit 2.
pub fn check_token(token: &str) -> Result<()> {
    let ok = !token.is_empty()
        && token.len() <= 128
        && token
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(Error::Usage(format!(
            "--token {token:?}: a cluster token is 1 to 128 of A-Z a-z 0-9 . _ - (use the one \
             `etcdops restore plan` prints)"
        )))
    }
}

/// The token of a `restore apply`: the given one, checked; none given, a fresh one only
/// when the restored cluster has a single member — with more, every node of the attempt
/// must restore with the same token, which only the operator can hand them all.
pub fn choose_token(given: Option<&str>, members: usize, source_id: &str) -> Result<String> {
    match given {
        Some(t) => check_token(t).map(|_| t.to_string()),
        None if members <= 1 => Ok(fresh_token(source_id)),
        None => Err(Error::Usage(format!(
            "--token is required to restore a {members}-member cluster: run `etcdops restore \
             plan --from FILE` once and pass the token it prints to `restore apply --token` on \
             every node of this restore"
        ))),
    }
}

/// etcd's member id for a member restored with `token`: the first 8 bytes (big-endian) of
/// sha1(sorted peer URLs joined + token) (`membership.NewMember` with no time).
pub fn member_id(peer_urls: &[&str], token: &str) -> u64 {
    let mut urls: Vec<&str> = peer_urls.to_vec();
    urls.sort();
    let mut b = urls.concat().into_bytes();
    b.extend_from_slice(token.as_bytes());
    first_u64(&b)
}

/// etcd's cluster id of a new cluster: sha1 of the sorted member ids, 8 bytes big-endian
/// each (`RaftCluster.genID`).
pub fn cluster_id(member_ids: &[u64]) -> u64 {
    let mut ids = member_ids.to_vec();
    ids.sort_unstable();
    let b: Vec<u8> = ids.iter().flat_map(|i| i.to_be_bytes()).collect();
    first_u64(&b)
}

fn first_u64(bytes: &[u8]) -> u64 {
    let d = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, bytes);
    u64::from_be_bytes(d.as_ref()[..8].try_into().expect("sha1 has 20 bytes"))
}

/// This member's and the cluster's ids as a restore from `initial_cluster` with `token`
/// makes them (hex as etcd prints them).
pub fn restored_ids(initial_cluster: &str, name: &str, token: &str) -> (String, String) {
    let mut by_name: Vec<(&str, Vec<&str>)> = Vec::new();
    for part in initial_cluster.split(',').filter(|p| !p.is_empty()) {
        let (n, url) = part.split_once('=').unwrap_or((part, ""));
        match by_name.iter_mut().find(|(m, _)| *m == n) {
            Some((_, urls)) => urls.push(url),
            None => by_name.push((n, vec![url])),
        }
    }
    let ids: Vec<(&str, u64)> = by_name
        .iter()
        .map(|(n, urls)| (*n, member_id(urls, token)))
        .collect();
    let me = ids.iter().find(|(n, _)| *n == name).map_or(0, |(_, i)| *i);
    let all: Vec<u64> = ids.iter().map(|(_, i)| *i).collect();
    (
        crate::output::hex_id(me),
        crate::output::hex_id(cluster_id(&all)),
    )
}

impl RestorePlan {
    /// Use `token` for this attempt (and the ids it gives).
    pub fn set_token(&mut self, token: String) {
        let (m, c) = restored_ids(&self.initial_cluster, &self.name, &token);
        self.token = token;
        self.restored_member_id = m;
        self.restored_cluster_id = c;
    }

    /// Members restored (`--initial-cluster`).
    pub fn members(&self) -> usize {
        self.initial_cluster.split(',').count()
    }
}

/// `name=url,...` sorted by name; learners are not restored as members (etcd's
/// restore would make them voters). Refuses a member without a name or with several peer
/// URLs (the restore takes one per member).
pub fn initial_cluster(contents: &Contents) -> Result<String> {
    let what = "plan the restore";
    let mut parts = Vec::new();
    for m in contents.members.iter().filter(|m| !m.is_learner) {
        if m.name.is_empty() {
            return Err(Error::refused(
                what,
                format!(
                    "member {} in the archive has no name (it never started); restore from an archive taken when every member was up",
                    m.id
                ),
            ));
        }
        let [url] = m.peer_urls.as_slice() else {
            return Err(Error::refused(
                what,
                format!(
                    "member {} has {} peer URLs in the archive; a restore takes exactly one",
                    m.name,
                    m.peer_urls.len()
                ),
            ));
        };
        parts.push(format!("{}={url}", m.name));
    }
    // Sorted, so that every node writes the same string whatever order its source lists.
    parts.sort();
    Ok(parts.join(","))
}

/// Refuse the `--initial-cluster` and `--initial-advertise-peer-urls` that etcd's own restore
/// code would refuse (etcd `types.NewURLsMap`, `types.NewURLs`): every item `name=URL`, the
/// list parsed as a query string (so a name may not hold `,` `=` `&` `;` `%` `+` or blanks),
/// every URL `http|https|unix|unixs://host:port` without a path. A bare snapshot's member list
/// comes from the manifest an operator may have edited; the restore step would otherwise
/// find out after etcd was stopped. Bad input (exit 2) naming where the list came from
/// (`source`) or the manifest.
pub fn check_as_etcd_parses(
    source: &Path,
    manifest: &Path,
    initial_cluster: &str,
    peer_url: &str,
) -> Result<()> {
    let refuse = |why: String| Err(Error::input(source, format!("member list: {why}")));
    let url_ok = |u: &str| -> std::result::Result<(), String> {
        let Some((scheme, rest)) = u.split_once("://") else {
            return Err(format!("{u:?} is not a URL (scheme://host:port)"));
        };
        if !matches!(scheme, "http" | "https" | "unix" | "unixs") {
            return Err(format!(
                "{u:?}: the URL scheme must be http, https, unix or unixs"
            ));
        }
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        if !path.is_empty() || rest.contains(['?', '#']) {
            return Err(format!("{u:?}: the URL must not contain a path"));
        }
        let ok_port = authority
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
        if !ok_port {
            return Err(format!(
                "{u:?}: the URL address does not have the form host:port"
            ));
        }
        Ok(())
    };
    for item in initial_cluster.split(',') {
        let Some((name, url)) = item.split_once('=') else {
            return refuse(format!("--initial-cluster item {item:?} is not name=URL"));
        };
        if name.is_empty()
            || name.contains(['=', '&', ';', '%', '+', '#'])
            || name.contains(char::is_whitespace)
        {
            return refuse(format!(
                "member name {name:?} cannot be written in --initial-cluster (etcd parses \
                 it as a query string)"
            ));
        }
        if let Err(why) = url_ok(url) {
            return refuse(format!("--initial-cluster: {why}"));
        }
    }
    for url in peer_url.split(',') {
        if let Err(why) = url_ok(url) {
            return Err(Error::input(
                manifest,
                format!("--initial-advertise-peer-urls: {why}"),
            ));
        }
    }
    Ok(())
}

/// Build this node's plan from a verified archive's contents and the manifest.
pub fn plan_from_contents(
    manifest: &Path,
    source: Source,
    contents: &Contents,
) -> Result<RestorePlan> {
    let pod = StaticPod::load(manifest)?;
    let name = pod
        .etcd_flag("name")?
        .filter(|n| !n.is_empty())
        .ok_or_else(|| Error::input(manifest, "the etcd command has no --name"))?;
    let peer_url = pod
        .etcd_flag("initial-advertise-peer-urls")?
        .filter(|u| !u.is_empty())
        .ok_or_else(|| {
            Error::input(
                manifest,
                "the etcd command has no --initial-advertise-peer-urls",
            )
        })?;
    let what = format!("restore on member {name}");
    let initial = initial_cluster(contents)?;
    let names: Vec<&str> = contents
        .members
        .iter()
        .filter(|m| !m.is_learner)
        .map(|m| m.name.as_str())
        .collect();
    match contents
        .members
        .iter()
        .find(|m| m.name == name && !m.is_learner)
    {
        None => {
            return Err(Error::refused(
                &what,
                format!(
                    "the archive's member list ({}) does not contain this node's --name {name}: restoring here would start a member the others do not know",
                    names.join(", ")
                ),
            ));
        }
        Some(m) if !m.peer_urls.iter().any(|u| u == &peer_url) => {
            return Err(Error::refused(
                &what,
                format!(
                    "the archive knows {name} at {}, the manifest says --initial-advertise-peer-urls={peer_url}: every node must restore the same member list",
                    m.peer_urls.join(",")
                ),
            ));
        }
        Some(_) => {}
    }
    // Never start an older etcd on newer data: the restored data is what the archive's
    // etcd wrote (its storage version is at most that release's minor).
    if let Some(image) = pod.etcd_container()?.image.as_deref()
        && let Some(v) = crate::etcd::version::Version::parse(&contents.etcd_version)
        && let Some(reason) =
            crate::etcd::version::image_too_old(image, &v.minor_line().to_string())
    {
        return Err(Error::refused(
            &what,
            format!("the archive was taken from etcd {v}: {reason}"),
        ));
    }
    // What the restore tool would refuse once etcd is stopped, refused now (issue 21).
    let from = match &source {
        Source::Archive { path, .. } | Source::Snapshot { path, .. } => path.clone(),
    };
    check_as_etcd_parses(&from, manifest, &initial, &peer_url)?;
    let data_dir = pod.data_volume()?.data_host_path;
    let id = match &source {
        Source::Archive { id, .. } | Source::Snapshot { id, .. } => id.clone(),
    };
    let restore_dir = beside(&data_dir, &format!("restore-{id}"))?;
    let peers = initial
        .split(',')
        .filter_map(|p| p.split_once('='))
        .filter(|(n, _)| *n != name)
        .map(|(_, u)| u.to_string())
        .collect();
    let tls = |flag: &str| -> Result<Option<PathBuf>> {
        match pod.etcd_flag(flag)? {
            Some(p) if !p.is_empty() => Ok(Some(pod.host_path(&p)?)),
            _ => Ok(None),
        }
    };
    let peer_tls = match (
        tls("peer-trusted-ca-file")?,
        tls("peer-cert-file")?,
        tls("peer-key-file")?,
    ) {
        (Some(ca), Some(cert), Some(key)) => Some(PeerTls { ca, cert, key }),
        _ => None,
    };
    let mut plan = RestorePlan {
        source,
        name,
        peer_url,
        initial_cluster: initial,
        token: String::new(),
        restored_member_id: String::new(),
        restored_cluster_id: String::new(),
        old_cluster_id: contents.cluster_id.clone(),
        peers,
        peer_tls,
        data_dir,
        restore_dir,
        revision_flags: RevisionFlags::default(),
    };
    plan.set_token(fresh_token(&id));
    Ok(plan)
}

/// The restore dir when the data dir is a mount point (its own disk): inside it, as a
/// dotted name etcd ignores, so that the restored `member` dir is on the same filesystem as
/// the data dir's and the swap stays a rename. Nothing beside a mount point is on its disk.
pub fn restore_dir_inside(data_dir: &Path, id: &str) -> PathBuf {
    data_dir.join(format!(".etcdops-restore-{id}"))
}

impl RestorePlan {
    /// The archive's (or snapshot's) id.
    pub fn source_id(&self) -> &str {
        match &self.source {
            Source::Archive { id, .. } | Source::Snapshot { id, .. } => id,
        }
    }

    /// Restore inside the data dir instead of beside it: the data dir is a mount point.
    pub fn inside_mount_point(&mut self) {
        let inside = restore_dir_inside(&self.data_dir, self.source_id());
        self.restore_dir = inside;
    }
}

/// `<dir>.<suffix>` beside `dir` (same filesystem, so the swap is a rename).
fn beside(dir: &Path, suffix: &str) -> Result<PathBuf> {
    let name = dir
        .file_name()
        .ok_or_else(|| Error::input(dir, "the data dir has no name"))?
        .to_string_lossy();
    Ok(dir.with_file_name(format!("{name}.{suffix}")))
}

/// Read and verify an archive; refuse (exit 4) when any sum or the trailer fails. Leaves no
/// stamp: planning changes nothing. An encrypted archive needs `identity` (exit 2 without
/// one, or with one that does not open it); a plain one ignores it.
pub fn read_archive(archive: &Path, identity: Option<&Path>) -> Result<(Contents, Source)> {
    let key = crate::backup::verify::identity_for(archive, identity)?;
    let (contents, problems) = crate::backup::verify::check(archive, key.as_ref())?;
    let what = format!("restore from {}", archive.display());
    if !problems.is_empty() {
        return Err(Error::refused(
            what,
            format!(
                "the archive does not verify: {}; nothing was changed",
                problems.join("; ")
            ),
        ));
    }
    let contents =
        contents.ok_or_else(|| Error::refused(&what, "the archive has no contents.json"))?;
    let source = Source::Archive {
        path: archive.to_path_buf(),
        id: contents.id.clone(),
        // Absolute: a resume may run from another working dir.
        identity: key.map(|k| std::path::absolute(&k.path).unwrap_or(k.path)),
    };
    Ok((contents, source))
}

/// A bare snapshot: its sha256 trailer must hold; the member list is this manifest's
/// `--initial-cluster` (the cluster as this node was told it); the id is the first 16 hex
/// digits of the file's blake3, as an archive's would be.
pub fn read_snapshot(snapshot: &Path, manifest: &Path) -> Result<(Contents, Source)> {
    let report = crate::etcd::snapshot::verify(snapshot)?;
    if let Some(p) = report.problem {
        return Err(Error::refused(
            format!("restore from {}", snapshot.display()),
            format!("the snapshot fails its check: {p}; nothing was changed"),
        ));
    }
    let pod = StaticPod::load(manifest)?;
    let cluster = pod
        .etcd_flag("initial-cluster")?
        .filter(|c| !c.is_empty())
        .ok_or_else(|| {
            Error::input(
                manifest,
                "no --initial-cluster to take the member list from; restore from an etcdops backup archive instead",
            )
        })?;
    let mut members = Vec::new();
    for part in cluster.split(',') {
        let (name, url) = part.split_once('=').ok_or_else(|| {
            Error::input(
                manifest,
                format!("--initial-cluster item {part:?} is not name=url"),
            )
        })?;
        match members
            .iter_mut()
            .find(|m: &&mut crate::backup::MemberInfo| m.name == name)
        {
            Some(m) => m.peer_urls.push(url.to_string()),
            None => members.push(crate::backup::MemberInfo {
                id: String::new(),
                name: name.to_string(),
                peer_urls: vec![url.to_string()],
                client_urls: Vec::new(),
                is_learner: false,
            }),
        }
    }
    let id = report.blake3[..16].to_string();
    let contents = Contents {
        format: crate::backup::FORMAT,
        id: id.clone(),
        node: String::new(),
        created: String::new(),
        etcd_version: String::new(),
        cluster_id: String::new(),
        member_id: String::new(),
        endpoint: String::new(),
        members,
        revision: 0,
        hash_kv: 0,
        compact_revision: 0,
        key_count: 0,
        kubernetes_dir: PathBuf::new(),
        manifest: manifest.to_path_buf(),
        entries: Vec::new(),
    };
    let source = Source::Snapshot {
        path: snapshot.to_path_buf(),
        id,
    };
    Ok((contents, source))
}

/// The plan for `--from FILE`: an archive or a bare snapshot, told apart by its first bytes.
pub fn plan(manifest: &Path, from: &Path, identity: Option<&Path>) -> Result<RestorePlan> {
    if !from.is_file() {
        return Err(Error::input(from, "no such archive or snapshot file"));
    }
    let (contents, source) = if crate::backup::verify::looks_like_archive(from) {
        read_archive(from, identity)?
    } else {
        read_snapshot(from, manifest)?
    };
    plan_from_contents(manifest, source, &contents)
}

/// The restore tool's command line: program, arguments, environment. Pure.
pub fn restore_command(
    tool: &RestoreTool,
    plan: &RestorePlan,
    snapshot: &Path,
    dest: &Path,
) -> (PathBuf, Vec<String>, Vec<(String, String)>) {
    let args = vec![
        "snapshot".to_string(),
        "restore".to_string(),
        snapshot.display().to_string(),
        format!("--name={}", plan.name),
        format!("--initial-cluster={}", plan.initial_cluster),
        format!("--initial-advertise-peer-urls={}", plan.peer_url),
        format!("--initial-cluster-token={}", plan.token),
        format!("--data-dir={}", dest.display()),
    ];
    let mut args = args;
    if let Some(n) = plan.revision_flags.bump_revision {
        args.push(format!("--bump-revision={n}"));
    }
    if plan.revision_flags.mark_compacted {
        args.push("--mark-compacted".to_string());
    }
    let env = match tool.kind {
        ToolKind::Etcdctl => vec![("ETCDCTL_API".to_string(), "3".to_string())],
        ToolKind::Etcdutl => Vec::new(),
    };
    (tool.path.clone(), args, env)
}

/// Run the restore tool into `dest` (which must not exist); its stderr is kept in the error.
pub fn run_restore(
    tool: &RestoreTool,
    plan: &RestorePlan,
    snapshot: &Path,
    dest: &Path,
) -> Result<()> {
    if dest.symlink_metadata().is_ok() {
        return Err(Error::refused(
            format!("restore into {}", dest.display()),
            "it exists already; a restore goes into a new dir",
        ));
    }
    let (program, args, env) = restore_command(tool, plan, snapshot, dest);
    let out = std::process::Command::new(&program)
        .args(&args)
        .envs(env)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Error::io("run", &program, e))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let last: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        return Err(Error::Command {
            command: format!("{} {}", program.display(), args.join(" ")),
            status: out.status.to_string(),
            stderr: last[last.len().saturating_sub(2)..].join(" | "),
        });
    }
    Ok(())
}

/// `restore plan`: the plan, the tool, and the exact commands a restore of this node runs.
#[derive(Debug, Clone, Serialize)]
pub struct PlanReport {
    pub kind: &'static str,
    #[serde(flatten)]
    pub plan: RestorePlan,
    pub tool: PathBuf,
    /// Where the snapshot is read from: the bare snapshot, or the file an archive's
    /// `snapshot.db` is extracted to (beside the restore dir).
    pub snapshot: PathBuf,
    /// For an archive: the command that extracts its snapshot.
    pub extract: Option<String>,
    /// The restore tool's command line, shell-quoted.
    pub restore: String,
    /// The `etcdops restore apply` to run on every node of this attempt (with this token).
    pub apply: String,
}

fn quote(word: &str) -> String {
    if !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+=:,@".contains(c))
    {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

impl PlanReport {
    pub fn new(plan: RestorePlan, tool: &RestoreTool) -> Self {
        let (snapshot, extract) = match &plan.source {
            Source::Snapshot { path, .. } => (path.clone(), None),
            Source::Archive { path, identity, .. } => {
                let snap = PathBuf::from(format!("{}.snapshot.db", plan.restore_dir.display()));
                let archive = quote(&path.display().to_string());
                let extract = format!(
                    "{} | tar xOf - snapshot.db > {}",
                    match identity {
                        // The reference age tool opens our archives.
                        Some(key) => format!(
                            "age -d -i {} {archive} | zstd -dc",
                            quote(&key.display().to_string())
                        ),
                        None => format!("zstd -dc {archive}"),
                    },
                    quote(&snap.display().to_string()),
                );
                (snap, Some(extract))
            }
        };
        let (program, args, env) = restore_command(tool, &plan, &snapshot, &plan.restore_dir);
        let mut words: Vec<String> = env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        words.push(quote(&program.display().to_string()));
        words.extend(args.iter().map(|a| quote(a)));
        let from = match &plan.source {
            Source::Archive { path, .. } | Source::Snapshot { path, .. } => path,
        };
        let mut apply = vec![
            "etcdops restore apply --from".to_string(),
            quote(&from.display().to_string()),
            "--token".to_string(),
            quote(&plan.token),
        ];
        if let Some(n) = plan.revision_flags.bump_revision {
            apply.push(format!("--bump-revision {n}"));
        }
        if plan.revision_flags.mark_compacted {
            apply.push("--mark-compacted".to_string());
        }
        apply.push("--yes".to_string());
        PlanReport {
            kind: "restore",
            plan,
            tool: tool.path.clone(),
            snapshot,
            extract,
            restore: words.join(" "),
            apply: apply.join(" "),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::{FORMAT, MemberInfo};

    fn contents(members: &[(&str, &str, bool)]) -> Contents {
        Contents {
            format: FORMAT,
            id: "0123456789abcdef".into(),
            node: "cp-a".into(),
            created: "2026-11-30T11:00:00Z".into(),
            etcd_version: "3.5.1".into(),
            cluster_id: "1".into(),
            member_id: "2".into(),
            endpoint: "https://10.10.0.21:2379".into(),
            members: members
                .iter()
                .enumerate()
                .map(|(i, (n, u, learner))| MemberInfo {
                    id: format!("{i:x}"),
                    name: n.to_string(),
                    peer_urls: vec![u.to_string()],
                    client_urls: vec![],
                    is_learner: *learner,
                })
                .collect(),
            revision: 5,
            hash_kv: 1,
            compact_revision: 0,
            key_count: 3,
            kubernetes_dir: "/etc/kubernetes".into(),
            manifest: "/etc/kubernetes/manifests/etcd.yaml".into(),
            entries: vec![],
        }
    }

    fn manifest() -> (tempfile::TempDir, PathBuf) {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("etcd.yaml");
        std::fs::write(
            &p,
            include_str!("../../tests/fixtures/manifests/kubeadm-v1.31.yaml"),
        )
        .unwrap();
        (d, p)
    }

    fn source() -> Source {
        Source::Archive {
            path: "/b/a.tar.zst".into(),
            identity: None,
            id: "0123456789abcdef".into(),
        }
    }

    #[test]
    fn plan_takes_name_and_peer_from_the_manifest_and_members_from_the_archive() {
        let (_d, m) = manifest();
        let c = contents(&[
            ("cp-a", "https://10.10.0.21:2380", false),
            ("cp-b", "https://10.10.0.22:2380", false),
            ("cp-l", "https://10.10.0.29:2380", true),
        ]);
        let p = plan_from_contents(&m, source(), &c).unwrap();
        assert_eq!(p.name, "cp-a");
        assert_eq!(p.peer_url, "https://10.10.0.21:2380");
        assert_eq!(
            p.initial_cluster,
            "cp-a=https://10.10.0.21:2380,cp-b=https://10.10.0.22:2380"
        );
        assert!(
            p.token.starts_with("etcdops-restore-01234567-"),
            "{}",
            p.token
        );
        check_token(&p.token).unwrap();
        assert_eq!(p.peers, vec!["https://10.10.0.22:2380".to_string()]);
        assert_eq!(p.old_cluster_id, "1");
        assert_eq!(
            p.peer_tls.as_ref().unwrap().cert,
            PathBuf::from("/etc/kubernetes/pki/etcd/peer.crt")
        );
        assert_eq!(
            p.restore_dir.file_name().unwrap(),
            format!(
                "{}.restore-0123456789abcdef",
                p.data_dir.file_name().unwrap().to_string_lossy()
            )
            .as_str()
        );
        let tool = RestoreTool {
            path: "/usr/bin/etcdctl".into(),
            kind: ToolKind::Etcdctl,
        };
        let (prog, args, env) = restore_command(&tool, &p, Path::new("/r/s.db"), &p.restore_dir);
        assert_eq!(prog, PathBuf::from("/usr/bin/etcdctl"));
        assert!(args.contains(&format!("--initial-cluster-token={}", p.token)));
        assert!(args.contains(&"--name=cp-a".into()));
        assert_eq!(env, vec![("ETCDCTL_API".into(), "3".into())]);
    }

    /// A bare `etcd` (name default, peer URL http://localhost:2380, token etcd-cluster) is
    /// member 8e9e05c52164694d of cluster cdf818194e3a8c32: etcd's own well-known ids.
    #[test]
    fn restored_ids_are_the_ids_etcd_derives() {
        let (m, c) = restored_ids("default=http://localhost:2380", "default", "etcd-cluster");
        assert_eq!(
            (m.as_str(), c.as_str()),
            ("8e9e05c52164694d", "cdf818194e3a8c32")
        );
        // Another token, other ids: what keeps two restore attempts apart.
        let ic = "a=https://10.0.0.1:2380,b=https://10.0.0.2:2380";
        let (m1, c1) = restored_ids(ic, "a", "etcdops-restore-x-1");
        let (m2, c2) = restored_ids(ic, "a", "etcdops-restore-x-2");
        assert_ne!(m1, m2);
        assert_ne!(c1, c2);
        // The cluster id does not depend on which member computes it.
        assert_eq!(restored_ids(ic, "b", "etcdops-restore-x-1").1, c1);
    }

    #[test]
    fn every_plan_has_a_fresh_token_and_apply_needs_one_for_several_members() {
        let a = fresh_token("0123456789abcdef");
        let b = fresh_token("0123456789abcdef");
        assert_ne!(a, b);
        check_token(&a).unwrap();
        let e = choose_token(None, 3, "0123456789abcdef").unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(
            e.one_line().contains("--token is required"),
            "{}",
            e.one_line()
        );
        assert!(e.one_line().contains("restore plan"), "{}", e.one_line());
        // One member: nobody else must agree, a fresh token is made.
        assert!(
            choose_token(None, 1, "0123456789abcdef")
                .unwrap()
                .starts_with("etcdops-restore-01234567-")
        );
        assert_eq!(choose_token(Some("t-1"), 3, "x").unwrap(), "t-1");
        for bad in ["", "a b", "a,b", "x'y", &"t".repeat(129)] {
            let e = choose_token(Some(bad), 3, "x").unwrap_err();
            assert_eq!(e.exit_code(), 2, "{bad:?}");
            assert!(e.one_line().contains("--token"), "{}", e.one_line());
        }
    }

    #[test]
    fn revision_flags_are_read_from_the_tools_help_and_passed_through() {
        // etcdutl 3.5.10's `snapshot restore --help` lines for the two flags.
        let new = "      --bump-revision uint   How much to increase the latest revision after restore\n      --mark-compacted   Mark the latest revision after restore as the point of scheduled compaction (required if --bump-revision > 0, disallowed otherwise)\n";
        assert!(help_lists_revision_flags(new));
        // 3.5.1 lists neither; a mention in another flag's text is not the flag.
        assert!(!help_lists_revision_flags(
            "      --skip-hash-check   Ignore snapshot integrity hash value\n"
        ));
        assert!(!help_lists_revision_flags(
            "      --x   (required if --bump-revision > 0, with --mark-compacted)\n"
        ));
        let (_d, m) = manifest();
        let mut p = plan_from_contents(
            &m,
            source(),
            &contents(&[("cp-a", "https://10.10.0.21:2380", false)]),
        )
        .unwrap();
        let tool = RestoreTool {
            path: "/usr/bin/etcdutl".into(),
            kind: ToolKind::Etcdutl,
        };
        let (_, args, _) = restore_command(&tool, &p, Path::new("/s.db"), Path::new("/d"));
        assert!(
            !args
                .iter()
                .any(|a| a.contains("revision") || a.contains("compacted"))
        );
        p.revision_flags = RevisionFlags {
            bump_revision: Some(1_000_000),
            mark_compacted: true,
        };
        let (_, args, _) = restore_command(&tool, &p, Path::new("/s.db"), Path::new("/d"));
        assert!(args.contains(&"--bump-revision=1000000".to_string()));
        assert!(args.contains(&"--mark-compacted".to_string()));
        // Incomplete pairs are refused before the tool is even asked.
        for (bump, mark, needle) in [
            (Some(5), false, "--bump-revision needs --mark-compacted"),
            (None, true, "--mark-compacted needs --bump-revision"),
            (Some(0), true, "greater than 0"),
        ] {
            let e = RevisionFlags {
                bump_revision: bump,
                mark_compacted: mark,
            }
            .check(&tool)
            .unwrap_err();
            assert_eq!(e.exit_code(), 2);
            assert!(e.one_line().contains(needle), "{}", e.one_line());
        }
    }

    #[test]
    fn plan_refuses_a_member_list_without_this_node_or_with_another_url() {
        let (_d, m) = manifest();
        let e = plan_from_contents(
            &m,
            source(),
            &contents(&[("cp-x", "https://10.10.0.21:2380", false)]),
        )
        .unwrap_err();
        assert_eq!(e.exit_code(), 4);
        assert!(
            e.one_line()
                .contains("does not contain this node's --name cp-a")
        );
        let e = plan_from_contents(
            &m,
            source(),
            &contents(&[("cp-a", "https://10.10.0.99:2380", false)]),
        )
        .unwrap_err();
        assert_eq!(e.exit_code(), 4);
        assert!(e.one_line().contains("10.10.0.99"), "{}", e.one_line());
        // A learner of that name is not a member to restore.
        let e = plan_from_contents(
            &m,
            source(),
            &contents(&[("cp-a", "https://10.10.0.21:2380", true)]),
        )
        .unwrap_err();
        assert_eq!(e.exit_code(), 4);
    }

    /// Issue 21, hole 2: what etcd's restore code refuses (`types.NewURLsMap`) is refused by
    /// the plan, exit 2, before a run stops etcd; the restore step used to find out after.
    #[test]
    fn plan_refuses_what_the_restore_tool_would_refuse() {
        let (_d, m) = manifest();
        for (other, needle) in [
            ("https://10.10.0.22:2380/etcd", "must not contain a path"),
            ("ftp://10.10.0.22:2380", "scheme must be"),
            ("https://10.10.0.22", "host:port"),
            ("10.10.0.22:2380", "is not a URL"),
        ] {
            let c = contents(&[
                ("cp-a", "https://10.10.0.21:2380", false),
                ("cp-b", other, false),
            ]);
            let e = plan_from_contents(&m, source(), &c).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{other}: {}", e.one_line());
            assert!(e.one_line().contains(needle), "{other}: {}", e.one_line());
            assert!(e.one_line().contains("/b/a.tar.zst"), "{}", e.one_line());
        }
        for name in ["cp b", "cp&b", "cp%b"] {
            let c = contents(&[
                ("cp-a", "https://10.10.0.21:2380", false),
                (name, "https://10.10.0.22:2380", false),
            ]);
            let e = plan_from_contents(&m, source(), &c).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{name}: {}", e.one_line());
            assert!(e.one_line().contains("query string"), "{}", e.one_line());
        }
        // The URLs etcd accepts pass: IPv6, http, a trailing-slash-free host:port.
        let c = contents(&[
            ("cp-a", "https://10.10.0.21:2380", false),
            ("cp-b", "https://[fd00::22]:2380", false),
            ("cp-c", "http://cp-c.example:2380", false),
        ]);
        plan_from_contents(&m, source(), &c).unwrap();
    }
}
