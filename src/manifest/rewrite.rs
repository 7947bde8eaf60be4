//! `set-data-path`: change the data volume's `hostPath.path` and nothing else.
//!
//! serde_yaml gives no positions, so the scalar is located with saphyr-parser's event spans
//! and replaced in the original text; every other byte (comments, key order, blank lines,
//! indentation, quoting) stays. The result is then re-parsed and must equal the original with
//! only that one field changed, else nothing is written. The file work (temp dotfile, backup in
//! the state dir, rename) is in `atomic`.

use std::path::{Component, Path, PathBuf};

use saphyr_parser::{Event, Parser, ScalarStyle};
use serde::Serialize;
use serde_yaml::Value;

use super::atomic;
use super::{DataVolume, StaticPod};
use crate::error::{Error, Result};

/// The text of a manifest with the data volume's hostPath changed, and what changed.
#[derive(Debug, Clone)]
pub struct Rewrite {
    pub text: String,
    /// The data volume's name.
    pub volume: String,
    pub old_host_path: String,
    pub new_host_path: String,
    /// False when the manifest already has that path (then `text` is the input).
    pub changed: bool,
}

/// What `set-data-path` did or, with `--dry-run`, would do.
#[derive(Debug, Clone, Serialize)]
pub struct SetDataPathReport {
    pub manifest: PathBuf,
    pub volume: String,
    pub old_host_path: String,
    pub new_host_path: String,
    /// The copy of the original manifest; `None` when nothing was written.
    pub backup: Option<PathBuf>,
    pub changed: bool,
    pub dry_run: bool,
    /// The unified diff, with `--dry-run` (empty when there is nothing to change).
    pub diff: Option<String>,
    pub warnings: Vec<String>,
}

/// Check the new host path as typed: absolute, UTF-8, no control characters (a newline would
/// split the YAML line), no `..` (the API server rejects it in a hostPath), not `/` itself.
pub fn validate_new(new: &Path) -> Result<String> {
    let usage = |why: &str| Error::Usage(format!("new data path {new:?} {why}"));
    let s = new.to_str().ok_or_else(|| usage("is not valid UTF-8"))?;
    if s.is_empty() {
        return Err(Error::Usage("new data path is empty".into()));
    }
    if s.contains('\0') {
        return Err(usage("contains a NUL byte"));
    }
    if s.contains(['\n', '\r']) {
        return Err(usage("contains a line break"));
    }
    if s.chars().any(char::is_control) {
        return Err(usage("contains a control character"));
    }
    if !s.starts_with('/') {
        return Err(usage("is relative: give an absolute host path"));
    }
    if s.ends_with(char::is_whitespace) {
        return Err(usage("ends with whitespace"));
    }
    if new.components().any(|c| c == Component::ParentDir) {
        return Err(usage(
            "contains '..': Kubernetes rejects such a hostPath; give the real path",
        ));
    }
    if new.components().all(|c| c == Component::RootDir) {
        return Err(usage("is the root directory"));
    }
    Ok(s.to_string())
}

