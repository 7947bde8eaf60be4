//! etcdops: move a kubeadm etcd member's data dir to a new disk safely, and keep etcd
//! healthy (defrag, compaction, alarms, snapshots, health checks).
//!
//! The binary (`src/main.rs`) only parses, runs and maps errors to exit codes; `commands/`
//! translates arguments into options for the library modules below.

pub mod backup;
pub mod cli;
pub mod commands;
pub mod datadir;
pub mod doctor;
pub mod error;
pub mod etcd;
pub mod lab;
pub mod manifest;
pub mod migrate;
pub mod mounts;
pub mod node;
pub mod output;
pub mod prometheus;
pub mod rejoin;
pub mod restore;
pub mod run;
pub mod runs;
