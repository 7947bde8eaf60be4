//! `etcdops health -o prometheus` against real etcd, and the shipped alert rules.
//!
//! Every output is checked by `promtool check metrics` (Debian's `prometheus` package,
//! installed by scripts/install-deps.sh): syntax, escapes, values, HELP text and its lint.
//! The hand-written validator here parses the samples for the value checks, and checks
//! only what promtool 2.42 accepts but we still want (each proved in
//! `validator_rejects_malformed_text`): a TYPE for every family, no sample timestamps (the
//! node_exporter textfile collector rejects them), no reserved `__` labels, no repeated
//! series (node_exporter's registry rejects duplicates), contiguous families. Then the
//! values are checked against what the cluster is known to be: healthy, one member
//! killed, NOSPACE, nothing reachable; and on a lab, healthy then a node's etcd stopped.
//! The alert rules pass `promtool check rules`, and `promtool test rules` runs
//! contrib/prometheus/etcdops-alerts.test.yml (every alert fires when it should, and not
//! when it should not).

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

use common::lab::Lab;
use common::{Cluster, Spec, Version, args, etcdops};

/// One sample line, parsed.
#[derive(Debug, Clone, PartialEq)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

impl Sample {
    fn label(&self, k: &str) -> &str {
        self.labels.get(k).map_or("", String::as_str)
    }
}

fn valid_metric_name(s: &str) -> bool {
    let mut c = s.chars();
    c.next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && c.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn valid_label_name(s: &str) -> bool {
    let mut c = s.chars();
    !s.starts_with("__")
        && c.next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && c.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn parse_value(s: &str) -> Result<f64, String> {
    match s {
        "NaN" => Ok(f64::NAN),
        "+Inf" | "Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        _ => {
            let ok = !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '+' | '-'));
            if !ok {
                return Err(format!("bad value {s:?}"));
            }
            s.parse::<f64>()
                .map_err(|e| format!("bad value {s:?}: {e}"))
        }
    }
}

/// `{a="x",b="y"}` (without braces) -> labels; escapes `\\`, `\"`, `\n` only.
fn parse_labels(s: &str) -> Result<BTreeMap<String, String>, String> {
    let mut labels = BTreeMap::new();
    let mut rest = s;
    while !rest.is_empty() {
        let eq = rest
            .find('=')
            .ok_or_else(|| format!("label without '=' in {s:?}"))?;
        let name = &rest[..eq];
        if !valid_label_name(name) {
            return Err(format!("bad label name {name:?}"));
        }
        let after = &rest[eq + 1..];
        let mut chars = after.char_indices();
        if chars.next().map(|(_, c)| c) != Some('"') {
            return Err(format!("label {name} value not quoted in {s:?}"));
        }
        let mut value = String::new();
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => match chars.next().map(|(_, c)| c) {
                    Some('\\') => value.push('\\'),
                    Some('"') => value.push('"'),
                    Some('n') => value.push('\n'),
                    other => return Err(format!("bad escape \\{other:?} in label {name}")),
                },
                '"' => {
                    end = Some(i);
                    break;
                }
                '\n' => return Err(format!("raw newline in label {name}")),
                c => value.push(c),
            }
        }
        let end = end.ok_or_else(|| format!("unterminated value of label {name}"))?;
        if labels.insert(name.to_string(), value).is_some() {
            return Err(format!("label {name} repeated"));
        }
        rest = &after[end + 1..];
        if let Some(r) = rest.strip_prefix(',') {
            rest = r;
        } else if !rest.is_empty() {
            return Err(format!("junk after label {name}: {rest:?}"));
        }
    }
    Ok(labels)
}

