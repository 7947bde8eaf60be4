//! The lab: real etcd on loopback with kubeadm-format certificates, for tests, the demo
//! and operators who want to try etcdops before touching a real node.

pub mod pki;
