//! etcd release numbers as etcd and kubeadm write them: `3.6.17` (Status `version`),
//! `3.6.0` (Status `storageVersion`), `registry.k8s.io/etcd:3.6.5-0` (the manifest's image
//! tag: kubeadm's `-0` suffix is the image revision, not part of etcd's version). The
//! version-dependent facts that etcdops judges by live here, each with its source.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// `/livez` and `/readyz` exist (CHANGELOG-3.5 v3.5.11, etcd-io/etcd#17039).
pub const LIVEZ: Version = Version::new(3, 5, 11);
/// `/readyz` fails for a learner (`non_learner` check; CHANGELOG-3.5 v3.5.19,
/// etcd-io/etcd#19280).
pub const READYZ_LEARNER: Version = Version::new(3, 5, 19);
/// The oldest 3.5 that may be upgraded to 3.6: 3.5.26 fixed the zombie members in the v3
/// store (CHANGELOG-3.5 v3.5.26, etcd-io/etcd#20995) that 3.6, which bootstraps membership
/// from the v3 store, would otherwise bring back.
pub const UPGRADE_TO_36_FLOOR: Version = Version::new(3, 5, 26);

impl Version {
    pub const fn new(major: u32, minor: u32, patch: u32) -> Self {
        Version {
            major,
            minor,
            patch,
        }
    }

    /// `3.6.17`, `v3.6.0`, `3.6.5-0`, `3.6.0-rc.1`, `3.6` (patch 0). Anything after the
    /// numbers (`-0`, `-rc.1`, `+meta`) is ignored.
    pub fn parse(s: &str) -> Option<Version> {
        let s = s.trim().trim_start_matches('v');
        let core = s.split(['-', '+']).next()?;
        let mut parts = core.split('.');
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next()?.parse().ok()?;
        let patch = match parts.next() {
            Some(p) => p.parse().ok()?,
            None => 0,
        };
        if parts.next().is_some() {
            return None;
        }
        Some(Version::new(major, minor, patch))
    }

    /// The etcd version of an image reference, from its tag:
    /// `registry.k8s.io/etcd:3.6.5-0` -> 3.6.5. `None` without a tag (or with a digest only,
    /// or a tag that is not a version).
    pub fn of_image(image: &str) -> Option<Version> {
        let name = image.split('@').next()?;
        // The tag follows the last ':' after the last '/' (a registry port has a '/' after it).
        let last = name.rsplit('/').next()?;
        let (_, tag) = last.rsplit_once(':')?;
        Version::parse(tag)
    }

    /// Major and minor only: storage versions are `X.Y.0`.
    pub fn minor_line(self) -> Version {
        Version::new(self.major, self.minor, 0)
    }
}

/// Why an image must not start on a data dir, or `None` when it may: etcd >= 3.6 refuses a
/// data dir that a newer minor wrote (CHANGELOG-3.6 "Breaking Changes": "etcd will no
/// longer start on data dir created by newer versions"), and 3.5 does not start on one
/// that 3.6 wrote. `storage` is Status `storageVersion` (`3.6.0`); empty (a 3.5 member)
/// means 3.5 wrote it, which every 3.5+ image reads. The one policy for doctor and the
/// preflights of migrate, restore and rejoin.
pub fn image_too_old(image: &str, storage: &str) -> Option<String> {
    let img = Version::of_image(image)?;
    let data = Version::parse(storage)?;
    (img.minor_line() < data.minor_line()).then(|| {
        format!(
            "the manifest's image {image} is etcd {img}, older than the data dir's storage version {data}: etcd {}.{} does not start on data that etcd {}.{} wrote; set the image to etcd >= {}.{} (or downgrade the data first: `etcdctl downgrade enable {}.{}` online, or `etcdutl migrate --target-version {}.{}` offline)",
            img.major, img.minor, data.major, data.minor, data.major, data.minor,
            img.major, img.minor, img.major, img.minor
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_etcd_and_kubeadm_spellings() {
        assert_eq!(Version::parse("3.6.17"), Some(Version::new(3, 6, 17)));
        assert_eq!(Version::parse("v3.5.0"), Some(Version::new(3, 5, 0)));
        assert_eq!(Version::parse("3.6.0-rc.1"), Some(Version::new(3, 6, 0)));
        assert_eq!(Version::parse("3.6"), Some(Version::new(3, 6, 0)));
        assert_eq!(Version::parse(""), None);
        assert_eq!(Version::parse("latest"), None);
        assert_eq!(
            Version::of_image("registry.k8s.io/etcd:3.6.5-0"),
            Some(Version::new(3, 6, 5))
        );
        assert_eq!(
            Version::of_image("localhost:5000/etcd:3.5.26-0"),
            Some(Version::new(3, 5, 26))
        );
        assert_eq!(Version::of_image("localhost:5000/etcd"), None);
        assert_eq!(Version::of_image("registry.k8s.io/etcd@sha256:abc"), None);
        assert_eq!(Version::of_image("registry.k8s.io/etcd:latest"), None);
        assert!(Version::new(3, 5, 26) < Version::new(3, 6, 0));
        assert_eq!(Version::new(3, 6, 17).minor_line(), Version::new(3, 6, 0));
    }

    #[test]
    fn an_older_minor_image_may_not_start_on_newer_data() {
        let r = image_too_old("registry.k8s.io/etcd:3.5.26-0", "3.6.0").unwrap();
        assert!(
            r.contains("etcd 3.5.26, older than the data dir's storage version 3.6.0"),
            "{r}"
        );
        assert!(r.contains("etcdutl migrate --target-version 3.5"), "{r}");
        assert_eq!(image_too_old("registry.k8s.io/etcd:3.6.0-0", "3.6.0"), None);
        assert_eq!(image_too_old("registry.k8s.io/etcd:3.7.4-0", "3.6.0"), None);
        // A 3.5 member reports no storage version; an untagged image cannot be judged.
        assert_eq!(image_too_old("registry.k8s.io/etcd:3.5.26-0", ""), None);
        assert_eq!(image_too_old("etcd", "3.6.0"), None);
    }
}
