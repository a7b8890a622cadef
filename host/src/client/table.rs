//! Plain-text tables for the terminal: one header row, columns as wide as their
//! widest cell, numbers right-aligned.

/// Renders `rows` under `headers`. A column whose cells are all numbers is
/// right-aligned; every other column is left-aligned. Lines carry no trailing
/// spaces and end with a newline.
pub(crate) fn render(headers: &[&str], rows: &[Vec<String>]) -> String {
    let columns = headers.len();
    let width = |i: usize| {
        rows.iter()
            .filter_map(|row| row.get(i))
            .map(|cell| cell.chars().count())
            .chain([headers[i].chars().count()])
            .max()
            .unwrap_or(0)
    };
    let widths: Vec<usize> = (0..columns).map(width).collect();
    let numeric: Vec<bool> = (0..columns)
        .map(|i| {
            !rows.is_empty()
                && rows
                    .iter()
                    .all(|row| row.get(i).is_some_and(|c| is_number(c)))
        })
        .collect();
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut text = String::new();
        for (i, cell) in cells.enumerate().take(columns) {
            if i > 0 {
                text.push_str("  ");
            }
            let pad = widths[i].saturating_sub(cell.chars().count());
            if numeric[i] {
                text.push_str(&" ".repeat(pad));
                text.push_str(cell);
            } else {
                text.push_str(cell);
                text.push_str(&" ".repeat(pad));
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(&mut headers.iter().copied());
    for row in rows {
        line(&mut row.iter().map(String::as_str));
    }
    out
}

fn is_number(cell: &str) -> bool {
    !cell.is_empty() && cell.parse::<f64>().is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(headers: &[&str], rows: &[&[&str]], expected: &str) {
        let rows: Vec<Vec<String>> = rows
            .iter()
            .map(|r| r.iter().map(|c| (*c).to_owned()).collect())
            .collect();
        assert_eq!(render(headers, &rows), expected);
    }

    #[test]
    fn columns_fit_their_widest_cell() {
        check(
            &["bucket", "count"],
            &[&["red", "7"], &["green", "1234"]],
            "bucket  count\n\
             red         7\n\
             green    1234\n",
        );
    }

    #[test]
    fn text_columns_are_left_aligned_and_lines_not_padded() {
        check(
            &["name", "plugin"],
            &[&["a", "sum"], &["long-name", "histogram"]],
            "name       plugin\n\
             a          sum\n\
             long-name  histogram\n",
        );
    }

    #[test]
    fn an_empty_table_is_its_header() {
        check(&["name", "plugin"], &[], "name  plugin\n");
    }
}
