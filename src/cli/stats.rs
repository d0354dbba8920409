//! The human output of `keygate token stats`: a table of the days and one text
//! sparkline per response class.
//!
//! ```text
//! DATE        2XX  3XX  4XX  5XX
//! 2026-11-22    0    0    0    0
//! 2026-11-23    3    1    2    1
//! total         3    1    2    1
//!
//! per day 2026-11-22 … 2026-11-23 (█ = the class's busiest day, blank = none)
//! 2xx | █|  3
//! 3xx | █|  1
//! 4xx | █|  2
//! 5xx | █|  1
//! ```
//!
//! A day with no requests is a blank, not `▁`, so "none" and "a few" stay apart; any
//! non-zero day shows at least `▁`. Each sparkline is delimited by `|` so the blanks
//! stay visible, and wraps every [`SPARK_WIDTH`] days (30 days fit in 80 columns
//! with room to spare; `--days 365` stays readable too).

use serde_json::Value;

use super::table::{self, Align};

/// The response classes, in the order of the API's fields.
const CLASSES: [&str; 4] = ["2xx", "3xx", "4xx", "5xx"];
/// Eight levels, lowest first.
const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
/// Days per sparkline line.
const SPARK_WIDTH: usize = 60;

/// One day of the answer.
struct Day {
    date: String,
    counts: [u64; 4],
}

/// Renders the body of `GET /v1/tokens/{id}/stats`; `None` if it has another shape
/// (the caller then prints the JSON as it came).
pub fn render(v: &Value) -> Option<String> {
    let days = v["days"]
        .as_array()?
        .iter()
        .map(|d| {
            Some(Day {
                date: d["date"].as_str()?.to_string(),
                counts: counts(d)?,
            })
        })
        .collect::<Option<Vec<Day>>>()?;
    let totals = counts(&v["totals"])?;

    let mut rows: Vec<Vec<String>> = days.iter().map(|d| row(&d.date, &d.counts)).collect();
    rows.push(row("total", &totals));
    // The date left-aligned, the numbers right-aligned.
    let mut out = table::render(
        &["DATE", "2XX", "3XX", "4XX", "5XX"],
        &rows,
        &[
            Align::Left,
            Align::Right,
            Align::Right,
            Align::Right,
            Align::Right,
        ],
    );

    if let (Some(first), Some(last)) = (days.first(), days.last()) {
        out.push('\n');
        out.push_str(&format!(
            "per day {} … {} (█ = the class's busiest day, blank = none)\n",
            first.date, last.date
        ));
        let total_width = totals
            .iter()
            .map(|t| t.to_string().len())
            .max()
            .unwrap_or(1);
        for (i, class) in CLASSES.iter().enumerate() {
            let series: Vec<u64> = days.iter().map(|d| d.counts[i]).collect();
            let line = sparkline(&series);
            let chunks: Vec<String> = line
                .chars()
                .collect::<Vec<_>>()
                .chunks(SPARK_WIDTH)
                .map(|c| c.iter().collect())
                .collect();
            for (n, chunk) in chunks.iter().enumerate() {
                let pad = " ".repeat(SPARK_WIDTH.min(days.len()) - chunk.chars().count());
                if n == 0 {
                    out.push_str(&format!(
                        "{class} |{chunk}{pad}|  {:>total_width$}\n",
                        totals[i]
                    ));
                } else {
                    out.push_str(&format!("    |{chunk}{pad}|\n"));
                }
            }
        }
    }
    Some(out)
}

/// The four class counts of a day or of the totals.
fn counts(v: &Value) -> Option<[u64; 4]> {
    let mut c = [0u64; 4];
    for (n, class) in c.iter_mut().zip(CLASSES) {
        *n = v[class].as_u64()?;
    }
    Some(c)
}

fn row(label: &str, c: &[u64; 4]) -> Vec<String> {
    std::iter::once(label.to_string())
        .chain(c.iter().map(u64::to_string))
        .collect()
}

