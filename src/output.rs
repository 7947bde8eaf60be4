//! Table and JSON printers. Commands build a serializable report and hand it here; this is
//! the only place that writes reports to stdout. JSON is one document per run, also on failure.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

use serde::Serialize;

/// How reports are printed (`-o table|json|prometheus`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    #[default]
    Table,
    Json,
    /// node_exporter's textfile format; only for reports that export metrics (`health`).
    Prometheus,
}

/// A report that can be printed both ways (and, for some, as metrics).
pub trait Render: Serialize {
    /// The human form: aligned columns, sizes in human units.
    fn table(&self) -> String;

    /// The report as Prometheus metrics, for reports that have them.
    fn prometheus(&self) -> Option<String> {
        None
    }
}

static PRINTED: AtomicBool = AtomicBool::new(false);

/// Whether a report has been printed on stdout in this process.
pub fn printed() -> bool {
    PRINTED.load(Ordering::SeqCst)
}

/// Print a report on stdout in the chosen format.
pub fn print<T: Render>(format: Format, report: &T) {
    let text = match format {
        Format::Table => report.table(),
        Format::Json => serde_json::to_string_pretty(report).expect("reports serialize"),
        // `commands::run` refuses `-o prometheus` for commands without metrics.
        Format::Prometheus => report
            .prometheus()
            .expect("-o prometheus is admitted only for reports with metrics"),
    };
    emit(&text);
}

/// In JSON mode, a command that failed before it had a report still prints one document.
pub fn print_error_json(message: &str, exit_code: i32) {
    #[derive(Serialize)]
    struct ErrorDoc<'a> {
        ok: bool,
        error: &'a str,
        exit_code: i32,
    }
    let doc = ErrorDoc {
        ok: false,
        error: message,
        exit_code,
    };
    emit(&serde_json::to_string_pretty(&doc).expect("error doc serializes"));
}

fn emit(text: &str) {
    PRINTED.store(true, Ordering::SeqCst);
    let mut bytes = text.as_bytes().to_vec();
    if !text.ends_with('\n') {
        bytes.push(b'\n');
    }
    // A closed pipe ends the process quietly (`quiet_on_broken_pipe`); any other failure
    // to print a report is not worth a panic either: the exit code still says the verdict.
    let _ = write_stdout(&bytes);
}

/// Write bytes on stdout and flush. A reader that went away (`etcdops health | head -c1`)
/// ends the process as coreutils do: quietly, by SIGPIPE (the shell reports 141). Other
/// errors (a full disk behind a redirect) are returned for the caller to judge.
pub fn write_stdout(bytes: &[u8]) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    quiet_on_broken_pipe(out.write_all(bytes).and_then(|()| out.flush()))
}

/// The one-line error on stderr (main's only print); a closed stderr ends the process as
/// a closed stdout does, instead of panicking in `eprintln!`.
pub fn print_error_line(line: &str) {
    let mut err = std::io::stderr().lock();
    let _ = quiet_on_broken_pipe(writeln!(err, "etcdops: {line}"));
}

/// Rust starts programs with SIGPIPE ignored, so a write to a closed pipe returns EPIPE and
/// `println!` panics on it. Unix tools instead die of SIGPIPE without a word: do that, by
/// restoring the default action and raising the signal. Only here, at the point of the
/// failed write, and not at startup: with the default action any write to a dead pipe
/// (a child's stdin, a peer that hung up) would kill a migration half-way.
fn quiet_on_broken_pipe(result: std::io::Result<()>) -> std::io::Result<()> {
    match result {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
            use nix::sys::signal::{SigHandler, Signal, raise, signal};
            // SAFETY: installing SIG_DFL has no handler to race with; the process ends next.
            let _ = unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) };
            let _ = raise(Signal::SIGPIPE);
            // Unreachable unless SIGPIPE is blocked: exit as the shell would have reported it.
            std::process::exit(128 + Signal::SIGPIPE as i32)
        }
        other => other,
    }
}

/// A plain text table: left-aligned columns separated by two spaces.
#[derive(Debug, Default)]
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new<S: Into<String>>(headers: impl IntoIterator<Item = S>) -> Self {
        Table {
            headers: headers.into_iter().map(Into::into).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row<S: Into<String>>(&mut self, cells: impl IntoIterator<Item = S>) {
        self.rows.push(cells.into_iter().map(Into::into).collect());
    }

    pub fn render(&self) -> String {
        let cols = self
            .rows
            .iter()
            .map(Vec::len)
            .chain([self.headers.len()])
            .max()
            .unwrap_or(0);
        let mut widths = vec![0usize; cols];
        for line in std::iter::once(&self.headers).chain(&self.rows) {
            for (i, cell) in line.iter().enumerate() {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
        let mut out = String::new();
        for line in std::iter::once(&self.headers).chain(&self.rows) {
            let mut text = String::new();
            for (i, cell) in line.iter().enumerate() {
                if i + 1 == line.len() {
                    text.push_str(cell);
                } else {
                    let pad = widths[i] - cell.chars().count();
                    text.push_str(cell);
                    text.push_str(&" ".repeat(pad + 2));
                }
            }
            out.push_str(text.trim_end());
            out.push('\n');
        }
        out
    }
}

/// Bytes in human units (IEC), as tables show them: `1.5 MiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// Milliseconds as tables show them: `850ms`, `12.3s`, `4m05s`.
pub fn millis(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        format!("{:.1}s", ms as f64 / 1000.0)
    } else {
        format!("{}m{:02}s", ms / 60_000, (ms % 60_000) / 1000)
    }
}

/// A member or cluster id as etcd prints it: lower-case hex, no zero padding.
pub fn hex_id(id: u64) -> String {
    format!("{id:x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_columns() {
        let mut t = Table::new(["A", "LONGER"]);
        t.row(["xxxx", "y"]);
        assert_eq!(t.render(), "A     LONGER\nxxxx  y\n");
    }

    #[test]
    fn human_units() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(2 * 1024 * 1024 * 1024), "2.0 GiB");
        assert_eq!(millis(850), "850ms");
        assert_eq!(millis(12_300), "12.3s");
        assert_eq!(millis(245_000), "4m05s");
        assert_eq!(hex_id(0x8e9e05c52164694d), "8e9e05c52164694d");
        assert_eq!(hex_id(0xabc), "abc");
    }
}
