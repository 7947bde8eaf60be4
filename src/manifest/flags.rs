//! Surgical edits of the etcd container's `--flag=value` words, for `member rejoin`
//! (`--initial-cluster` set to the current members, `--initial-cluster-state=existing`):
//! the same method as `rewrite` (set-data-path) — change the bytes of one list item, add
//! one where the flag is missing, re-parse, and prove that the result equals the original
//! YAML tree with exactly those words changed, else write nothing.
//!
//! Only the `--flag=value` form written as a plain or single-quoted list item on a line of
//! its own is edited (what kubeadm writes); anything else is refused with "edit it by hand".

use std::path::Path;

use serde_yaml::Value;

use super::StaticPod;
use crate::error::{Error, Result};

/// One flag to set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlagEdit {
    /// Without dashes: `initial-cluster`.
    pub name: String,
    pub value: String,
}

/// Where the etcd container's flags live in the YAML tree.
fn words_slot<'a>(tree: &'a mut Value, container: usize, list: &str) -> Option<&'a mut Vec<Value>> {
    tree.get_mut("spec")?
        .get_mut("containers")?
        .get_mut(container)?
        .get_mut(list)?
        .as_sequence_mut()
}

fn render(word: &str) -> String {
    let plain_ok = word
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "/._-+@~=:,".contains(c))
        && !word.contains(": ");
    if plain_ok {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', "''"))
    }
}

/// The manifest text with every edit applied: pure, no I/O; `path` names the manifest in
/// errors. A flag present as `--name=value` has its list item replaced; a missing flag is
/// added as a new item right after the etcd command's last flag. Refuses (exit 2) whenever the
/// result is not exactly the original with those words changed.
pub fn set_flags_text(path: &Path, text: &str, edits: &[FlagEdit]) -> Result<String> {
    let pod = StaticPod::parse(path, text)?;
    let container = pod.etcd_container()?;
    let ci = pod
        .pod
        .spec
        .containers
        .iter()
        .position(|c| std::ptr::eq(c, container))
        .expect("the etcd container is one of the pod's");
    let by_hand = |why: String| Error::input(path, format!("{why}; edit it by hand"));
    let mut lines: Vec<String> = text.split_inclusive('\n').map(str::to_string).collect();
    let mut expected: Value = serde_yaml::from_str(text)
        .map_err(|e| Error::input(path, format!("not valid YAML: {e}")))?;
    let list = if container.args.iter().any(|a| a.starts_with("--")) {
        "args"
    } else {
        "command"
    };
    let words: Vec<String> = if list == "args" {
        container.args.clone()
    } else {
        container.command.clone()
    };
    let mut added = 0usize;
    // Where the next added flag goes: after the last flag, then after each added one.
    let mut insert_at: Option<usize> = None;
    for edit in edits {
        let prefix = format!("--{}=", edit.name);
        let new_word = format!("{prefix}{}", edit.value);
        if edit.value.contains(['\n', '\r']) {
            return Err(Error::Usage(format!(
                "--{} value contains a line break",
                edit.name
            )));
        }
        // `--name value` (two words) or a repeated flag: not ours to guess.
        let bare = format!("--{}", edit.name);
        if words.iter().any(|w| w.trim() == bare) {
            return Err(by_hand(format!("--{} is written as two words", edit.name)));
        }
        let hits: Vec<usize> = words
            .iter()
            .enumerate()
            .filter(|(_, w)| w.starts_with(&prefix))
            .map(|(i, _)| i)
            .collect();
        let seq = words_slot(&mut expected, ci, list)
            .ok_or_else(|| by_hand(format!("no {list} list in the etcd container")))?;
        match hits.as_slice() {
            [] => {
                // After the last `--` word: find that word's line and add one like it.
                let last = words
                    .iter()
                    .rposition(|w| w.starts_with("--"))
                    .ok_or_else(|| by_hand("the etcd command has no flags".into()))?;
                let line = match insert_at {
                    Some(l) => l,
                    None => unique_line(&lines, &words[last]).ok_or_else(|| {
                        by_hand(format!("cannot find the line of {:?}", words[last]))
                    })?,
                };
                let indent = item_indent(&lines[line]);
                lines.insert(line + 1, format!("{indent}{}\n", render(&new_word)));
                insert_at = Some(line + 1);
                seq.insert(last + 1 + added, Value::String(new_word));
                added += 1;
            }
            [i] => {
                let line = unique_line(&lines, &words[*i])
                    .ok_or_else(|| by_hand(format!("cannot find the line of {:?}", words[*i])))?;
                let indent = item_indent(&lines[line]);
                lines[line] = format!("{indent}{}\n", render(&new_word));
                // Earlier insertions shift indices after them only.
                let at = seq
                    .iter()
                    .position(|v| v.as_str() == Some(words[*i].as_str()))
                    .expect("the word is in the list");
                seq[at] = Value::String(new_word);
            }
            _ => {
                return Err(by_hand(format!("--{} appears more than once", edit.name)));
            }
        }
    }
    let new_text: String = lines.concat();
    let refuse = |why: String| {
        Error::input(
            path,
            format!("refusing to write: the rewritten manifest {why}; the file is unchanged"),
        )
    };
    let got: Value =
        serde_yaml::from_str(&new_text).map_err(|e| refuse(format!("does not parse: {e}")))?;
    if got != expected {
        return Err(refuse(
            "would differ from the original in more than the edited flags".into(),
        ));
    }
    let after = StaticPod::parse(path, &new_text)?;
    for edit in edits {
        if after.etcd_flag(&edit.name)?.as_deref() != Some(edit.value.as_str()) {
            return Err(refuse(format!("does not read back --{}", edit.name)));
        }
    }
    Ok(new_text)
}