/// The manifest text with the data volume's `hostPath.path` set to `new`: pure, no I/O.
/// `path` only names the manifest in errors. Refuses (`Error::Input` / `Error::Usage`, exit 2)
/// whenever the result would not be exactly the original with that one scalar changed.
pub fn rewrite_text(path: &Path, text: &str, new: &Path) -> Result<Rewrite> {
    let new = validate_new(new)?;
    let pod = StaticPod::parse(path, text)?;
    let dv = pod.data_volume()?;
    if !dv.is_whole_volume() {
        return Err(Error::input(
            path,
            format!(
                "the data dir {} is not the whole volume {:?} (mountPath {}{}): changing its \
                 hostPath would move more than the data dir; edit this manifest by hand",
                dv.data_dir,
                dv.volume,
                dv.mount_path,
                dv.sub_path
                    .as_deref()
                    .map_or(String::new(), |s| format!(", subPath {s}")),
            ),
        ));
    }
    let mut rewrite = Rewrite {
        text: text.to_string(),
        volume: dv.volume.clone(),
        old_host_path: dv.host_path.clone(),
        new_host_path: new.clone(),
        changed: false,
    };
    if dv.host_path == new {
        return Ok(rewrite);
    }

    let locate_err = |why: String| {
        Error::input(
            path,
            format!(
                "cannot locate hostPath.path of volume {:?}: {why}",
                dv.volume
            ),
        )
    };
    let tree = Node::parse(text).map_err(locate_err)?;
    let scalar = find_host_path(&tree, &dv.volume).map_err(locate_err)?;
    let Node::Scalar {
        value,
        style,
        start,
        end,
    } = scalar
    else {
        return Err(locate_err("hostPath.path is not a scalar".into()));
    };
    if *value != dv.host_path {
        return Err(locate_err(format!(
            "the YAML parsers disagree on its value ({value:?} vs {:?})",
            dv.host_path
        )));
    }
    let (start, parser_end) = (byte_offset(text, *start), byte_offset(text, *end));
    if text[start..].starts_with(['&', '!']) {
        return Err(locate_err(
            "it carries an anchor or tag (&name, !tag); edit it by hand".into(),
        ));
    }
    // saphyr's end marker for a quoted scalar can run on past a trailing comment, so the
    // closing quote is found by scanning from the opening one; the parse checks the result.
    let end = match style {
        ScalarStyle::Plain => Some(parser_end),
        ScalarStyle::SingleQuoted => quoted_end(text, start, '\''),
        ScalarStyle::DoubleQuoted => quoted_end(text, start, '"'),
        ScalarStyle::Literal | ScalarStyle::Folded => {
            return Err(locate_err(
                "it is written as a block scalar (| or >); edit it by hand".into(),
            ));
        }
    };
    let end = end.filter(|&e| e <= parser_end).ok_or_else(|| {
        locate_err(format!(
            "no closing quote between the parser's positions {start} and {parser_end}"
        ))
    })?;
    let original = &text[start..end];
    if matches!(style, ScalarStyle::Plain) && original != value {
        return Err(locate_err(format!(
            "the parser's position points at {original:?}, not at the value"
        )));
    }
    let replacement = render_scalar(&new, *style);
    rewrite.text = format!("{}{}{}", &text[..start], replacement, &text[end..]);
    rewrite.changed = true;
    verify(path, text, &rewrite.text, &dv, &new)?;
    Ok(rewrite)
}

/// What `set_data_path` works on.
#[derive(Debug, Clone, Copy)]
pub struct SetDataPath<'a> {
    /// The manifest to change: the live one, or a copy moved out of the manifests dir.
    pub manifest: &'a Path,
    /// The new host path of the data volume.
    pub new: &'a Path,
    /// Where the original goes (`<state-dir>/backups`, or a migration's run dir).
    pub backup_dir: &'a Path,
    /// The dir kubelet loads static pods from. The backup may not go there nor below, even
    /// when `manifest` is a moved-out copy elsewhere.
    pub kubelet_dir: &'a Path,
    /// Report and diff only; write nothing.
    pub dry_run: bool,
}

/// Change the data volume's hostPath: validate, rewrite, verify, then (unless `dry_run`)
/// back the original up into `backup_dir` and replace the file atomically.
/// Bad input changes nothing and creates nothing (exit 2).
pub fn set_data_path(opts: &SetDataPath) -> Result<SetDataPathReport> {
    let SetDataPath {
        manifest,
        new,
        backup_dir,
        kubelet_dir,
        dry_run,
    } = *opts;
    validate_new(new)?;
    let text = StaticPod::read(manifest)?;
    let rewrite = rewrite_text(manifest, &text, new)?;
    let pod = StaticPod::parse(manifest, &text)?;
    let dv = pod.data_volume()?;
    // A symlinked manifest is rewritten where it lives; the link stays.
    let target = atomic::real_file(manifest)?;
    atomic::check_outside_manifests_dir(backup_dir, kubelet_dir)?;

    let mut report = SetDataPathReport {
        manifest: manifest.to_path_buf(),
        volume: rewrite.volume.clone(),
        old_host_path: rewrite.old_host_path.clone(),
        new_host_path: rewrite.new_host_path.clone(),
        backup: None,
        changed: false,
        dry_run,
        diff: None,
        warnings: warnings(&pod, &dv, &rewrite.new_host_path),
    };
    if dry_run {
        let label = manifest.display().to_string();
        report.diff = Some(unified_diff(&text, &rewrite.text, &label, &label));
        return Ok(report);
    }
    if !rewrite.changed {
        return Ok(report);
    }
    let backup = atomic::replace_with_backup(
        &target,
        text.as_bytes(),
        rewrite.text.as_bytes(),
        backup_dir,
    )?;
    report.backup = Some(backup);
    report.changed = true;
    Ok(report)
}