fn parse_sample(line: &str) -> Result<Sample, String> {
    let (name, labels, rest) = match line.find(['{', ' ']) {
        Some(i) if line.as_bytes()[i] == b'{' => {
            let close = line
                .rfind('}')
                .ok_or_else(|| format!("unclosed labels: {line:?}"))?;
            (
                &line[..i],
                parse_labels(&line[i + 1..close])?,
                &line[close + 1..],
            )
        }
        Some(i) => (&line[..i], BTreeMap::new(), &line[i..]),
        None => return Err(format!("sample without value: {line:?}")),
    };
    if !valid_metric_name(name) {
        return Err(format!("bad metric name {name:?}"));
    }
    let rest = rest
        .strip_prefix(' ')
        .ok_or_else(|| format!("no space before the value: {line:?}"))?;
    let fields: Vec<&str> = rest.split(' ').collect();
    if fields.iter().any(|f| f.is_empty()) {
        return Err(format!("malformed sample: {line:?}"));
    }
    match fields.as_slice() {
        [v] => Ok(Sample {
            name: name.to_string(),
            labels,
            value: parse_value(v)?,
        }),
        [_, _] => Err(format!(
            "sample with a timestamp (textfile collector rejects it): {line:?}"
        )),
        _ => Err(format!("malformed sample: {line:?}")),
    }
}

/// Check the text as the exposition format and node_exporter's textfile collector want it.
/// Returns the samples and each family's type.
fn validate(text: &str) -> Result<(Vec<Sample>, HashMap<String, String>), String> {
    if !text.is_empty() && !text.ends_with('\n') {
        return Err("last line has no newline".into());
    }
    let mut help: HashSet<String> = HashSet::new();
    let mut types: HashMap<String, String> = HashMap::new();
    let mut finished: HashSet<String> = HashSet::new();
    let mut current: Option<String> = None;
    let mut series: HashSet<String> = HashSet::new();
    let mut samples = Vec::new();
    let mut switch_to = |family: &str, current: &mut Option<String>| -> Result<(), String> {
        if current.as_deref() != Some(family) {
            if finished.contains(family) {
                return Err(format!("family {family} is not contiguous"));
            }
            if let Some(prev) = current.take() {
                finished.insert(prev);
            }
            *current = Some(family.to_string());
        }
        Ok(())
    };
    for (n, line) in text.lines().enumerate() {
        let at = |e: String| format!("line {}: {e}", n + 1);
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, _doc) = rest.split_once(' ').unwrap_or((rest, ""));
            if !valid_metric_name(name) {
                return Err(at(format!("bad name in HELP: {name:?}")));
            }
            switch_to(name, &mut current).map_err(at)?;
            if !help.insert(name.to_string()) {
                return Err(at(format!("second HELP for {name}")));
            }
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest
                .split_once(' ')
                .ok_or_else(|| at(format!("TYPE without a type: {line:?}")))?;
            if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind) {
                return Err(at(format!("unknown type {kind:?}")));
            }
            switch_to(name, &mut current).map_err(at)?;
            if samples.iter().any(|s: &Sample| s.name == name) {
                return Err(at(format!("TYPE for {name} after its samples")));
            }
            if types.insert(name.to_string(), kind.to_string()).is_some() {
                return Err(at(format!("second TYPE for {name}")));
            }
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let s = parse_sample(line).map_err(at)?;
        // Histogram and summary samples carry suffixes; gauges are their family's name.
        let family = match types.get(&s.name).map(String::as_str) {
            Some(_) => s.name.clone(),
            None => ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suf| s.name.strip_suffix(suf))
                .filter(|f| {
                    matches!(
                        types.get(*f).map(String::as_str),
                        Some("histogram" | "summary")
                    )
                })
                .map(str::to_string)
                .ok_or_else(|| at(format!("sample of {} before its TYPE", s.name)))?,
        };
        if !help.contains(&family) {
            return Err(at(format!("sample of {family} without HELP")));
        }
        switch_to(&family, &mut current).map_err(at)?;
        if !series.insert(format!("{}{:?}", s.name, s.labels)) {
            return Err(at(format!("series repeated: {line:?}")));
        }
        samples.push(s);
    }
    for name in &help {
        if !types.contains_key(name) {
            return Err(format!("family {name} has HELP but no TYPE"));
        }
    }
    Ok((samples, types))
}

