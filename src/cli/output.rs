//! How client commands print: aligned tables with headers, `-o json|yaml`, `-q` (ids only),
//! human sizes and ages.

use std::time::Duration;

/// The `-o` of client commands that print objects.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns with a header (the default).
    #[default]
    Table,
    Json,
    Yaml,
}

/// `value` as JSON or YAML text (a table is the caller's).
pub fn structured(format: Format, value: &serde_json::Value) -> anyhow::Result<String> {
    Ok(match format {
        Format::Yaml => serde_yaml::to_string(value)?,
        _ => serde_json::to_string_pretty(value)? + "\n",
    })
}

/// Rows under a header, each column as wide as its widest cell (the last one is not padded).
pub struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Table {
        Table {
            rows: vec![header.iter().map(|h| h.to_string()).collect()],
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn render(&self) -> String {
        let columns = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let widths: Vec<usize> = (0..columns)
            .map(|i| {
                self.rows
                    .iter()
                    .filter_map(|r| r.get(i))
                    .map(|c| c.chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut out = String::new();
        for row in &self.rows {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate() {
                if i + 1 == row.len() {
                    line.push_str(cell);
                } else {
                    line.push_str(&format!("{cell:<w$}   ", w = widths[i]));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// 1.5 KiB, 23.4 MiB...
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    match unit {
        0 => format!("{bytes} B"),
        _ => format!("{v:.1} {}", UNITS[unit]),
    }
}

/// A span of time as people say it: 45s, 3m, 2h, 5d.
pub fn human_duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        7200..=172_799 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

/// How long ago `unix_nanos` was ("-" for 0, never).
pub fn ago(unix_nanos: i64) -> String {
    if unix_nanos <= 0 {
        return "-".into();
    }
    let now = concord::clock::now_nanos();
    format!(
        "{} ago",
        human_duration(Duration::from_nanos(
            now.saturating_sub(unix_nanos).max(0) as u64
        ))
    )
}

/// A short id (13 characters, as crictl shows them).
pub fn short(id: &str) -> &str {
    id.get(..13).unwrap_or(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns_under_their_header() {
        let mut t = Table::new(&["ID", "STATE", "NAME"]);
        t.row(vec!["abc".into(), "Ready".into(), "web-0".into()]);
        t.row(vec!["abcdef".into(), "-".into(), "x".into()]);
        assert_eq!(
            t.render(),
            "ID       STATE   NAME\nabc      Ready   web-0\nabcdef   -       x\n"
        );
    }

    #[test]
    fn sizes_and_durations_read_as_people_say_them() {
        assert_eq!(human_size(512), "512 B");
        assert_eq!(human_size(1536), "1.5 KiB");
        assert_eq!(human_size(4_400_000), "4.2 MiB");
        assert_eq!(human_duration(Duration::from_secs(45)), "45s");
        assert_eq!(human_duration(Duration::from_secs(600)), "10m");
        assert_eq!(human_duration(Duration::from_secs(3 * 86_400)), "3d");
        assert_eq!(ago(0), "-");
    }
}