/// What the operator should know before kubelet acts on the new path.
fn warnings(pod: &StaticPod, dv: &DataVolume, new: &str) -> Vec<String> {
    let mut out = Vec::new();
    if new != dv.host_path {
        let new_path = Path::new(new);
        let creates = matches!(
            dv.host_path_type.as_deref(),
            None | Some("") | Some("DirectoryOrCreate")
        );
        if !new_path.exists() {
            out.push(if creates {
                format!(
                    "{new} does not exist: kubelet will create it empty and etcd will start as a new, empty member"
                )
            } else {
                format!("{new} does not exist: kubelet will not start the etcd pod")
            });
        } else if !new_path.join("member").is_dir() {
            out.push(format!(
                "{new} holds no etcd data (no member/ directory): etcd will start as a new, empty member"
            ));
        }
    }
    for (i, v) in pod.pod.spec.volumes.iter().enumerate() {
        if i != dv.volume_index
            && v.host_path
                .as_ref()
                .is_some_and(|h| Path::new(&h.path) == Path::new(&dv.host_path))
        {
            out.push(format!(
                "volume {:?} also uses hostPath {} and is left unchanged",
                v.name, dv.host_path
            ));
        }
    }
    out
}

/// The new value in the style of the old one; a plain scalar gets single quotes when YAML
/// would read it as something else or stop early (`#`, `: `, flow indicators, spaces).
fn render_scalar(new: &str, style: ScalarStyle) -> String {
    let plain_ok = new
        .chars()
        .all(|c| c.is_alphanumeric() || "/._-+@~=".contains(c));
    match style {
        ScalarStyle::Plain if plain_ok => new.to_string(),
        ScalarStyle::DoubleQuoted => {
            format!("\"{}\"", new.replace('\\', "\\\\").replace('"', "\\\""))
        }
        _ => format!("'{}'", new.replace('\'', "''")),
    }
}

/// The proof: the new text parses, equals the original as a generic YAML tree with only
/// `spec.volumes[i].hostPath.path` changed, and the model finds the same data dir, mount and
/// volume, now on the new host path.
fn verify(path: &Path, old: &str, new_text: &str, dv: &DataVolume, new: &str) -> Result<()> {
    let refuse = |why: String| {
        Error::input(
            path,
            format!("refusing to write: the rewritten manifest {why}; the file is unchanged"),
        )
    };
    let old_tree: Value =
        serde_yaml::from_str(old).map_err(|e| refuse(format!("(original) does not parse: {e}")))?;
    let new_tree: Value =
        serde_yaml::from_str(new_text).map_err(|e| refuse(format!("does not parse: {e}")))?;
    let mut expected = old_tree;
    let slot = expected
        .get_mut("spec")
        .and_then(|s| s.get_mut("volumes"))
        .and_then(|v| v.get_mut(dv.volume_index))
        .and_then(|v| v.get_mut("hostPath"))
        .and_then(|h| h.get_mut("path"))
        .ok_or_else(|| refuse("has no spec.volumes[].hostPath.path to compare".into()))?;
    *slot = Value::String(new.to_string());
    if expected != new_tree {
        return Err(refuse(format!(
            "would differ from the original in more than hostPath.path of volume {:?}",
            dv.volume
        )));
    }
    let after = StaticPod::parse(path, new_text)?.data_volume()?;
    let wanted = DataVolume {
        host_path: new.to_string(),
        data_host_path: PathBuf::from(new),
        ..dv.clone()
    };
    if after != wanted {
        return Err(refuse(format!(
            "resolves the data dir differently ({after:?})"
        )));
    }
    Ok(())
}

