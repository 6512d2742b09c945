//! Plain-text tables for the terminal: left-aligned columns, two spaces apart.
//!
//! Every CLI listing (`reborn admin groups`, a rebalance plan, …) prints through
//! [`render`], so they all look alike. Imports nothing from the crate.

use std::fmt::Write as _;

/// `header` and `rows` as left-aligned columns separated by two spaces, one line
/// each, without trailing blanks. Widths count characters, not bytes.
pub fn render(header: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header_row: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header_row).chain(rows.iter()) {
        let mut line = String::new();
        for (cell, w) in row.iter().zip(&widths) {
            // Writing to a String cannot fail.
            let _ = write!(line, "{cell:<w$}  ");
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_are_aligned_without_trailing_blanks() {
        let rows = vec![
            vec!["1".to_string(), "long cell".to_string()],
            vec!["22".to_string(), String::new()],
        ];
        assert_eq!(render(&["A", "B"], rows), "A   B\n1   long cell\n22\n");
    }
}
