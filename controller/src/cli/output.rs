//! Machine-readable output: the writers that put data on stdout ([`out`], [`out_json`],
//! [`out_yaml`]; `-o yaml` prints the same shapes as YAML), and the JSON shapes of `-o json`
//! (`crate::views::json`, shared with the web console).

use std::io::Write as _;

use serde_json::Value;

use super::CliError;
pub use crate::views::json::*;

/// Writes `text` to stdout. A closed pipe (`syncfleet runs list | head -1`) is not an error.
pub fn out(text: &str) -> Result<(), CliError> {
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(CliError::Stdout(e)),
    }
}

/// Writes one pretty JSON document and a newline to stdout.
pub fn out_json(v: &Value) -> Result<(), CliError> {
    let text =
        serde_json::to_string_pretty(v).map_err(|e| CliError::Stdout(std::io::Error::other(e)))?;
    out(&format!("{text}\n"))
}

/// A JSON (or YAML) array written to stdout element by element, as a paged listing's pages
/// arrive: the bytes are those [`out_json`] (or [`out_yaml`]) prints for the whole array, but
/// nothing waits for the last page and only one page is held in memory. When a later page
/// fails, the command fails (non-zero exit, the error on stderr) with the array left unclosed,
/// so a reader never mistakes a part for the whole list.
pub struct ArrayOut {
    yaml: bool,
    count: usize,
}

impl ArrayOut {
    /// A JSON array, or a YAML sequence when `yaml`.
    pub fn new(yaml: bool) -> Self {
        Self { yaml, count: 0 }
    }

    /// Writes one element.
    pub fn push(&mut self, v: &Value) -> Result<(), CliError> {
        let text = self.element(v)?;
        out(&text)
    }

    /// Ends the array (`[]` when nothing was pushed).
    pub fn finish(self) -> Result<(), CliError> {
        out(self.end())
    }

    /// The text [`ArrayOut::push`] writes for `v`.
    fn element(&mut self, v: &Value) -> Result<String, CliError> {
        let text = if self.yaml {
            serde_norway::to_string(&Value::Array(vec![v.clone()]))
                .map_err(|e| CliError::Stdout(std::io::Error::other(e)))?
        } else {
            // Pretty JSON never holds a raw newline inside a string, so indenting each line
            // nests the element exactly as the whole array's pretty form does.
            let pretty = serde_json::to_string_pretty(v)
                .map_err(|e| CliError::Stdout(std::io::Error::other(e)))?;
            let lead = if self.count == 0 { "[\n" } else { ",\n" };
            let body: Vec<String> = pretty.lines().map(|l| format!("  {l}")).collect();
            format!("{lead}{}", body.join("\n"))
        };
        self.count += 1;
        Ok(text)
    }

    /// The text [`ArrayOut::finish`] writes.
    fn end(&self) -> &'static str {
        match (self.count, self.yaml) {
            (0, _) => "[]\n",
            (_, true) => "",
            (_, false) => "\n]\n",
        }
    }
}

/// Writes `v` as YAML to stdout.
pub fn out_yaml(v: &Value) -> Result<(), CliError> {
    let text =
        serde_norway::to_string(v).map_err(|e| CliError::Stdout(std::io::Error::other(e)))?;
    out(&text)
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a failed unwrap is a failed test"
)]
mod tests {
    use super::*;
    use serde_json::json;

    /// What an [`ArrayOut`] writes for `items`.
    fn streamed(items: &[Value], yaml: bool) -> String {
        let mut array = ArrayOut::new(yaml);
        let mut text = String::new();
        for v in items {
            text.push_str(&array.element(v).unwrap());
        }
        text.push_str(array.end());
        text
    }

    #[test]
    fn a_streamed_array_is_the_whole_array_printed_at_once() {
        let items = [
            json!({"name": "a", "labels": {"env": "prod"}, "running": []}),
            json!({"name": "b\nc", "list": [1, 2, {"x": null}], "empty": {}}),
            json!("plain"),
        ];
        for n in 0..=items.len() {
            let part = &items[..n];
            let whole = Value::Array(part.to_vec());
            assert_eq!(
                streamed(part, false),
                format!("{}\n", serde_json::to_string_pretty(&whole).unwrap()),
                "{n} items"
            );
            let yaml: Value = serde_norway::from_str(&streamed(part, true)).unwrap();
            assert_eq!(yaml, whole, "{n} items as YAML");
        }
    }
}