/// A unified diff of two texts: one hunk spanning the changed lines, with three lines of
/// context, as `diff -u` prints it.
pub fn unified_diff(old: &str, new: &str, old_label: &str, new_label: &str) -> String {
    if old == new {
        return String::new();
    }
    const CONTEXT: usize = 3;
    let a: Vec<&str> = old.split_inclusive('\n').collect();
    let b: Vec<&str> = new.split_inclusive('\n').collect();
    let mut prefix = 0;
    while prefix < a.len() && prefix < b.len() && a[prefix] == b[prefix] {
        prefix += 1;
    }
    let mut suffix = 0;
    while suffix < a.len() - prefix
        && suffix < b.len() - prefix
        && a[a.len() - 1 - suffix] == b[b.len() - 1 - suffix]
    {
        suffix += 1;
    }
    let start = prefix.saturating_sub(CONTEXT);
    let tail = suffix.min(CONTEXT);
    let (a_end, b_end) = (a.len() - suffix + tail, b.len() - suffix + tail);
    // diff -u names an empty range by the line before it.
    let range = |from: usize, to: usize| {
        let count = to - from;
        let first = if count == 0 { from } else { from + 1 };
        format!("{first},{count}")
    };
    let mut out = format!(
        "--- {old_label}\n+++ {new_label}\n@@ -{} +{} @@\n",
        range(start, a_end),
        range(start, b_end)
    );
    let mut line = |mark: char, text: &str| {
        out.push(mark);
        out.push_str(text);
        if !text.ends_with('\n') {
            out.push_str("\n\\ No newline at end of file\n");
        }
    };
    for l in &a[start..prefix] {
        line(' ', l);
    }
    for l in &a[prefix..a.len() - suffix] {
        line('-', l);
    }
    for l in &b[prefix..b.len() - suffix] {
        line('+', l);
    }
    for l in &a[a.len() - suffix..a_end] {
        line(' ', l);
    }
    out
}

/// The byte just past the closing quote of the quoted scalar opening at `start`: `''` is an
/// escaped quote in single-quoted scalars, `\"` in double-quoted ones.
fn quoted_end(text: &str, start: usize, quote: char) -> Option<usize> {
    let mut chars = text[start..].char_indices();
    if chars.next()?.1 != quote {
        return None;
    }
    while let Some((i, c)) = chars.next() {
        if quote == '"' && c == '\\' {
            chars.next();
        } else if c == quote {
            if quote == '\'' && text[start + i + 1..].starts_with('\'') {
                chars.next();
            } else {
                return Some(start + i + 1);
            }
        }
    }
    None
}

/// Byte offset of a character index (saphyr's markers count characters).
fn byte_offset(text: &str, chars: usize) -> usize {
    text.char_indices()
        .nth(chars)
        .map_or(text.len(), |(byte, _)| byte)
}

/// A YAML document as a tree of nodes that remember where their scalars are.
#[derive(Debug)]
enum Node {
    Scalar {
        value: String,
        style: ScalarStyle,
        /// Character indices of the scalar as written (quotes included).
        start: usize,
        end: usize,
    },
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>),
    Alias,
}

enum Frame {
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>, Option<Node>),
}

