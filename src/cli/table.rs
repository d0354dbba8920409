//! The one table printer of the command line: columns as wide as their widest cell,
//! two spaces apart, left- or right-aligned, no trailing blanks.

/// How a column's cells are aligned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Align {
    /// Text.
    Left,
    /// Numbers.
    Right,
}

/// Renders `header` and `rows` (each row as many cells as the header; missing cells
/// are blank) with one `align` per column (missing ones are `Left`).
pub fn render(header: &[&str], rows: &[Vec<String>], align: &[Align]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    for r in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, w) in widths.iter().enumerate() {
            let cell = r.get(i).map_or("", String::as_str);
            let pad = " ".repeat(w - cell.chars().count().min(*w));
            if i > 0 {
                line.push_str("  ");
            }
            match align.get(i).copied().unwrap_or(Align::Left) {
                Align::Left => {
                    line.push_str(cell);
                    line.push_str(&pad);
                }
                Align::Right => {
                    line.push_str(&pad);
                    line.push_str(cell);
                }
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `s` cut to `width` characters, the last one `…` when cut.
pub fn cell(s: &str, width: usize) -> String {
    if s.chars().count() > width {
        let mut t: String = s.chars().take(width.saturating_sub(1)).collect();
        t.push('…');
        t
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align() {
        let rows = vec![
            vec!["a".to_string(), "1".to_string()],
            vec!["long name".to_string(), "200".to_string()],
            vec!["short".to_string()],
        ];
        let t = render(&["NAME", "N"], &rows, &[Align::Left, Align::Right]);
        assert_eq!(t, "NAME         N\na            1\nlong name  200\nshort\n");
        assert_eq!(cell("abcdef", 4), "abc…");
        assert_eq!(cell("abc", 4), "abc");
        assert_eq!(cell("é€√ü", 2), "é…");
    }
}