/// `promtool check metrics` on the text: Ok when it exits 0 and reports nothing (a lint
/// problem, such as a family without HELP, exits 3).
fn promtool_check_metrics(text: &str) -> Result<(), String> {
    use std::io::Write;
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool (scripts/install-deps.sh installs it)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .expect("feed promtool");
    let out = child.wait_with_output().expect("wait for promtool");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() && said.trim().is_empty() {
        Ok(())
    } else {
        Err(format!("promtool check metrics: {:?}: {said}", out.status))
    }
}

/// What every test needs: the samples, checked by promtool and the validator, with the run
/// dumped on failure.
fn samples(run: &common::Run) -> Vec<Sample> {
    promtool_check_metrics(&run.stdout).unwrap_or_else(|e| panic!("{e}\n{}", run.dump()));
    let (samples, types) = validate(&run.stdout).unwrap_or_else(|e| panic!("{e}\n{}", run.dump()));
    assert!(!samples.is_empty(), "no samples\n{}", run.dump());
    assert!(
        types.values().all(|t| t == "gauge"),
        "health exports gauges only: {types:?}"
    );
    samples
}

fn find<'a>(samples: &'a [Sample], name: &str) -> Vec<&'a Sample> {
    samples.iter().filter(|s| s.name == name).collect()
}

