//! Prometheus's text exposition format (0.0.4), for every role's `/metrics`:
//! a family's `# HELP` and `# TYPE` lines, then its samples, label values
//! escaped as the format says. One writer, so the roles cannot drift apart in
//! how they spell a family.

use std::fmt::{Display, Write as _};

/// The `Content-Type` of a `/metrics` answer.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4";

/// A family's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    Counter,
    Gauge,
}

impl MetricKind {
    fn as_str(self) -> &'static str {
        match self {
            MetricKind::Counter => "counter",
            MetricKind::Gauge => "gauge",
        }
    }
}

/// A `/metrics` page being written.
#[derive(Debug, Default)]
pub struct Exposition {
    out: String,
}

impl Exposition {
    /// An empty page.
    pub fn new() -> Exposition {
        Exposition::default()
    }

    /// Starts family `name`: its help and type lines.
    pub fn family(&mut self, name: &str, help: &str, kind: MetricKind) -> &mut Exposition {
        let _ = writeln!(self.out, "# HELP {name} {help}\n# TYPE {name} {}", kind.as_str());
        self
    }

    /// One sample of the family just started, with `labels` (name, value).
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl Display) -> &mut Exposition {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (label, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{label}=\"");
                for c in v.chars() {
                    match c {
                        '\\' => self.out.push_str("\\\\"),
                        '"' => self.out.push_str("\\\""),
                        '\n' => self.out.push_str("\\n"),
                        c => self.out.push(c),
                    }
                }
                self.out.push('"');
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
        self
    }

    /// A family of one unlabelled sample.
    pub fn single(
        &mut self,
        name: &str,
        help: &str,
        kind: MetricKind,
        value: impl Display,
    ) -> &mut Exposition {
        self.family(name, help, kind).sample(name, &[], value)
    }

    /// The page.
    pub fn finish(self) -> String {
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_and_escaped_labels() {
        let mut page = Exposition::new();
        page.single("x_total", "Things.", MetricKind::Counter, 3);
        page.family("up", "Up or not.", MetricKind::Gauge).sample(
            "up",
            &[("addr", "h:1"), ("note", "a \"b\"\\\n")],
            1,
        );
        assert_eq!(
            page.finish(),
            "# HELP x_total Things.\n# TYPE x_total counter\nx_total 3\n\
             # HELP up Up or not.\n# TYPE up gauge\nup{addr=\"h:1\",note=\"a \\\"b\\\"\\\\\\n\"} 1\n"
        );
    }
}