/// One character per value, scaled to the series' maximum: 0 is a blank, any other
/// value at least `▁`, the maximum `█`.
fn sparkline(series: &[u64]) -> String {
    let max = series.iter().copied().max().unwrap_or(0);
    series
        .iter()
        .map(|&n| {
            if n == 0 {
                return ' ';
            }
            // ceil(n * 8 / max) is in 1..=8; u128 so huge counts cannot overflow.
            let level = (u128::from(n) * 8).div_ceil(u128::from(max));
            BARS[usize::try_from(level).unwrap_or(8).clamp(1, 8) - 1]
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn sparkline_scales_to_the_maximum() {
        assert_eq!(sparkline(&[]), "");
        assert_eq!(sparkline(&[0, 0, 0]), "   ");
        assert_eq!(sparkline(&[0, 1, 8]), " ▁█");
        assert_eq!(sparkline(&[1, 2, 3, 4, 5, 6, 7, 8]), "▁▂▃▄▅▆▇█");
        // A tiny non-zero day still shows.
        assert_eq!(sparkline(&[1, 1000]), "▁█");
        assert_eq!(sparkline(&[u64::MAX, 1]), "█▁");
    }

    fn answer(days: usize, f: impl Fn(usize) -> [u64; 4]) -> Value {
        let mut totals = [0u64; 4];
        let list: Vec<Value> = (0..days)
            .map(|i| {
                let c = f(i);
                for (t, n) in totals.iter_mut().zip(c) {
                    *t += n;
                }
                json!({"date": format!("2026-01-{:02}", i % 31 + 1),
                    "2xx": c[0], "3xx": c[1], "4xx": c[2], "5xx": c[3]})
            })
            .collect();
        json!({"token_id": "SU-000-000-001", "days": list,
            "totals": {"2xx": totals[0], "3xx": totals[1], "4xx": totals[2], "5xx": totals[3]}})
    }

    #[test]
    fn thirty_days_fit_in_80_columns() {
        let v = answer(30, |i| [i as u64 * 1000, 0, (i % 3) as u64, 1]);
        let out = render(&v).unwrap();
        for line in out.lines() {
            assert!(line.chars().count() <= 80, "{line:?}");
        }
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], "DATE           2XX  3XX  4XX  5XX");
        assert_eq!(lines[1], "2026-01-01       0    0    0    1");
        assert_eq!(lines[31], "total       435000    0   30   30");
        let spark = |class: &str| {
            *lines
                .iter()
                .find(|l| l.starts_with(&format!("{class} |")))
                .unwrap()
        };
        assert!(spark("2xx").starts_with("2xx | ▁▁▁"), "{}", spark("2xx"));
        assert!(spark("2xx").ends_with("█|  435000"));
        assert_eq!(spark("3xx"), format!("3xx |{}|       0", " ".repeat(30)));
        assert_eq!(spark("5xx"), format!("5xx |{}|      30", "█".repeat(30)));
    }

    #[test]
    fn long_periods_wrap() {
        let out = render(&answer(130, |_| [1, 0, 0, 0])).unwrap();
        let lines: Vec<&str> = out.lines().collect();
        let at = lines.iter().position(|l| l.starts_with("2xx |")).unwrap();
        assert_eq!(lines[at], format!("2xx |{}|  130", "█".repeat(60)));
        assert_eq!(lines[at + 1], format!("    |{}|", "█".repeat(60)));
        assert_eq!(
            lines[at + 2],
            format!("    |{}{}|", "█".repeat(10), " ".repeat(50))
        );
        assert!(lines[at + 3].starts_with("3xx |"));
    }

    #[test]
    fn other_shapes_are_refused() {
        assert!(render(&json!(null)).is_none());
        assert!(render(&json!({"days": [{"date": "x"}], "totals": {}})).is_none());
        assert!(
            render(&json!({"days": [], "totals": {"2xx": -1, "3xx": 0, "4xx": 0, "5xx": 0}}))
                .is_none()
        );
        // No days: the table alone.
        let out = render(&json!({"days": [], "totals": {"2xx": 0, "3xx": 0, "4xx": 0, "5xx": 0}}))
            .unwrap();
        assert_eq!(out.lines().count(), 2);
    }
}