fn one(samples: &[Sample], name: &str) -> f64 {
    let found = find(samples, name);
    assert_eq!(found.len(), 1, "{name}: {found:?}");
    found[0].value
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

#[test]
fn validator_rejects_malformed_text() {
    let good = "# HELP x_level Doc with \\\\ and \\n.\n# TYPE x_level gauge\n\
                x_level{x=\"q\\\"uo\\\\te\\n\",y=\"\"} 1\nx_level{x=\"2\"} -0.5e-3\n\
                # HELP c A histogram.\n# TYPE c histogram\nc_bucket{le=\"+Inf\"} 3\nc_sum 2\nc_count 3\n\
                # HELP d NaN ok.\n# TYPE d gauge\nd NaN\n";
    let (samples, _) = validate(good).expect("the good text validates");
    assert_eq!(samples.len(), 6);
    assert_eq!(samples[0].label("x"), "q\"uo\\te\n");
    assert_eq!(samples[1].value, -0.0005);

    // What promtool rejects too; the validator rejects it as it parses.
    for (bad, why) in [
        ("a 1\n", "no HELP/TYPE"),
        ("# TYPE a gauge\na 1\n", "no HELP"),
        ("# HELP a x\n# TYPE a gauge\na{x=\"1} 1\n", "unterminated"),
        ("# HELP a x\n# TYPE a gauge\na{x=\"\\t\"} 1\n", "bad escape"),
        ("# HELP a x\n# TYPE a gauge\na{x=1} 1\n", "unquoted"),
        (
            "# HELP a x\n# TYPE a gauge\na{x=\"1\",x=\"2\"} 1\n",
            "repeated label",
        ),
        ("# HELP a x\n# TYPE a gauge\na one\n", "bad value"),
        ("# HELP a x\n# TYPE a gauge\na\n", "no value"),
        ("# HELP a x\n# TYPE a gauge\n1a 1\n", "bad name"),
        ("# HELP a x\n# TYPE a gauge\na 1", "no final newline"),
        ("# HELP a x\n# TYPE a wobbly\na 1\n", "unknown type"),
        (
            "# HELP a x\n# TYPE a gauge\na 1\n# TYPE a gauge\n",
            "second TYPE",
        ),
        (
            "# HELP a x\n# HELP a y\n# TYPE a gauge\na 1\n",
            "second HELP",
        ),
    ] {
        assert!(validate(bad).is_err(), "accepted ({why}): {bad:?}");
        assert!(
            promtool_check_metrics(bad).is_err(),
            "promtool accepted ({why}): {bad:?}"
        );
    }
    assert_eq!(promtool_check_metrics(good), Ok(()));

    // Why the validator is kept: promtool 2.42 accepts each of these.
    for (bad, why) in [
        ("# HELP a x\na 1\n", "no TYPE"),
        (
            "# HELP a x\n# TYPE a gauge\na 1 1700000000000\n",
            "timestamp",
        ),
        (
            "# HELP a x\n# TYPE a gauge\na{__x=\"1\"} 1\n",
            "reserved label",
        ),
        ("# HELP a x\n# TYPE a gauge\na 1\na 2\n", "repeated series"),
        (
            "# HELP a x\n# TYPE a gauge\na{k=\"1\"} 1\n# HELP b x\n# TYPE b gauge\nb 1\na{k=\"2\"} 1\n",
            "not contiguous",
        ),
    ] {
        assert!(validate(bad).is_err(), "accepted ({why}): {bad:?}");
        assert_eq!(
            promtool_check_metrics(bad),
            Ok(()),
            "promtool now rejects ({why}): drop that check from the validator"
        );
    }
}

#[test]
fn healthy_cluster_then_a_killed_member() {
    let mut cluster = Cluster::start(Spec::new(Version::V36, 3).tls());
    cluster.put_many("k", 20, 100);
    let mut a = cluster.client_args();
    a.extend(args(["health", "--cluster", "-o", "prometheus"]));
    let before = now();
    let run = etcdops(&a, &[], Some(&cluster));
    run.code(0);
    assert!(run.stderr.is_empty(), "{}", run.dump());
    let s = samples(&run);

    let when = one(&s, "etcdops_health_last_check_timestamp_seconds");
    assert!(when >= before.floor() && when <= now() + 1.0, "{when}");
    assert_eq!(one(&s, "etcdops_health_healthy"), 1.0);
    assert_eq!(one(&s, "etcdops_quota_backend_bytes"), 2147483648.0);
    assert_eq!(one(&s, "etcdops_cluster_members"), 3.0);
    assert_eq!(one(&s, "etcdops_cluster_leaders_agree"), 1.0);
    assert_eq!(one(&s, "etcdops_cluster_hashes_agree"), 1.0);

    let healthy = find(&s, "etcdops_endpoint_healthy");
    assert_eq!(healthy.len(), 3, "{}", run.dump());
    let mut eps: Vec<&str> = healthy.iter().map(|h| h.label("endpoint")).collect();
    eps.sort_unstable();
    let mut expected = cluster.endpoints();
    expected.sort();
    assert_eq!(eps, expected);
    for h in &healthy {
        assert_eq!(h.value, 1.0, "{h:?}");
        let id = h.label("member_id");
        assert!(
            !id.is_empty() && !id.starts_with('0') && u64::from_str_radix(id, 16).is_ok(),
            "{h:?}"
        );
        assert!(h.label("name").starts_with('m'), "{h:?}");
        assert_eq!(h.labels.len(), 3, "{h:?}");
    }
    let leaders: f64 = find(&s, "etcdops_endpoint_is_leader")
        .iter()
        .map(|x| x.value)
        .sum();
    assert_eq!(leaders, 1.0, "{}", run.dump());
    let sizes = find(&s, "etcdops_endpoint_db_size_bytes");
    let in_use = find(&s, "etcdops_endpoint_db_size_in_use_bytes");
    let ratios = find(&s, "etcdops_endpoint_quota_usage_ratio");
    assert_eq!((sizes.len(), in_use.len(), ratios.len()), (3, 3, 3));
    for size in sizes {
        assert!(size.value > 0.0, "{size:?}");
        let used = in_use.iter().find(|u| u.labels == size.labels).unwrap();
        assert!(used.value > 0.0 && used.value <= size.value, "{used:?}");
        let ratio = ratios.iter().find(|r| r.labels == size.labels).unwrap();
        let expected = size.value / 2147483648.0;
        assert!((ratio.value - expected).abs() < 0.0001, "{ratio:?}");
    }
    let alarms = find(&s, "etcdops_alarm_active");
    for name in ["NOSPACE", "CORRUPT"] {
        let a = alarms.iter().find(|a| a.label("alarm") == name);
        assert_eq!(a.map(|a| a.value), Some(0.0), "{}", run.dump());
    }

    // One follower down: exit 4 as with -o table, and the metrics still say which. (A
    // follower, so that no election makes the survivors briefly fail their reads too.)
    let leader = find(&s, "etcdops_endpoint_is_leader")
        .into_iter()
        .find(|x| x.value == 1.0)
        .map(|x| x.label("endpoint").to_string())
        .unwrap();
    let victim = cluster
        .members
        .iter()
        .position(|m| m.client_url != leader)
        .unwrap();
    let dead = cluster.members[victim].client_url.clone();
    cluster.kill(victim);
    let run = etcdops(&a, &[], Some(&cluster));
    run.code(4);
    let s = samples(&run);
    assert_eq!(one(&s, "etcdops_health_healthy"), 0.0);
    let healthy = find(&s, "etcdops_endpoint_healthy");
    assert_eq!(healthy.len(), 3, "{}", run.dump());
    for h in healthy {
        let is_dead = h.label("endpoint") == dead;
        assert_eq!(h.value, if is_dead { 0.0 } else { 1.0 }, "{h:?}");
        if is_dead {
            assert_eq!(h.label("member_id"), "", "{h:?}");
        }
    }
    assert!(
        !find(&s, "etcdops_endpoint_db_size_bytes")
            .iter()
            .any(|x| x.label("endpoint") == dead),
        "{}",
        run.dump()
    );
    assert_eq!(one(&s, "etcdops_cluster_members"), 3.0);
}

#[test]
fn nospace_alarm_is_exported() {
    let cluster = Cluster::start(Spec::new(Version::V35, 1).quota(4 * 1024 * 1024));
    assert!(cluster.raise_nospace() > 0);
    let mut a = cluster.client_args();
    a.extend(args([
        "health",
        "-o",
        "prometheus",
        "--quota-backend-bytes=4194304",
    ]));
    let run = etcdops(&a, &[], Some(&cluster));
    run.code(4);
    let s = samples(&run);
    let alarms = find(&s, "etcdops_alarm_active");
    let value = |name: &str| {
        alarms
            .iter()
            .find(|a| a.label("alarm") == name)
            .map(|a| a.value)
    };
    assert_eq!(value("NOSPACE"), Some(1.0), "{}", run.dump());
    assert_eq!(value("CORRUPT"), Some(0.0), "{}", run.dump());
    assert_eq!(one(&s, "etcdops_health_healthy"), 0.0);
    assert_eq!(one(&s, "etcdops_quota_backend_bytes"), 4194304.0);
    let ratio = find(&s, "etcdops_endpoint_quota_usage_ratio");
    assert!(ratio.len() == 1 && ratio[0].value >= 0.9, "{}", run.dump());
    // Without --cluster there is no cluster to judge.
    assert!(find(&s, "etcdops_cluster_members").is_empty());
}

#[test]
fn nothing_reachable_still_exports_exit_3() {
    let port = common::free_port();
    let url = format!("http://127.0.0.1:{port}");
    let a = args([
        format!("--endpoints={url}"),
        "--dial-timeout=500ms".into(),
        "health".into(),
        "-o".into(),
        "prometheus".into(),
    ]);
    let run = etcdops(&a, &[], None);
    run.code(3).one_line_error(&url);
    let s = samples(&run);
    let healthy = find(&s, "etcdops_endpoint_healthy");
    assert_eq!(healthy.len(), 1);
    assert_eq!(healthy[0].label("endpoint"), url);
    assert_eq!(healthy[0].value, 0.0);
    // Nobody answered the alarm list: no claim that no alarm is active.
    assert!(
        find(&s, "etcdops_alarm_active").is_empty(),
        "{}",
        run.dump()
    );
}

#[test]
fn prometheus_is_for_health_only() {
    // The manifest does not exist: the refusal comes before the command looks at anything.
    let run = etcdops(
        &args([
            "--manifest=/nonexistent/etcd.yaml",
            "-o",
            "prometheus",
            "manifest",
            "show",
        ]),
        &[],
        None,
    );
    run.code(2).one_line_error("-o prometheus is only for");
    assert!(run.stdout.is_empty(), "{}", run.dump());
    assert!(!run.stderr.contains("/nonexistent"), "{}", run.dump());

    let run = etcdops(&args(["-o", "prometheus-ish", "health"]), &[], None);
    run.code(2);
}

/// On a kubeadm node the manifest names the data dir: the metrics then say which filesystem
/// holds it (the mount point `stat -c %m` reports), for the disk-space alert to join on.
#[test]
fn data_dir_filesystem_from_the_manifest() {
    let cluster = Cluster::start(Spec::new(Version::V36, 1).tls());
    let dir = tempfile::tempdir().unwrap();
    let manifest = cluster.kubeadm_manifest(dir.path(), None);
    let data = cluster.members[0].data_dir.clone();
    let env = [("ETCDOPS_MANIFEST", manifest.to_str().unwrap())];
    let run = etcdops(&args(["health", "-o", "prometheus"]), &env, Some(&cluster));
    run.code(0);
    let s = samples(&run);
    let info = find(&s, "etcdops_data_dir_info");
    assert_eq!(info.len(), 1, "{}", run.dump());
    assert_eq!(info[0].value, 1.0);
    assert_eq!(info[0].label("path"), data.to_str().unwrap());
    let stat = Command::new("stat")
        .args(["-c", "%m"])
        .arg(&data)
        .output()
        .expect("run stat");
    let expected = String::from_utf8_lossy(&stat.stdout).trim().to_string();
    assert!(stat.status.success() && !expected.is_empty());
    assert_eq!(info[0].label("mountpoint"), expected, "{}", run.dump());

    // Table and JSON do not change: the data dir is a metrics-only addition.
    let run = etcdops(&args(["health", "-o", "json"]), &env, Some(&cluster));
    run.code(0);
    assert!(run.json().get("data_dir").is_none(), "{}", run.dump());
}

fn repo_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// The shipped alert rules refer only to metrics etcdops exports (taken from a real run
/// on a kubeadm-format node, which exports every family) or to node_exporter's filesystem
/// metrics, and their annotations only use labels that survive the expression.
#[test]
fn alert_rules_use_only_exported_metrics_and_labels() {
    let cluster = Cluster::start(Spec::new(Version::V36, 1).tls());
    let dir = tempfile::tempdir().unwrap();
    let manifest = cluster.kubeadm_manifest(dir.path(), None);
    let env = [("ETCDOPS_MANIFEST", manifest.to_str().unwrap())];
    let run = etcdops(
        &args(["health", "--cluster", "-o", "prometheus"]),
        &env,
        Some(&cluster),
    );
    run.code(0);
    let s = samples(&run);
    let mut labels_of: HashMap<String, HashSet<String>> = HashMap::new();
    for sample in &s {
        labels_of
            .entry(sample.name.clone())
            .or_default()
            .extend(sample.labels.keys().cloned());
    }
    let node_metrics: HashMap<&str, [&str; 3]> = [
        (
            "node_filesystem_avail_bytes",
            ["device", "fstype", "mountpoint"],
        ),
        (
            "node_filesystem_size_bytes",
            ["device", "fstype", "mountpoint"],
        ),
    ]
    .into();

    let path = repo_file("contrib/prometheus/etcdops-alerts.yml");
    let text = std::fs::read_to_string(&path).unwrap();
    let doc: serde_yaml::Value = serde_yaml::from_str(&text).expect("the rules file is YAML");
    let rules = doc["groups"][0]["rules"]
        .as_sequence()
        .expect("groups[0].rules");
    let mut alerts = Vec::new();
    for rule in rules {
        let alert = rule["alert"].as_str().expect("every rule is an alert");
        alerts.push(alert.to_string());
        let expr = rule["expr"]
            .as_str()
            .unwrap_or_else(|| panic!("{alert}: expr"));
        assert!(rule["for"].as_str().is_some(), "{alert}: for");
        let severity = rule["labels"]["severity"].as_str();
        assert!(
            matches!(severity, Some("warning" | "critical")),
            "{alert}: severity {severity:?}"
        );
        let mut available: HashSet<String> = ["job".to_string()].into();
        if !expr.contains("without (instance)") {
            available.insert("instance".into());
        }
        let idents = expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'));
        let mut referenced = 0;
        for ident in idents {
            if ident.starts_with("etcdops_") {
                let labels = labels_of
                    .get(ident)
                    .unwrap_or_else(|| panic!("{alert}: {ident} is not exported\n{}", run.dump()));
                available.extend(labels.iter().cloned());
                referenced += 1;
            } else if ident.starts_with("node_") {
                let labels = node_metrics
                    .get(ident)
                    .unwrap_or_else(|| panic!("{alert}: unknown node_exporter metric {ident}"));
                available.extend(labels.iter().map(|l| l.to_string()));
            }
        }
        assert!(referenced > 0, "{alert} uses no etcdops metric: {expr}");
        for key in ["summary", "description"] {
            let text = rule["annotations"][key]
                .as_str()
                .unwrap_or_else(|| panic!("{alert}: annotations.{key}"));
            for used in text.split("$labels.").skip(1) {
                let label: String = used
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                assert!(
                    available.contains(&label),
                    "{alert}: {key} uses $labels.{label}, not in {available:?}"
                );
            }
        }
    }
    // The alerts the operator guide promises.
    for want in [
        "EtcdMemberUnhealthy",
        "EtcdDataInconsistent",
        "EtcdAlarmActive",
        "EtcdQuotaUsageHigh",
        "EtcdDataDirDiskSpaceLow",
    ] {
        assert!(alerts.iter().any(|a| a == want), "no {want} in {alerts:?}");
    }
}

fn promtool(words: &[&str], file: &Path) -> std::process::Output {
    let out = Command::new("promtool")
        .args(words)
        .arg(file.file_name().unwrap())
        .current_dir(file.parent().unwrap())
        .output()
        .expect("run promtool (scripts/install-deps.sh installs it)");
    assert!(
        out.status.success(),
        "promtool {words:?} {}: {:?}\n{}{}",
        file.display(),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `promtool check rules`, then the unit tests: every alert of the rules file has a test
/// in which it fires and one in which it does not.
#[test]
fn alert_rules_pass_promtool_check_and_unit_tests() {
    let rules = repo_file("contrib/prometheus/etcdops-alerts.yml");
    let tests = repo_file("contrib/prometheus/etcdops-alerts.test.yml");
    let out = promtool(&["check", "rules"], &rules);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("SUCCESS: 7 rules found"),
        "{out:?}"
    );
    promtool(&["test", "rules"], &tests);

    let doc: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(&rules).unwrap()).unwrap();
    let tdoc: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(&tests).unwrap()).unwrap();
    let mut fires: HashSet<String> = HashSet::new();
    let mut quiet: HashSet<String> = HashSet::new();
    for t in tdoc["tests"].as_sequence().expect("tests") {
        for case in t["alert_rule_test"].as_sequence().expect("alert_rule_test") {
            let name = case["alertname"].as_str().unwrap().to_string();
            let expected = case["exp_alerts"].as_sequence().map_or(0, Vec::len);
            if expected > 0 {
                fires.insert(name);
            } else {
                quiet.insert(name);
            }
        }
    }
    for rule in doc["groups"][0]["rules"].as_sequence().unwrap() {
        let alert = rule["alert"].as_str().unwrap();
        assert!(fires.contains(alert), "{alert}: no test where it fires");
        assert!(
            quiet.contains(alert),
            "{alert}: no test where it stays quiet"
        );
    }
}

