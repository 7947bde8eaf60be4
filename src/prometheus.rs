//! The Prometheus text exposition format, as node_exporter's textfile collector reads it:
//! one `# HELP` and one `# TYPE` line per family, then its samples, label values escaped.
//! No client-side timestamps: the textfile collector rejects them, so a report that wants
//! to say when it was taken exports a timestamp gauge instead.

/// One gauge family and its samples.
#[derive(Debug, Clone)]
pub struct Gauge {
    name: &'static str,
    help: &'static str,
    samples: Vec<(Vec<(&'static str, String)>, f64)>,
}

impl Gauge {
    pub fn new(name: &'static str, help: &'static str) -> Self {
        debug_assert!(valid_name(name), "metric name {name:?}");
        Gauge {
            name,
            help,
            samples: Vec::new(),
        }
    }

    /// Add a sample with these labels.
    pub fn sample(&mut self, labels: &[(&'static str, &str)], value: f64) -> &mut Self {
        debug_assert!(labels.iter().all(|(k, _)| valid_label_name(k)));
        self.samples.push((
            labels.iter().map(|(k, v)| (*k, v.to_string())).collect(),
            value,
        ));
        self
    }

    /// Add a sample without labels.
    pub fn value(&mut self, value: f64) -> &mut Self {
        self.sample(&[], value)
    }
}

/// A boolean as a gauge value.
pub fn flag(b: bool) -> f64 {
    if b { 1.0 } else { 0.0 }
}

/// Render families in order. A family without samples is left out: HELP and TYPE alone
/// say nothing.
pub fn render(families: &[Gauge]) -> String {
    let mut out = String::new();
    for f in families.iter().filter(|f| !f.samples.is_empty()) {
        out.push_str(&format!("# HELP {} {}\n", f.name, escape_help(f.help)));
        out.push_str(&format!("# TYPE {} gauge\n", f.name));
        for (labels, value) in &f.samples {
            out.push_str(f.name);
            if !labels.is_empty() {
                let pairs: Vec<String> = labels
                    .iter()
                    .map(|(k, v)| format!("{k}=\"{}\"", escape_label(v)))
                    .collect();
                out.push('{');
                out.push_str(&pairs.join(","));
                out.push('}');
            }
            out.push(' ');
            out.push_str(&number(*value));
            out.push('\n');
        }
    }
    out
}

/// A sample value as the format writes it (Go's ParseFloat reads it back).
fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        format!("{v}")
    }
}

fn escape_label(v: &str) -> String {
    v.replace('\\', r"\\")
        .replace('"', "\\\"")
        .replace('\n', r"\n")
}

fn escape_help(v: &str) -> String {
    v.replace('\\', r"\\").replace('\n', r"\n")
}

fn valid_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn valid_label_name(s: &str) -> bool {
    !s.starts_with("__") && !s.contains(':') && valid_name(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn help_type_then_samples_with_escaped_labels() {
        let mut up = Gauge::new("x_up", "Whether x is up.\nSecond line \\ here.");
        up.sample(
            &[("endpoint", "https://a:2379"), ("name", "we\"ird\\\n")],
            1.0,
        )
        .sample(&[("endpoint", "https://b:2379"), ("name", "")], 0.0);
        let mut ratio = Gauge::new("x_ratio", "A ratio.");
        ratio.value(0.125);
        let empty = Gauge::new("x_empty", "Never sampled.");
        let text = render(&[up, empty, ratio]);
        assert_eq!(
            text,
            "# HELP x_up Whether x is up.\\nSecond line \\\\ here.\n\
             # TYPE x_up gauge\n\
             x_up{endpoint=\"https://a:2379\",name=\"we\\\"ird\\\\\\n\"} 1\n\
             x_up{endpoint=\"https://b:2379\",name=\"\"} 0\n\
             # HELP x_ratio A ratio.\n\
             # TYPE x_ratio gauge\n\
             x_ratio 0.125\n"
        );
    }

    #[test]
    fn numbers_as_go_parses_them() {
        assert_eq!(number(2147483648.0), "2147483648");
        assert_eq!(number(0.0001), "0.0001");
        assert_eq!(number(1_764_190_000.25), "1764190000.25");
        assert_eq!(number(f64::NAN), "NaN");
        assert_eq!(number(f64::INFINITY), "+Inf");
        assert_eq!(number(f64::NEG_INFINITY), "-Inf");
        assert_eq!(flag(true), 1.0);
        assert_eq!(flag(false), 0.0);
    }

    #[test]
    fn names() {
        assert!(valid_name("etcdops_endpoint_healthy"));
        assert!(valid_name("a:b_c1"));
        assert!(!valid_name("1abc"));
        assert!(!valid_name("a-b"));
        assert!(!valid_name(""));
        assert!(valid_label_name("member_id"));
        assert!(!valid_label_name("__name__"));
        assert!(!valid_label_name("a:b"));
    }
}