/// The text before a list item's value: its indentation and `- `.
fn item_indent(line: &str) -> String {
    let start = line.len() - line.trim_start().len();
    format!("{}- ", &line[..start])
}

/// The one line that is a list item holding exactly `word` (plain or single-quoted).
fn unique_line(lines: &[String], word: &str) -> Option<usize> {
    let plain = word.to_string();
    let quoted = format!("'{}'", word.replace('\'', "''"));
    let mut found = None;
    for (i, l) in lines.iter().enumerate() {
        let t = l.trim_end_matches(['\n', '\r']).trim_start();
        if let Some(item) = t.strip_prefix("- ")
            && (item.trim_end() == plain || item.trim_end() == quoted)
        {
            if found.is_some() {
                return None;
            }
            found = Some(i);
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    const KUBEADM: &str = include_str!("../../tests/fixtures/manifests/kubeadm-v1.31.yaml");

    fn edits(cluster: &str) -> Vec<FlagEdit> {
        vec![
            FlagEdit {
                name: "initial-cluster".into(),
                value: cluster.into(),
            },
            FlagEdit {
                name: "initial-cluster-state".into(),
                value: "existing".into(),
            },
        ]
    }

    #[test]
    fn sets_initial_cluster_and_adds_the_state_changing_nothing_else() {
        let p = Path::new("/m/etcd.yaml");
        let cluster = "cp1=https://10.0.0.11:2380,cp2=https://10.0.0.12:2380";
        let new = set_flags_text(p, KUBEADM, &edits(cluster)).unwrap();
        let pod = StaticPod::parse(p, &new).unwrap();
        assert_eq!(pod.etcd_flag("initial-cluster").unwrap().unwrap(), cluster);
        assert_eq!(
            pod.etcd_flag("initial-cluster-state").unwrap().unwrap(),
            "existing"
        );
        // Every other line is byte-identical: the diff is the edited line plus one added.
        let old_lines: Vec<&str> = KUBEADM.lines().collect();
        let new_lines: Vec<&str> = new.lines().collect();
        // kubeadm init's manifest has no --initial-cluster-state: one line is added.
        assert!(!KUBEADM.contains("--initial-cluster-state="));
        assert_eq!(new_lines.len(), old_lines.len() + 1);
        let fresh: Vec<&&str> = new_lines
            .iter()
            .filter(|l| !old_lines.contains(l))
            .collect();
        assert_eq!(
            fresh,
            [
                &&*format!("    - --initial-cluster={cluster}"),
                &"    - --initial-cluster-state=existing"
            ]
        );
        let gone = old_lines.iter().filter(|l| !new_lines.contains(l)).count();
        assert_eq!(gone, 1, "only the old --initial-cluster line goes");
        // Applying it again is a no-op.
        assert_eq!(set_flags_text(p, &new, &edits(cluster)).unwrap(), new);
    }

    #[test]
    fn refuses_what_it_cannot_edit_safely() {
        let p = Path::new("/m/etcd.yaml");
        let twice = KUBEADM.replace(
            "- --name=",
            "- --initial-cluster=x=https://1.1.1.1:2380\n    - --name=",
        );
        let e = set_flags_text(p, &twice, &edits("a=https://1.1.1.1:2380")).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(e.one_line().contains("more than once"), "{}", e.one_line());
        let e = set_flags_text(
            p,
            KUBEADM,
            &[FlagEdit {
                name: "initial-cluster".into(),
                value: "a\nb".into(),
            }],
        )
        .unwrap_err();
        assert_eq!(e.exit_code(), 2);
    }
}
