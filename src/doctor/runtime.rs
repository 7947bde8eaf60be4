//! What runs: kubelet (the configured status command), an etcd process serving from this
//! manifest's data dir (it holds the db flock and the WAL locks: DESIGN.md, "Facts"), and
//! the local member and the cluster answering.

use super::{Ctx, Verdict};
use crate::datadir::quiesce;

fn kubelet_active(ctx: &Ctx) -> Option<bool> {
    ctx.opts.kubelet.is_active().ok()
}

pub fn kubelet(ctx: &Ctx) -> Verdict {
    let cmd = &ctx.opts.kubelet.status;
    match ctx.opts.kubelet.is_active() {
        Ok(true) => Verdict::ok(format!("`{cmd}` exits 0")),
        Ok(false) => Verdict::fail(
            format!(
                "`{cmd}` says kubelet is not active: static pods are not (re)started, a manifest change is not applied"
            ),
            ctx.opts.kubelet.start.clone(),
        ),
        Err(e) => Verdict::fail(
            format!("cannot run the kubelet status command: {}", e.one_line()),
            format!("pass the right command with --kubelet-status-cmd (now `{cmd}`)"),
        ),
    }
}

/// How to see why etcd does not run, when kubelet does.
fn logs_hint() -> &'static str {
    "crictl logs $(crictl ps -a --name etcd -q | head -n 1)"
}

pub fn process(ctx: &Ctx) -> Verdict {
    let (_, dv) = match ctx.pod() {
        Ok(x) => x,
        Err(e) => return Verdict::skipped(e),
    };
    let dir = &dv.data_host_path;
    let report = match quiesce::check(dir) {
        Ok(r) => r,
        Err(e) => {
            return Verdict::skipped(format!(
                "{} is not a data dir (see hostpath.data): {}",
                dir.display(),
                e.one_line()
            ));
        }
    };
    if !report.quiesced {
        let answering = ctx.etcd().ok().and_then(|f| {
            f.local
                .status
                .as_ref()
                .map(|s| (f.local.endpoint.clone(), s.member_id))
        });
        return match answering {
            Some((ep, id)) => Verdict::ok(format!(
                "etcd holds {} in {} and answers at {ep} as member {id:x}",
                report.in_use.join(", "),
                dir.display()
            )),
            None => Verdict::fail(
                format!(
                    "a process holds {} in {} but etcd does not answer at {}",
                    report.in_use.join(", "),
                    dir.display(),
                    ctx.etcd()
                        .map(|f| f.local.endpoint.clone())
                        .unwrap_or_default()
                ),
                logs_hint(),
            ),
        };
    }
    let fix = if kubelet_active(ctx) == Some(false) {
        ctx.opts.kubelet.start.clone()
    } else {
        logs_hint().to_string()
    };
    Verdict::fail(
        format!(
            "no process holds etcd's locks in {}: etcd does not run from this manifest's data dir{}",
            dir.display(),
            if kubelet_active(ctx) == Some(false) {
                " (kubelet is not active)"
            } else {
                ""
            }
        ),
        fix,
    )
}

pub fn health(ctx: &Ctx) -> Verdict {
    let facts = match ctx.etcd() {
        Ok(f) => f,
        Err(e) => return Verdict::fail(format!("cannot ask etcd: {e}"), logs_hint()),
    };
    let local = &facts.local;
    let Some(status) = &local.status else {
        let fix = if kubelet_active(ctx) == Some(false) {
            ctx.opts.kubelet.start.clone()
        } else {
            logs_hint().to_string()
        };
        return Verdict::fail(
            format!(
                "the local member at {} does not answer: {}",
                local.endpoint,
                local.error.as_deref().unwrap_or("no status")
            ),
            fix,
        );
    };
    // Alarms have their own check; everything else the health model finds counts here.
    let problems = facts.health.problems_except_alarms(&["NOSPACE", "CORRUPT"]);
    let cluster = facts.health.cluster.as_ref();
    let evidence = format!(
        "{} is member {:x} (etcd {}, {}), revision {}; cluster {}: {} members{}",
        local.endpoint,
        status.member_id,
        status.version,
        if status.leader == status.member_id {
            "leader"
        } else {
            "follower"
        },
        status.revision,
        cluster
            .and_then(|c| c.cluster_id.clone())
            .unwrap_or_else(|| "?".into()),
        cluster.map_or(0, |c| c.members),
        if facts.health.warnings.is_empty() {
            String::new()
        } else {
            format!("; {}", facts.health.warnings.join("; "))
        }
    );
    if !local.healthy {
        return Verdict::fail(
            format!(
                "{evidence}: the local member is unhealthy: {}",
                local.error.as_deref().unwrap_or("unknown")
            ),
            logs_hint(),
        );
    }
    if !problems.is_empty() {
        return Verdict::fail(
            format!("{evidence}: {}", problems.join("; ")),
            ctx.etcdops("health --cluster"),
        );
    }
    Verdict::ok(evidence)
}
