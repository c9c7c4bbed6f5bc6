//! Plain-text tables for the command line (`status`, `history`).
//!
//! Owns only the layout: each column padded to its widest cell, counted in
//! characters (node ids and user names need not be ASCII), two spaces
//! between columns, no trailing spaces.

use std::fmt::Write;

/// Writes `rows` to `out`, one line each, columns aligned.
pub fn write<R: AsRef<[String]>>(out: &mut String, rows: &[R]) {
    let columns = rows.iter().map(|r| r.as_ref().len()).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.as_ref().get(c))
                .map(|cell| cell.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in rows {
        let cells: Vec<String> = row
            .as_ref()
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        let _ = writeln!(out, "{}", cells.join("  ").trim_end());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align_on_characters_and_lines_end_clean() {
        let rows = vec![
            vec!["NODE".to_string(), "STATE".to_string(), "X".to_string()],
            vec!["nœud-1".to_string(), "SYNCED".to_string(), String::new()],
        ];
        let mut out = String::new();
        write(&mut out, &rows);
        assert_eq!(out, "NODE    STATE   X\nnœud-1  SYNCED\n");
        let mut empty = String::new();
        write::<Vec<String>>(&mut empty, &[]);
        assert_eq!(empty, "");
    }
}
