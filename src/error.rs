//! The one error type of etcdops and the exit-code table of DESIGN.md.
//!
//! Every variant carries the thing it is about (path, endpoint, step) so that the one line
//! `main` prints names it. Exit codes live here and nowhere else.

use std::path::PathBuf;

/// Process exit codes (DESIGN.md, "Exit codes").
pub mod exit {
    /// Success; healthy.
    pub const OK: i32 = 0;
    /// An operation ran and failed (rolled back where it applies).
    pub const FAILED: i32 = 1;
    /// Invalid usage or input; nothing changed.
    pub const USAGE: i32 = 2;
    /// Cannot reach etcd; nothing changed.
    pub const UNREACHABLE: i32 = 3;
    /// Refused or unhealthy; nothing changed.
    pub const REFUSED: i32 = 4;
    /// Needs attention: interrupted migration or failed rollback; journal kept.
    pub const ATTENTION: i32 = 5;
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad flag, bad value, bad rule: exit 2.
    #[error("{0}")]
    Usage(String),

    /// A file the operator gave us is unusable (malformed manifest, not a data dir): exit 2.
    #[error("{}: {reason}", path.display())]
    Input { path: PathBuf, reason: String },

    /// No endpoint answered, or TLS failed everywhere: exit 3.
    #[error("cannot reach etcd at {endpoints}: {reason}")]
    Unreachable { endpoints: String, reason: String },

    /// The health verdict is unhealthy: exit 4. The report itself has already been printed.
    #[error("unhealthy: {0}")]
    Unhealthy(String),

    /// A precondition is not met (etcd still running on the data dir, target not empty, ...): exit 4.
    #[error("refused: {what}: {reason}")]
    Refused { what: String, reason: String },

    /// An operation ran and failed: exit 1.
    #[error("{what} failed: {reason}")]
    Failed { what: String, reason: String },

    /// A filesystem call failed on a path: exit 1.
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// An etcd RPC failed on a reachable endpoint: exit 1.
    #[error("{op} on {endpoint}: {reason}")]
    Etcd {
        op: &'static str,
        endpoint: String,
        reason: String,
    },

    /// A configured external command (kubelet control) failed; keeps its stderr: exit 1.
    #[error("command `{command}` {status}{}", if stderr.is_empty() { String::new() } else { format!(": {stderr}") })]
    Command {
        command: String,
        status: String,
        stderr: String,
    },

    /// A migration was interrupted or its rollback failed: exit 5.
    #[error("{0}")]
    Attention(String),
}

impl Error {
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Usage(_) | Error::Input { .. } => exit::USAGE,
            Error::Unreachable { .. } => exit::UNREACHABLE,
            Error::Unhealthy(_) | Error::Refused { .. } => exit::REFUSED,
            Error::Failed { .. }
            | Error::Io { .. }
            | Error::Etcd { .. }
            | Error::Command { .. } => exit::FAILED,
            Error::Attention(_) => exit::ATTENTION,
        }
    }

    /// Shorthand for an I/O error on a path.
    pub fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }

    pub fn input(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Error::Input {
            path: path.into(),
            reason: reason.into(),
        }
    }

    pub fn refused(what: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Refused {
            what: what.into(),
            reason: reason.into(),
        }
    }

    pub fn failed(what: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Failed {
            what: what.into(),
            reason: reason.into(),
        }
    }

    /// The single line printed on stderr: the error and its sources, newlines folded.
    pub fn one_line(&self) -> String {
        let mut line = self.to_string();
        let mut src = std::error::Error::source(self);
        while let Some(s) = src {
            let text = s.to_string();
            if !line.contains(&text) {
                line.push_str(": ");
                line.push_str(&text);
            }
            src = s.source();
        }
        line.replace(['\n', '\r'], " ")
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_design_table() {
        assert_eq!(Error::Usage("x".into()).exit_code(), 2);
        assert_eq!(Error::input("/m", "bad").exit_code(), 2);
        let unreachable = Error::Unreachable {
            endpoints: "e".into(),
            reason: "r".into(),
        };
        assert_eq!(unreachable.exit_code(), 3);
        assert_eq!(Error::Unhealthy("x".into()).exit_code(), 4);
        assert_eq!(Error::refused("a", "b").exit_code(), 4);
        assert_eq!(Error::failed("a", "b").exit_code(), 1);
        assert_eq!(Error::Attention("x".into()).exit_code(), 5);
    }

    #[test]
    fn one_line_folds_newlines_and_names_the_path() {
        let e = Error::io(
            "open",
            "/etc/kubernetes/manifests/etcd.yaml",
            std::io::Error::other("a\nb"),
        );
        let line = e.one_line();
        assert!(!line.contains('\n'));
        assert!(
            line.contains("/etc/kubernetes/manifests/etcd.yaml"),
            "{line}"
        );
    }
}
