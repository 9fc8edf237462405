//! How the command writes numbers for people: counts, bytes, durations and rates, and
//! the plain-text tables `list` and `status` print.
//!
//! Every subcommand that prints a figure takes it from here, so `status`, the port
//! subcommands and the benchmarks write `25.1 MiB` or `12.3k` the same way; this module
//! knows nothing of networks or ports, and no other module of the command is needed to
//! read it.

/// A count with a metric suffix past 9999: `1234`, `12.3k`, `4.56M`.
pub fn human_count(value: u64) -> String {
    const UNITS: [(u64, &str); 4] = [
        (1_000_000_000_000, "T"),
        (1_000_000_000, "G"),
        (1_000_000, "M"),
        (1_000, "k"),
    ];
    if value < 10_000 {
        return value.to_string();
    }
    for (scale, suffix) in UNITS {
        if value >= scale {
            return format!("{}{suffix}", three_digits(value as f64 / scale as f64));
        }
    }
    value.to_string()
}

/// A byte count in binary units: `512 B`, `1.50 KiB`, `25.1 MiB`.
pub fn human_bytes(value: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if value < 1024 {
        return format!("{value} B");
    }
    let mut scaled = value as f64 / 1024.0;
    let mut unit = 0;
    while scaled >= 1024.0 && unit + 1 < UNITS.len() {
        scaled /= 1024.0;
        unit += 1;
    }
    format!("{} {}", three_digits(scaled), UNITS[unit])
}

/// Three significant digits for values from 1 to 9999.
fn three_digits(value: f64) -> String {
    if value >= 100.0 {
        format!("{value:.0}")
    } else if value >= 10.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    }
}

/// A duration given in nanoseconds, in the largest unit that keeps it at 1 or more:
/// `850 ns`, `12.5 µs`, `3.2 ms`.
pub fn nanoseconds(ns: u64) -> String {
    if ns >= 1_000_000 {
        format!("{:.1} ms", ns as f64 / 1e6)
    } else if ns >= 1_000 {
        format!("{:.1} µs", ns as f64 / 1e3)
    } else {
        format!("{ns} ns")
    }
}

/// Packets per second: `1.23 Mpps` or `456.7 kpps`.
pub fn packet_rate(pps: f64) -> String {
    if pps >= 1e6 {
        format!("{:.2} Mpps", pps / 1e6)
    } else {
        format!("{:.1} kpps", pps / 1e3)
    }
}

/// How a column's cells line up: text to the left, numbers to the right.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Align {
    /// Text: names, addresses, flags.
    Left,
    /// Numbers, so their digits line up.
    Right,
}

/// A plain-text table: a header line, then one line per row, columns two spaces apart.
#[derive(Debug)]
pub struct Table {
    headers: Vec<String>,
    align: Vec<Align>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column headers and alignments, and no rows yet.
    pub fn new(columns: &[(&str, Align)]) -> Table {
        Table {
            headers: columns.iter().map(|(h, _)| h.to_string()).collect(),
            align: columns.iter().map(|(_, a)| *a).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row, one cell per column.
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// The table as text, each line ending in a newline and no trailing spaces.
    pub fn render(&self) -> String {
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        for row in std::iter::once(&self.headers).chain(&self.rows) {
            let mut line = String::new();
            for (column, cell) in row.iter().enumerate() {
                let width = widths.get(column).copied().unwrap_or(0);
                if column > 0 {
                    line.push_str("  ");
                }
                if self.align.get(column) == Some(&Align::Right) {
                    line.push_str(&format!("{cell:>width$}"));
                } else {
                    line.push_str(&format!("{cell:<width$}"));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_bytes_read_at_a_glance() {
        assert_eq!(human_count(0), "0");
        assert_eq!(human_count(9_999), "9999");
        assert_eq!(human_count(12_345), "12.3k");
        assert_eq!(human_count(4_560_000), "4.56M");
        assert_eq!(human_count(987_000_000_000), "987G");
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.50 KiB");
        assert_eq!(human_bytes(26_345_472), "25.1 MiB");
        assert_eq!(human_bytes(u64::MAX), "16.0 EiB");
    }

    #[test]
    fn durations_and_rates_take_the_unit_that_fits() {
        assert_eq!(nanoseconds(850), "850 ns");
        assert_eq!(nanoseconds(12_500), "12.5 µs");
        assert_eq!(nanoseconds(3_200_000), "3.2 ms");
        assert_eq!(packet_rate(1_234_000.0), "1.23 Mpps");
        assert_eq!(packet_rate(456_700.0), "456.7 kpps");
    }

    #[test]
    fn tables_align_their_columns() {
        let mut table = Table::new(&[("NAME", Align::Left), ("PEERS", Align::Right)]);
        table.row(vec!["a".into(), "3".into()]);
        table.row(vec!["longer".into(), "12".into()]);
        assert_eq!(
            table.render(),
            "NAME    PEERS\na           3\nlonger     12\n"
        );
    }
}