impl Node {
    /// Parse a single-document YAML text into a positioned tree.
    fn parse(text: &str) -> std::result::Result<Node, String> {
        let mut stack: Vec<Frame> = Vec::new();
        let mut root = None;
        let mut documents = 0;
        for item in Parser::new_from_str(text) {
            let (event, span) = item.map_err(|e| e.to_string())?;
            let node = match event {
                Event::DocumentStart(_) => {
                    documents += 1;
                    if documents > 1 {
                        return Err("more than one YAML document".into());
                    }
                    continue;
                }
                Event::Scalar(value, style, _, _) => Node::Scalar {
                    value: value.into_owned(),
                    style,
                    start: span.start.index(),
                    end: span.end.index(),
                },
                Event::Alias(_) => Node::Alias,
                Event::SequenceStart(..) => {
                    stack.push(Frame::Seq(Vec::new()));
                    continue;
                }
                Event::MappingStart(..) => {
                    stack.push(Frame::Map(Vec::new(), None));
                    continue;
                }
                Event::SequenceEnd | Event::MappingEnd => match stack.pop() {
                    Some(Frame::Seq(items)) => Node::Seq(items),
                    Some(Frame::Map(pairs, None)) => Node::Map(pairs),
                    _ => return Err("unbalanced YAML events".into()),
                },
                _ => continue,
            };
            match stack.last_mut() {
                None => root = Some(node),
                Some(Frame::Seq(items)) => items.push(node),
                Some(Frame::Map(pairs, pending)) => match pending.take() {
                    None => *pending = Some(node),
                    Some(key) => pairs.push((key, node)),
                },
            }
        }
        root.ok_or_else(|| "empty document".into())
    }

    /// The value of `key` in a mapping; exactly one such key.
    fn get(&self, key: &str) -> std::result::Result<&Node, String> {
        let Node::Map(pairs) = self else {
            return Err(format!("expected a mapping holding {key:?}"));
        };
        let mut found = pairs
            .iter()
            .filter(|(k, _)| matches!(k, Node::Scalar { value, .. } if value == key));
        let (_, value) = found.next().ok_or_else(|| format!("no key {key:?}"))?;
        if found.next().is_some() {
            return Err(format!("key {key:?} appears twice"));
        }
        Ok(value)
    }
}

