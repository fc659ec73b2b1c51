//! Writing the Prometheus text format (0.0.4): a family's `# HELP` and `# TYPE` lines, then its
//! samples, each family once.

use std::fmt::{Display, Write as _};

/// `v` escaped for a label value.
pub(crate) fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The `# HELP` and `# TYPE` lines of a family.
pub(crate) fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// One sample. `labels` are written as given (values escaped).
pub(crate) fn sample(out: &mut String, name: &str, labels: &[(&str, &str)], value: impl Display) {
    out.push_str(name);
    if !labels.is_empty() {
        out.push('{');
        for (i, (k, v)) in labels.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(out, "{k}=\"{}\"", label(v));
        }
        out.push('}');
    }
    let _ = writeln!(out, " {value}");
}
