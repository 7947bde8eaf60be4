//! The etcd static pod manifest the lab writes for each node: kubeadm's format (v1.30
//! style), with the lab's addresses and host paths. Only the hostPaths differ from what
//! kubeadm writes, so etcdops reads it exactly as it reads a real node's manifest.

use super::Lab;

pub fn etcd_manifest(lab: &Lab, node: usize) -> String {
    let name = lab.node_name(node);
    let ip = lab.ip(node);
    let initial: Vec<String> = (1..=lab.config.nodes)
        .map(|n| format!("{}={}", lab.node_name(n), lab.peer_url(n)))
        .collect();
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  annotations:
    kubeadm.kubernetes.io/etcd.advertise-client-urls: https://{ip}:2379
  creationTimestamp: null
  labels:
    component: etcd
    tier: control-plane
  name: etcd
  namespace: kube-system
spec:
  containers:
  - command:
    - etcd
    - --advertise-client-urls=https://{ip}:2379
    - --cert-file=/etc/kubernetes/pki/etcd/server.crt
    - --client-cert-auth=true
    - --data-dir=/var/lib/etcd
    - --initial-advertise-peer-urls=https://{ip}:2380
    - --initial-cluster={initial}
    - --initial-cluster-state=new
    - --key-file=/etc/kubernetes/pki/etcd/server.key
    - --listen-client-urls=https://{ip}:2379
    - --listen-metrics-urls=http://{ip}:2381
    - --listen-peer-urls=https://{ip}:2380
    - --name={name}
    - --peer-cert-file=/etc/kubernetes/pki/etcd/peer.crt
    - --peer-client-cert-auth=true
    - --peer-key-file=/etc/kubernetes/pki/etcd/peer.key
    - --peer-trusted-ca-file=/etc/kubernetes/pki/etcd/ca.crt
    - --snapshot-count=10000
    - --trusted-ca-file=/etc/kubernetes/pki/etcd/ca.crt
    image: {image}
    imagePullPolicy: IfNotPresent
    livenessProbe:
      failureThreshold: 8
      httpGet:
        host: {ip}
        path: /health?exclude=NOSPACE&serializable=true
        port: 2381
        scheme: HTTP
      initialDelaySeconds: 10
      periodSeconds: 10
      timeoutSeconds: 15
    name: etcd
    resources:
      requests:
        cpu: 100m
        memory: 100Mi
    volumeMounts:
    - mountPath: /var/lib/etcd
      name: etcd-data
    - mountPath: /etc/kubernetes/pki/etcd
      name: etcd-certs
  hostNetwork: true
  priority: 2000001000
  priorityClassName: system-node-critical
  securityContext:
    seccompProfile:
      type: RuntimeDefault
  volumes:
  - hostPath:
      path: {pki}
      type: DirectoryOrCreate
    name: etcd-certs
  - hostPath:
      path: {data}
      type: DirectoryOrCreate
    name: etcd-data
status: {{}}
"#,
        initial = initial.join(","),
        // The stand-in runs lab.config.etcd whatever the tag; the real kubelet runs the
        // image imported into containerd under the tag kubeadm writes.
        image = lab
            .config
            .real
            .as_ref()
            .map_or("registry.k8s.io/etcd:3.5.15-0", |s| s.etcd_image.as_str()),
        pki = lab.pki_dir(node).display(),
        data = lab.data_dir(node).display(),
    )
}