/// promtool on what a lab node exports (kubeadm-format manifest, TLS from it, the data-dir
/// family included): healthy, then with node 3's etcd stopped the way kubelet stops it
/// (its manifest moved out of the manifests dir).
#[test]
fn lab_metrics_pass_promtool_healthy_and_unhealthy() {
    let lab = Lab::up(Version::V36, 3);
    let run = lab.etcdops(1, &["health", "--cluster", "-o", "prometheus"], &[]);
    run.code(0);
    let s = samples(&run);
    assert_eq!(one(&s, "etcdops_health_healthy"), 1.0);
    assert_eq!(find(&s, "etcdops_data_dir_info").len(), 1, "{}", run.dump());

    let manifest = lab.manifest(3);
    let aside = lab.node_dir(3).join("etcd.yaml.stopped");
    std::fs::rename(&manifest, &aside).unwrap();
    let url = lab.client_url(3);
    // The stand-in kills etcd when the manifest leaves; wait (bounded) until it is gone.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let run = loop {
        let run = lab.etcdops(
            1,
            &[
                "health",
                "--cluster",
                "-o",
                "prometheus",
                "--dial-timeout=1s",
            ],
            &[],
        );
        // Node 3 down and the others answering again: while the cluster elects a new leader
        // another member can miss a linearizable read for a moment (seen on a fresh clone).
        let settled = run.code == 4 && {
            let s = samples(&run);
            let down: Vec<_> = find(&s, "etcdops_endpoint_healthy")
                .into_iter()
                .filter(|h| h.value == 0.0)
                .map(|h| h.label("endpoint").to_string())
                .collect();
            down == [url.clone()]
        };
        if settled {
            break run;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "node 3 alone down was not seen within 60 s after its manifest left\n{}",
            run.dump()
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    };
    let s = samples(&run);
    assert_eq!(one(&s, "etcdops_health_healthy"), 0.0);
    let down = find(&s, "etcdops_endpoint_healthy");
    let down: Vec<_> = down.iter().filter(|h| h.value == 0.0).collect();
    assert_eq!(down.len(), 1, "{}", run.dump());
    assert_eq!(down[0].label("endpoint"), url, "{}", run.dump());
    std::fs::rename(&aside, &manifest).unwrap();
}

