//! `etcdops datadir check | copy | precopy | verify | sums`: arguments -> options -> `crate::datadir`
//! -> printer. The progress bar and the SIGINT/SIGTERM handling live here, not in the
//! library, which only sees a `Progress` and a cancel flag.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use nix::libc;
use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};

use crate::cli::{DatadirArgs, DatadirCommand, GlobalArgs};
use crate::datadir::digest::SumsReport;
use crate::datadir::{
    self, CheckReport, CopyOptions, CopyReport, KnownSums, PrecopyOptions, PrecopyReport,
    PrecopyUse, ReadBack, VerifyOptions, VerifyReport,
};
use crate::error::{Error, Result};
use crate::output::{self, Format, Render, Table, bytes, millis};

pub fn exec(global: &GlobalArgs, args: DatadirArgs) -> Result<()> {
    let format = super::format(global);
    match args.command {
        DatadirCommand::Check(a) => {
            let report = datadir::check(&a.dir)?;
            output::print(format, &report);
            if let Some(first) = report.uncopyable.first() {
                // What `datadir copy` would refuse is a finding of check too (issue 11).
                Err(Error::input(
                    &report.path,
                    format!(
                        "{} entr{} that `datadir copy` refuses; first: {first}",
                        report.uncopyable.len(),
                        if report.uncopyable.len() == 1 {
                            "y"
                        } else {
                            "ies"
                        }
                    ),
                ))
            } else if report.quiesced {
                Ok(())
            } else {
                Err(Error::refused(
                    report.path.display().to_string(),
                    format!(
                        "etcd is running on this data dir ({} locked)",
                        report.in_use.join(", ")
                    ),
                ))
            }
        }
        DatadirCommand::Copy(a) => {
            let bar = Bar::new(format);
            let opts = CopyOptions {
                src: a.src,
                dst: a.dst,
                progress: &bar,
                cancel: Some(cancel_on_signals()?),
                sums_file: a.sums,
            };
            let report = if a.update {
                datadir::finish_copy(&opts)?
            } else {
                datadir::copy(&opts)?
            };
            output::print(format, &report);
            Ok(())
        }
        DatadirCommand::Precopy(a) => {
            let bar = Bar::new(format);
            let report = datadir::precopy(&PrecopyOptions {
                src: a.src,
                dst: a.dst,
                progress: &bar,
                cancel: Some(cancel_on_signals()?),
            })?;
            output::print(format, &report);
            Ok(())
        }
        DatadirCommand::Verify(a) => {
            let src_sums = a.sums.as_deref().map(KnownSums::load).transpose()?;
            let read_back = if a.verify_from_cache {
                ReadBack::Cache
            } else {
                ReadBack::Device
            };
            let report = datadir::verify_with(
                &VerifyOptions {
                    src: a.src,
                    dst: a.dst,
                    src_sums,
                },
                read_back,
            )?;
            output::print(format, &report);
            if report.identical {
                Ok(())
            } else {
                Err(Error::failed(
                    format!(
                        "verify {} against {}",
                        report.dst.display(),
                        report.src.display()
                    ),
                    format!("{} difference(s)", report.differences.len()),
                ))
            }
        }
        DatadirCommand::Sums(a) => {
            let report = datadir::sums(&a.dir)?;
            output::print(format, &report);
            Ok(())
        }
    }
}

/// The copy's progress bar: bytes, rate and ETA on stderr, only when stderr is a terminal
/// and the output is a table (JSON output and pipes stay clean).
pub struct Bar(Option<ProgressBar>);

impl Bar {
    pub fn new(format: Format) -> Bar {
        if format != Format::Table || !std::io::stderr().is_terminal() {
            return Bar(None);
        }
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        let style = ProgressStyle::with_template(
            "copying [{bar:30}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} ETA {eta}",
        )
        .expect("the template is valid")
        .progress_chars("=> ");
        bar.set_style(style);
        Bar(Some(bar))
    }
}

