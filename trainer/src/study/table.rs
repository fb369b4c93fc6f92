//! Tables of a report as one row model, rendered into Markdown and into HTML.

/// A table as its header and rows of cells: one row model, rendered into Markdown and into
/// HTML (cells escaped).
pub struct Table {
    /// Column names.
    pub header: Vec<String>,
    /// Rows of cells, as many as the header has columns.
    pub rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column names and no rows yet.
    pub fn new(header: &[&str]) -> Self {
        Table {
            header: header.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    /// A GitHub-flavoured Markdown table, ending in a newline.
    pub fn markdown(&self) -> String {
        let line = |cells: &[String]| format!("| {} |\n", cells.join(" | "));
        let mut s = line(&self.header);
        s += &format!("|{}\n", "---|".repeat(self.header.len()));
        for r in &self.rows {
            s += &line(r);
        }
        s
    }

    /// An HTML `<table>`, header cells as `<th>`.
    pub fn html(&self) -> String {
        let row = |cells: &[String], tag: &str| {
            let cells: String = cells
                .iter()
                .map(|c| format!("<{tag}>{}</{tag}>", esc(c)))
                .collect();
            format!("<tr>{cells}</tr>")
        };
        let mut s = format!("<table>{}", row(&self.header, "th"));
        for r in &self.rows {
            s += &row(r, "td");
        }
        s + "</table>"
    }
}

/// Text escaped for HTML (`&`, `<`, `>`).
pub fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