/// contrib/prometheus/etcdops-textfile.sh: writes etcd.prom atomically, keeps reporting
/// when the cluster is unhealthy or unreachable (the alerts need those metrics), and
/// leaves the previous file alone when etcdops printed nothing.
#[test]
fn textfile_script_writes_atomically_and_reports_outages() {
    let mut cluster = Cluster::start(Spec::new(Version::V36, 1).tls());
    let out_dir = tempfile::tempdir().unwrap();
    let script = repo_file("contrib/prometheus/etcdops-textfile.sh");
    let client_args = cluster.client_args();
    let run_script = |extra: &[String]| {
        let mut cmd = Command::new("sh");
        cmd.arg(&script)
            .args(&client_args)
            .args(extra)
            .env("ETCDOPS_TEXTFILE_DIR", out_dir.path())
            .env("ETCDOPS_BIN", env!("CARGO_BIN_EXE_etcdops"))
            .env_remove("ETCDOPS_MANIFEST");
        cmd.output().expect("run the textfile script")
    };
    let prom = out_dir.path().join("etcd.prom");
    let listing = || -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(out_dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    let parse = |text: &str| -> Vec<Sample> {
        promtool_check_metrics(text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        validate(text).unwrap_or_else(|e| panic!("{e}\n{text}")).0
    };

    let out = run_script(&[]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(listing(), ["etcd.prom"]);
    let text = std::fs::read_to_string(&prom).unwrap();
    assert_eq!(one(&parse(&text), "etcdops_health_healthy"), 1.0);
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&prom).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o644, "node_exporter must be able to read it");

    // A flag etcdops rejects (exit 2): no metrics, so the old file stays and the unit fails.
    let out = run_script(&args(["--no-such-flag"]));
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert_eq!(std::fs::read_to_string(&prom).unwrap(), text);
    assert_eq!(listing(), ["etcd.prom"]);

    // The only member down (etcdops exits 3): still exported, as unhealthy.
    cluster.kill(0);
    let out = run_script(&args(["--dial-timeout=500ms"]));
    assert!(out.status.success(), "{out:?}");
    assert_eq!(listing(), ["etcd.prom"]);
    let s = parse(&std::fs::read_to_string(&prom).unwrap());
    assert_eq!(one(&s, "etcdops_health_healthy"), 0.0);
    assert_eq!(one(&s, "etcdops_endpoint_healthy"), 0.0);
}
