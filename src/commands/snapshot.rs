//! `etcdops snapshot save FILE` / `etcdops snapshot verify FILE...`. Save shows a progress bar
//! on a terminal only (never with `-o json`), and turns Ctrl-C or SIGTERM into a clean
//! failure: the save is dropped, which removes its `.part`.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::signal::unix::{SignalKind, signal};

use crate::cli::{GlobalArgs, SnapshotCommand};
use crate::error::{Error, Result};
use crate::etcd::snapshot::{self, SaveOptions, SnapshotReport, VerifyReport, part_path};
use crate::output::{self, Format, Render, bytes, millis};

pub fn exec(global: &GlobalArgs, cmd: SnapshotCommand) -> Result<()> {
    match cmd {
        SnapshotCommand::Save(args) => {
            // Refuse an existing file before contacting anything.
            snapshot::preflight(&args.file)?;
            let conn = super::given(global).resolve()?;
            let format = super::format(global);
            let bar = (format == Format::Table && std::io::stderr().is_terminal()).then(|| {
                let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
                bar.set_style(
                    ProgressStyle::with_template(
                        "{bytes}/{total_bytes} [{bar:40}] {bytes_per_sec} eta {eta}",
                    )
                    .expect("the template is valid")
                    .progress_chars("=> "),
                );
                bar
            });
            let mut progress = |done: u64, total: u64| {
                if let Some(b) = &bar {
                    b.set_length(total);
                    b.set_position(done);
                }
            };
            let opts = SaveOptions {
                idle_timeout: args.idle_timeout,
            };
            let what = format!("snapshot save {}", args.file.display());
            let part = part_path(&args.file);
            let result = super::block_on(async {
                let interrupted = |sig: &str| {
                    Error::failed(
                        &what,
                        format!("interrupted by {sig}; {} removed", part.display()),
                    )
                };
                let mut term = signal(SignalKind::terminate())
                    .map_err(|e| Error::failed("install a SIGTERM handler", e.to_string()))?;
                tokio::select! {
                    r = snapshot::save(&conn, &args.file, &opts, &mut progress) => r,
                    _ = tokio::signal::ctrl_c() => Err(interrupted("Ctrl-C")),
                    _ = term.recv() => Err(interrupted("SIGTERM")),
                }
            });
            if let Some(b) = &bar {
                b.finish_and_clear();
            }
            let report = result?;
            output::print(format, &report);
            Ok(())
        }
        SnapshotCommand::Verify(args) => {
            // Every file is read before anything is judged: a missing file or a directory is
            // a usage error (exit 2) naming it, whichever position it has.
            let reports = args
                .files
                .iter()
                .map(|f| snapshot::verify(f))
                .collect::<Result<Vec<_>>>()?;
            let format = super::format(global);
            let bad: Vec<String> = reports
                .iter()
                .filter_map(|r| {
                    r.problem
                        .as_ref()
                        .map(|p| format!("{}: {p}", r.file.display()))
                })
                .collect();
            match reports.as_slice() {
                // One file keeps the document it always had.
                [one] => output::print(format, one),
                _ => output::print(
                    format,
                    &VerifyAll {
                        ok: bad.is_empty(),
                        files: reports,
                    },
                ),
            }
            match bad.as_slice() {
                [] => Ok(()),
                [one] => Err(Error::failed("snapshot verify", one.clone())),
                _ => Err(Error::failed(
                    "snapshot verify",
                    format!(
                        "{} of {} files corrupt: {}",
                        bad.len(),
                        args.files.len(),
                        bad.join("; ")
                    ),
                )),
            }
        }
    }
}

/// `snapshot verify` of several files: `{ok, files: [the one-file document, ...]}`.
#[derive(serde::Serialize)]
struct VerifyAll {
    ok: bool,
    files: Vec<VerifyReport>,
}

impl Render for VerifyAll {
    fn table(&self) -> String {
        self.files.iter().map(Render::table).collect()
    }
}

impl Render for SnapshotReport {
    fn table(&self) -> String {
        format!(
            "saved {} ({}) from {} (member {}) at revision {} in {}\nsha256 {}\nblake3 {}\n",
            self.file.display(),
            bytes(self.size),
            self.endpoint,
            self.member_id,
            self.revision,
            millis(self.took_ms),
            self.sha256,
            self.blake3
        )
    }
}

impl Render for VerifyReport {
    fn table(&self) -> String {
        let verdict = match &self.problem {
            None => "ok: the sha256 trailer matches".to_string(),
            Some(p) => format!("CORRUPT: {p}"),
        };
        format!(
            "{} ({}): {verdict}\nsha256 {}\nblake3 {}\n",
            self.file.display(),
            bytes(self.size),
            self.sha256,
            self.blake3
        )
    }
}
