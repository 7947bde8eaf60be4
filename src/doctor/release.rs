//! What the manifest's image (its tag: `registry.k8s.io/etcd:3.6.5-0`) will and will not
//! run: flags that release refuses, data a newer release wrote, and members too old for a
//! planned 3.6 upgrade. Facts read from etcd's source and CHANGELOGs and checked against the
//! built 3.5.36, 3.6.17 and 3.7.4 binaries (`etcd --help`, and each flag given to each).

use super::{Ctx, Verdict};
use crate::etcd::version::{self, Version};
use crate::manifest::StaticPod;

/// etcd 3.6's `--experimental-*` flags and what replaces each (3.6 warns and accepts them;
/// 3.7 refuses every `--experimental-*` flag: CHANGELOG-3.7 v3.7.0-rc.0 "Removed all
/// deprecated experimental flags", etcd-io/etcd#19959). Source: server/etcdmain/config.go
/// `deprecatedFlags`, server/embed/config.go `experimentalFlagMigrationMap` and
/// server/features/etcd_features.go `ExperimentalFlagToFeatureMap` at v3.6.17.
const EXPERIMENTAL: &[(&str, &str)] = &[
    (
        "experimental-initial-corrupt-check",
        "--feature-gates=InitialCorruptCheck=true",
    ),
    (
        "experimental-compact-hash-check-enabled",
        "--feature-gates=CompactHashCheck=true",
    ),
    (
        "experimental-stop-grpc-service-on-defrag",
        "--feature-gates=StopGRPCServiceOnDefrag=true",
    ),
    (
        "experimental-txn-mode-write-with-shared-buffer",
        "--feature-gates=TxnModeWriteWithSharedBuffer=true",
    ),
    (
        "experimental-enable-lease-checkpoint",
        "--feature-gates=LeaseCheckpoint=true",
    ),
    (
        "experimental-enable-lease-checkpoint-persist",
        "--feature-gates=LeaseCheckpointPersist=true",
    ),
    (
        "experimental-compact-hash-check-time",
        "--compact-hash-check-time",
    ),
    ("experimental-corrupt-check-time", "--corrupt-check-time"),
    (
        "experimental-compaction-batch-limit",
        "--compaction-batch-limit",
    ),
    (
        "experimental-watch-progress-notify-interval",
        "--watch-progress-notify-interval",
    ),
    (
        "experimental-warning-apply-duration",
        "--warning-apply-duration",
    ),
    (
        "experimental-warning-unary-request-duration",
        "--warning-unary-request-duration",
    ),
    (
        "experimental-bootstrap-defrag-threshold-megabytes",
        "--bootstrap-defrag-threshold-megabytes",
    ),
    ("experimental-memory-mlock", "--memory-mlock"),
    (
        "experimental-snapshot-catchup-entries",
        "--snapshot-catchup-entries",
    ),
    (
        "experimental-compaction-sleep-interval",
        "--compaction-sleep-interval",
    ),
    (
        "experimental-downgrade-check-time",
        "--downgrade-check-time",
    ),
    (
        "experimental-peer-skip-client-san-verification",
        "--peer-skip-client-san-verification",
    ),
    (
        "experimental-enable-distributed-tracing",
        "--enable-distributed-tracing",
    ),
    (
        "experimental-distributed-tracing-address",
        "--distributed-tracing-address",
    ),
    (
        "experimental-distributed-tracing-service-name",
        "--distributed-tracing-service-name",
    ),
    (
        "experimental-distributed-tracing-instance-id",
        "--distributed-tracing-instance-id",
    ),
    (
        "experimental-distributed-tracing-sampling-rate",
        "--distributed-tracing-sampling-rate",
    ),
];

/// Flags etcd 3.6 removed (CHANGELOG-3.6 v3.6.0-rc.0 "Flags Removed"); 3.6.17 answers each
/// with "flag provided but not defined" and exits.
const REMOVED_IN_36: &[&str] = &[
    "enable-v2",
    "experimental-enable-v2v3",
    "proxy",
    "proxy-failure-wait",
    "proxy-refresh-interval",
    "proxy-dial-timeout",
    "proxy-write-timeout",
    "proxy-read-timeout",
];

/// The etcd release the manifest's image tag names, or why a check cannot judge.
fn image(ctx: &Ctx) -> Result<(String, Version), String> {
    let (pod, _) = ctx.pod()?;
    let c = pod.etcd_container().map_err(|e| e.one_line())?;
    let image = c
        .image
        .clone()
        .ok_or_else(|| "the etcd container names no image".to_string())?;
    let v = Version::of_image(&image)
        .ok_or_else(|| format!("image {image} has no version tag (X.Y.Z[-N])"))?;
    Ok((image, v))
}

/// The flag names (without `--`) the etcd container passes.
fn flag_names(pod: &StaticPod) -> Vec<String> {
    let Ok(c) = pod.etcd_container() else {
        return Vec::new();
    };
    c.command
        .iter()
        .chain(c.args.iter())
        .filter_map(|a| a.strip_prefix("--"))
        .map(|a| a.split('=').next().unwrap_or(a).to_string())
        .collect()
}