impl datadir::Progress for Bar {
    fn start(&self, total: u64) {
        if let Some(b) = &self.0 {
            b.set_length(total);
        }
    }
    fn advance(&self, n: u64) {
        if let Some(b) = &self.0 {
            b.inc(n);
        }
    }
    fn finish(&self) {
        // Cleared so that the error line (if any) stands alone on stderr.
        if let Some(b) = &self.0 {
            b.finish_and_clear();
        }
    }
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn note_interrupt(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Turn the first SIGINT/SIGTERM into a request to stop the copy (which then removes its
/// staging dir); a second one takes the default action, for an operator who must get out
/// now (a later copy removes the stale staging dir).
pub fn cancel_on_signals() -> Result<&'static AtomicBool> {
    let action = SigAction::new(
        SigHandler::Handler(note_interrupt),
        SaFlags::SA_RESTART | SaFlags::SA_RESETHAND,
        SigSet::empty(),
    );
    for sig in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { sigaction(sig, &action) }
            .map_err(|e| Error::failed("install signal handlers", e.to_string()))?;
    }
    Ok(&INTERRUPTED)
}

impl Render for CheckReport {
    fn table(&self) -> String {
        let mut t = Table::new(["DATA DIR", "STATE", "FILES", "SIZE", "DB", "WAL"]);
        t.row([
            self.path.display().to_string(),
            if self.quiesced {
                "quiesced".to_string()
            } else {
                format!("IN USE ({})", self.in_use.join(", "))
            },
            self.files.to_string(),
            bytes(self.bytes),
            bytes(self.db_size),
            format!("{} in {} file(s)", bytes(self.wal_bytes), self.wal_files),
        ]);
        let mut out = t.render();
        for u in &self.uncopyable {
            out.push_str(&format!("copy would refuse: {u}\n"));
        }
        out
    }
}

impl Render for CopyReport {
    fn table(&self) -> String {
        format!(
            "copied {} file(s) in {} dir(s), {} in {} ({}/s)\n  from {}\n  to   {}\ndigest {}\n{}{}",
            self.files,
            self.dirs,
            bytes(self.bytes),
            millis(self.took_ms),
            bytes((self.bytes as f64 / (self.took_ms.max(1) as f64 / 1000.0)) as u64),
            self.src.display(),
            self.dst.display(),
            self.digest,
            match self.precopy {
                PrecopyUse::NotAsked => String::new(),
                PrecopyUse::Used => format!(
                    "pre-copy used: {} written after the stop\n",
                    bytes(self.bytes_after_stop)
                ),
                PrecopyUse::FellBack => format!(
                    "pre-copy not used ({}): copied everything\n",
                    self.precopy_fallback.as_deref().unwrap_or("unusable")
                ),
            },
            self.sums_file
                .as_ref()
                .map(|f| format!("sums   {}\n", f.display()))
                .unwrap_or_default()
        )
    }
}

impl Render for VerifyReport {
    fn table(&self) -> String {
        let mut out = String::new();
        if !self.differences.is_empty() {
            let mut t = Table::new(["PATH", "DIFFERENCE", "SOURCE VS TARGET"]);
            for d in &self.differences {
                t.row([d.path.clone(), d.kind.name().to_string(), d.detail.clone()]);
            }
            out.push_str(&t.render());
            out.push('\n');
        }
        out.push_str(&format!(
            "{}: {} vs {} ({} file(s), {} compared by content, read from the {}, in {})\n",
            if self.identical {
                "identical".to_string()
            } else {
                format!("{} DIFFERENCE(S)", self.differences.len())
            },
            self.src.display(),
            self.dst.display(),
            self.files,
            bytes(self.bytes),
            match self.verified_from {
                datadir::VerifiedFrom::Device => "device".to_string(),
                datadir::VerifiedFrom::PageCache => format!(
                    "page cache ({} of the copy was cached)",
                    bytes(self.resident_bytes)
                ),
            },
            millis(self.took_ms)
        ));
        out
    }
}

impl Render for PrecopyReport {
    fn table(&self) -> String {
        format!(
            "pre-copied {} file(s), {} in {}\n  from {}\n  to   {} (staging for {})\n\
             next: stop etcd, then `etcdops datadir copy --update {} {}`\n",
            self.files,
            bytes(self.bytes),
            millis(self.took_ms),
            self.src.display(),
            self.staging.display(),
            self.dst.display(),
            self.src.display(),
            self.dst.display()
        )
    }
}

impl Render for SumsReport {
    /// Exactly the b3sum lines, so the output can be fed to `b3sum --check`.
    fn table(&self) -> String {
        self.sums.text()
    }
}