/// `spec.volumes[name == volume].hostPath.path`.
fn find_host_path<'a>(root: &'a Node, volume: &str) -> std::result::Result<&'a Node, String> {
    let Node::Seq(volumes) = root.get("spec")?.get("volumes")? else {
        return Err("spec.volumes is not a list".into());
    };
    let mut named = volumes.iter().filter(|v| {
        v.get("name")
            .is_ok_and(|n| matches!(n, Node::Scalar { value, .. } if value == volume))
    });
    let entry = named
        .next()
        .ok_or_else(|| format!("no volume named {volume:?}"))?;
    if named.next().is_some() {
        return Err(format!("two volumes are named {volume:?}"));
    }
    let path = entry.get("hostPath")?.get("path")?;
    if matches!(path, Node::Alias) {
        return Err("hostPath.path is an alias (*name); edit it by hand".into());
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: &str = "/m/etcd.yaml";

    fn manifest(volumes: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: etcd\nspec:\n  containers:\n  - command:\n    - etcd\n    - --data-dir=/var/lib/etcd\n    name: etcd\n    volumeMounts:\n    - mountPath: /var/lib/etcd\n      name: etcd-data\n  volumes:\n{volumes}"
        )
    }

    fn set(text: &str, new: &str) -> Result<String> {
        rewrite_text(Path::new(M), text, Path::new(new)).map(|r| r.text)
    }

    /// Only the scalar's bytes differ: everything before and after is identical.
    fn assert_only_scalar_changed(old: &str, new: &str, old_value: &str, new_value: &str) {
        let at = old.find(old_value).expect("old value in old text");
        assert_eq!(&new[..at], &old[..at]);
        assert!(new[at..].starts_with(new_value), "{new}");
        assert_eq!(&new[at + new_value.len()..], &old[at + old_value.len()..]);
    }

    #[test]
    fn plain_path_is_replaced_in_place() {
        let old = manifest(
            "  - hostPath:\n      path: /var/lib/etcd\n      type: DirectoryOrCreate\n    name: etcd-data\nstatus: {}\n",
        );
        let new = set(&old, "/mnt/disk1/etcd").unwrap();
        assert_only_scalar_changed(
            &old,
            &new,
            "/var/lib/etcd\n      type",
            "/mnt/disk1/etcd\n      type",
        );
        // The mountPath and --data-dir still say /var/lib/etcd.
        assert!(new.contains("--data-dir=/var/lib/etcd\n"));
        assert!(new.contains("mountPath: /var/lib/etcd\n"));
    }

    #[test]
    fn quoting_style_is_kept() {
        let dq = manifest("  - hostPath:\n      path: \"/var/lib/etcd\"\n    name: etcd-data\n");
        assert!(set(&dq, "/mnt/e").unwrap().contains("path: \"/mnt/e\"\n"));
        let sq = manifest("  - hostPath:\n      path: '/var/lib/etcd'\n    name: etcd-data\n");
        assert!(set(&sq, "/mnt/e").unwrap().contains("path: '/mnt/e'\n"));
        let flow =
            manifest("  - {name: etcd-data, hostPath: {path: /var/lib/etcd, type: Directory}}\n");
        assert!(
            set(&flow, "/mnt/e")
                .unwrap()
                .contains("{path: /mnt/e, type: Directory}"),
            "{}",
            set(&flow, "/mnt/e").unwrap()
        );
    }

    #[test]
    fn new_value_is_quoted_when_yaml_needs_it() {
        let old =
            manifest("  - hostPath:\n      path: /var/lib/etcd # data\n    name: etcd-data\n");
        for (new, written) in [
            ("/mnt/my disk/etcd", "'/mnt/my disk/etcd'"),
            ("/mnt/a #b", "'/mnt/a #b'"),
            ("/mnt/a: b", "'/mnt/a: b'"),
            ("/mnt/it's", "'/mnt/it''s'"),
            ("/mnt/a,b", "'/mnt/a,b'"),
            ("/mnt/données", "/mnt/données"),
        ] {
            let text = set(&old, new).unwrap();
            assert!(
                text.contains(&format!("path: {written} # data\n")),
                "{new}: {text}"
            );
        }
        let dq = manifest("  - hostPath:\n      path: \"/var/lib/etcd\"\n    name: etcd-data\n");
        assert!(
            set(&dq, "/mnt/a\"b\\c")
                .unwrap()
                .contains(r#"path: "/mnt/a\"b\\c""#)
        );
    }

    #[test]
    fn quoted_values_followed_by_comments() {
        // The old host path may be anything; these carry escapes and quotes in comments.
        for (written, new_written) in [
            (
                r#""/var/lib/etcd"   # note "x""#,
                r#""/mnt/x"   # note "x""#,
            ),
            (r#""/srv/\"etcd\"" # q"#, r#""/mnt/x" # q"#),
            ("'/var/lib/etcd'  # it's", "'/mnt/x'  # it's"),
            ("'/srv/it''s' # c", "'/mnt/x' # c"),
        ] {
            let old = manifest(&format!(
                "  - hostPath:\n      path: {written}\n    name: etcd-data\n"
            ));
            let new = set(&old, "/mnt/x").unwrap_or_else(|e| panic!("{written}: {e}"));
            assert_eq!(
                new,
                old.replace(&format!("path: {written}"), &format!("path: {new_written}")),
                "{written}"
            );
        }
    }

    #[test]
    fn same_path_is_a_no_op() {
        let old = manifest("  - hostPath:\n      path: /var/lib/etcd\n    name: etcd-data\n");
        let r = rewrite_text(Path::new(M), &old, Path::new("/var/lib/etcd")).unwrap();
        assert!(!r.changed);
        assert_eq!(r.text, old);
    }

    #[test]
    fn non_ascii_before_the_scalar_does_not_shift_it() {
        let old = manifest(
            "  # données, 数据\n  - hostPath:\n      path: /var/lib/etcd\n    name: etcd-data\n",
        );
        let new = set(&old, "/mnt/x").unwrap();
        assert_eq!(new, old.replace("path: /var/lib/etcd", "path: /mnt/x"));
    }

    #[test]
    fn crlf_line_ends_survive() {
        let old = manifest("  - hostPath:\n      path: /var/lib/etcd\n    name: etcd-data\n")
            .replace('\n', "\r\n");
        let new = set(&old, "/mnt/x").unwrap();
        assert_eq!(new, old.replace("path: /var/lib/etcd", "path: /mnt/x"));
    }

    #[test]
    fn bad_new_paths_are_usage_errors() {
        let old = manifest("  - hostPath:\n      path: /var/lib/etcd\n    name: etcd-data\n");
        for new in [
            "",
            "relative/etcd",
            "/a\nb",
            "/a\rb",
            "/a\0b",
            "/a\tb",
            "/a/../b",
            "/",
            "/a ",
        ] {
            let err = set(&old, new).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{new:?}: {err}");
            assert!(!err.one_line().contains('\n'));
        }
    }

    #[test]
    fn refuses_what_it_cannot_change_surgically() {
        let cases = [
            // Block scalar.
            manifest("  - hostPath:\n      path: |-\n        /var/lib/etcd\n    name: etcd-data\n"),
            // Alias.
            manifest("  - hostPath:\n      path: *p\n    name: etcd-data\n").replace(
                "  name: etcd\nspec",
                "  name: etcd\n  labels: {d: &p /var/lib/etcd}\nspec",
            ),
            // Not a hostPath.
            manifest("  - emptyDir: {}\n    name: etcd-data\n"),
        ];
        for text in cases {
            let err = set(&text, "/mnt/x").unwrap_err();
            assert_eq!(err.exit_code(), 2, "{text}: {err}");
        }
    }

    #[test]
    fn anchored_or_tagged_value_is_refused() {
        // Changing an anchored scalar would also change every alias of it.
        for prop in ["&p ", "!!str "] {
            let text = format!(
                "{}extra: *p\n",
                manifest(&format!(
                    "  - hostPath:\n      path: {prop}/var/lib/etcd\n    name: etcd-data\n"
                ))
            )
            .replace(
                "extra: *p\n",
                if prop == "&p " { "extra: *p\n" } else { "" },
            );
            let err = set(&text, "/mnt/x").unwrap_err();
            assert_eq!(err.exit_code(), 2, "{text}");
            assert!(err.to_string().contains("anchor or tag"), "{err}");
        }
    }

    #[test]
    fn verification_rejects_any_other_change() {
        let old = manifest("  - hostPath:\n      path: /var/lib/etcd\n    name: etcd-data\n");
        let pod = StaticPod::parse(Path::new(M), &old).unwrap();
        let dv = pod.data_volume().unwrap();
        let good = old.replace("path: /var/lib/etcd", "path: /mnt/x");
        verify(Path::new(M), &old, &good, &dv, "/mnt/x").unwrap();
        for bad in [
            // Another field changed as well.
            good.replace("name: etcd\n", "name: etcd2\n"),
            // The mountPath moved along.
            good.replace("mountPath: /var/lib/etcd", "mountPath: /mnt/x"),
            // The value is not what was asked.
            old.replace("path: /var/lib/etcd", "path: /mnt/y"),
            // No longer YAML.
            good.replace("volumes:", "volumes: ["),
        ] {
            let err = verify(Path::new(M), &old, &bad, &dv, "/mnt/x").unwrap_err();
            assert_eq!(err.exit_code(), 2, "{bad}");
        }
    }

    #[test]
    fn diff_is_unified() {
        let old = "a\nb\nc\nd\ne\nf\ng\nh\n";
        let new = "a\nb\nc\nd\nE\nf\ng\nh\n";
        assert_eq!(
            unified_diff(old, new, "x", "x"),
            "--- x\n+++ x\n@@ -2,7 +2,7 @@\n b\n c\n d\n-e\n+E\n f\n g\n h\n"
        );
        assert_eq!(
            unified_diff("a\nb", "a\nc", "x", "y"),
            "--- x\n+++ y\n@@ -1,2 +1,2 @@\n a\n-b\n\\ No newline at end of file\n+c\n\\ No newline at end of file\n"
        );
        assert_eq!(unified_diff("same\n", "same\n", "x", "x"), "");
    }
}