/// What `release` refuses (fail) or only warns about (warn), flag by flag, with the fix.
pub fn judge_flags(flags: &[String], release: Version) -> (Vec<String>, Vec<String>) {
    let mut refused = Vec::new();
    let mut deprecated = Vec::new();
    let replacement = |f: &str| {
        EXPERIMENTAL
            .iter()
            .find(|(old, _)| *old == f)
            .map(|(_, new)| *new)
    };
    for f in flags {
        if release < Version::new(3, 6, 0) {
            if f == "feature-gates" {
                refused.push(format!(
                    "--feature-gates (etcd {release} has none: it came with 3.6; use the --experimental-* flag of 3.5)"
                ));
            }
            continue;
        }
        if REMOVED_IN_36.contains(&f.as_str()) {
            refused.push(format!("--{f} (removed in 3.6: drop it)"));
        } else if f.starts_with("experimental-") {
            let with = replacement(f).map_or_else(|| "drop it".to_string(), |n| format!("use {n}"));
            if release >= Version::new(3, 7, 0) {
                refused.push(format!(
                    "--{f} (3.7 removed every --experimental-* flag: {with})"
                ));
            } else {
                deprecated.push(format!("--{f} (deprecated in 3.6, refused by 3.7: {with})"));
            }
        }
    }
    (refused, deprecated)
}

pub fn refused_flags(ctx: &Ctx) -> Verdict {
    let (image, release) = match image(ctx) {
        Ok(x) => x,
        Err(e) => return Verdict::skipped(e),
    };
    let Ok((pod, _)) = ctx.pod() else {
        return Verdict::skipped("the manifest did not parse");
    };
    let (refused, deprecated) = judge_flags(&flag_names(pod), release);
    let fix = format!(
        "edit {}: change the flags named above",
        ctx.opts.manifest.display()
    );
    if !refused.is_empty() {
        return Verdict::fail(
            format!(
                "image {image} (etcd {release}) refuses to start with: {}",
                refused.join("; ")
            ),
            fix,
        );
    }
    if !deprecated.is_empty() {
        return Verdict::warn(
            format!("image {image} (etcd {release}): {}", deprecated.join("; ")),
            fix,
        );
    }
    Verdict::ok(format!(
        "image {image} (etcd {release}) accepts every flag of the manifest"
    ))
}

/// The image against the data's storage version (Status `storageVersion`, etcd >= 3.6).
pub fn storage(ctx: &Ctx) -> Verdict {
    let (image, release) = match image(ctx) {
        Ok(x) => x,
        Err(e) => return Verdict::skipped(e),
    };
    let Some(s) = ctx.local_status() else {
        return Verdict::skipped(match ctx.etcd() {
            Ok(f) => format!(
                "the local member did not answer Status ({})",
                f.local.error.as_deref().unwrap_or("no answer")
            ),
            Err(e) => e,
        });
    };
    if s.storage_version.is_empty() {
        return Verdict::ok(format!(
            "image {image} (etcd {release}); the member runs etcd {} and reports no storage version (3.5 data, which 3.5 and later read)",
            s.version
        ));
    }
    match version::image_too_old(&image, &s.storage_version) {
        Some(reason) => Verdict::fail(
            reason,
            format!(
                "edit {}: set the image to etcd >= {} before etcd restarts",
                ctx.opts.manifest.display(),
                s.storage_version
            ),
        ),
        None => Verdict::ok(format!(
            "image {image} (etcd {release}) reads the data's storage version {}",
            s.storage_version
        )),
    }
}

/// With a 3.6 image planned, every 3.5 member must run >= 3.5.26 (zombie members).
pub fn members(ctx: &Ctx) -> Verdict {
    let (image, release) = match image(ctx) {
        Ok(x) => x,
        Err(e) => return Verdict::skipped(e),
    };
    let facts = match ctx.etcd() {
        Ok(f) => f,
        Err(e) => return Verdict::skipped(e),
    };
    let mut seen = Vec::new();
    let mut old = Vec::new();
    for e in &facts.health.endpoints {
        let Some(v) = e.version.as_deref() else {
            continue;
        };
        let who = e
            .name
            .clone()
            .or_else(|| e.member_id.clone())
            .unwrap_or_else(|| e.endpoint.clone());
        seen.push(format!("{who}={v}"));
        if release >= Version::new(3, 6, 0)
            && Version::parse(v).is_some_and(|v| v < version::UPGRADE_TO_36_FLOOR)
        {
            old.push(format!("{who} runs {v}"));
        }
    }
    if seen.is_empty() {
        return Verdict::skipped("no member answered Status");
    }
    let evidence = format!(
        "image {image} (etcd {release}); members: {}",
        seen.join(", ")
    );
    if !old.is_empty() {
        return Verdict::fail(
            format!(
                "{evidence}: {} below 3.5.26, the floor before a 3.6 upgrade (3.5.26 fixed zombie members in the v3 store, etcd-io/etcd#20995; 3.6 bootstraps membership from it)",
                old.join(", ")
            ),
            "upgrade every 3.5 member to >= 3.5.26 first, one at a time, then to 3.6",
        );
    }
    Verdict::ok(evidence)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn each_release_refuses_its_own_flags() {
        let flags = names(&[
            "feature-gates",
            "experimental-initial-corrupt-check",
            "enable-v2",
            "data-dir",
        ]);
        let (r, d) = judge_flags(&flags, Version::new(3, 5, 26));
        assert_eq!(r.len(), 1, "{r:?}");
        assert!(r[0].starts_with("--feature-gates"));
        assert!(d.is_empty());
        let (r, d) = judge_flags(&flags, Version::new(3, 6, 5));
        assert_eq!(r, vec!["--enable-v2 (removed in 3.6: drop it)".to_string()]);
        assert_eq!(d.len(), 1);
        assert!(
            d[0].contains("use --feature-gates=InitialCorruptCheck=true"),
            "{d:?}"
        );
        let (r, _) = judge_flags(&flags, Version::new(3, 7, 4));
        assert_eq!(r.len(), 2, "{r:?}");
        assert!(r[0].contains("3.7 removed every --experimental-* flag"));
    }
}
