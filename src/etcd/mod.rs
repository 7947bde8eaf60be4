//! Everything that talks to etcd: connection discovery and TLS (`connect`), a per-endpoint
//! client with our own types (`client`), the health model (`health`), and maintenance:
//! the `rule` language, `compact`, rolling `defrag`, `maintain`, `alarm`s and `snapshot`s,
//! and the cluster-wide `guard` that keeps node-changing runs to one member at a time.
//! No etcd-client type leaves this module.

pub mod alarm;
pub mod client;
pub mod compact;
pub mod connect;
pub mod defrag;
pub mod guard;
pub mod hashkv;
pub mod health;
pub mod maintain;
pub mod member;
pub mod peer;
pub mod peer_fence;
pub mod probe;
pub mod rule;
pub mod snapshot;
pub mod version;

use std::path::Path;

use crate::error::{Error, Result};
use crate::manifest::StaticPod;

/// The quota to judge db sizes against: the flag, else the manifest's
/// `--quota-backend-bytes`, else etcd's default (status in 3.4/3.5 does not report it).
pub fn quota_backend_bytes(flag: Option<u64>, manifest: &Path) -> Result<u64> {
    if let Some(q) = flag {
        if q == 0 {
            return Err(Error::Usage(
                "--quota-backend-bytes must be greater than zero".into(),
            ));
        }
        return Ok(q);
    }
    // An unreadable manifest is not this function's business: discovery reports it.
    if manifest.is_file()
        && let Ok(pod) = StaticPod::load(manifest)
        && let Some(v) = pod.etcd_flag("quota-backend-bytes")?
    {
        let q: u64 = v.trim().parse().map_err(|_| {
            Error::input(
                manifest,
                format!("--quota-backend-bytes={v} is not a number of bytes"),
            )
        })?;
        if q > 0 {
            return Ok(q);
        }
    }
    Ok(health::DEFAULT_QUOTA)
}
