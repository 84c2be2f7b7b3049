//! Large run-history files for the parser measurement, generated from the engine samples kept
//! with the agent's tests (`agent/tests/data/run-history/`) by repeating their elements:
//! - errors-heavy: the export sample's `<export-error>` (long .NET stack trace) repeated inside
//!   its `<synchronization-errors>`;
//! - node-heavy: the delta-import sample's `<step-details>` (hundreds of small counter
//!   elements) repeated inside its `<run-details>`, each copy with its own `step-number`
//!   (highest first, as the engine lists them).

use std::io::Write;
use std::path::Path;

use super::error::{BenchError, Result};

const EXPORT_ERRORS: &str = include_str!(
    "../../../agent/tests/data/run-history/HiltonGiesenow_PoShMon_Test-SPUPSSyncHealth.Tests_MOSS_EXPORT_completed-export-errors.xml"
);
const DELTA_IMPORT: &str = include_str!(
    "../../../agent/tests/data/run-history/HiltonGiesenow_PoShMon_Test-SPUPSSyncHealth.Tests_DS_DELTAIMPORT_stopped-connectivity.xml"
);

/// The two file shapes.
#[derive(Debug, Clone, Copy)]
pub enum Shape {
    ErrorsHeavy,
    NodeHeavy,
}

impl Shape {
    pub fn name(self) -> &'static str {
        match self {
            Shape::ErrorsHeavy => "errors-heavy",
            Shape::NodeHeavy => "node-heavy",
        }
    }
}

/// `text` split around the first `<tag ...>...</tag>` element: (before, element, after).
fn split_element<'a>(text: &'a str, tag: &str) -> Result<(&'a str, &'a str, &'a str)> {
    let open = text
        .find(&format!("<{tag} "))
        .or_else(|| text.find(&format!("<{tag}>")))
        .ok_or_else(|| BenchError::Failed(format!("the sample has no <{tag}>")))?;
    let close_tag = format!("</{tag}>");
    let close = text[open..]
        .find(&close_tag)
        .map(|i| open + i + close_tag.len())
        .ok_or_else(|| BenchError::Failed(format!("the sample has no {close_tag}")))?;
    Ok((&text[..open], &text[open..close], &text[close..]))
}

/// Writes a file of about `target_bytes` of shape `shape` to `path`; returns its size.
pub fn generate(shape: Shape, target_bytes: u64, path: &Path) -> Result<u64> {
    let (sample, tag) = match shape {
        Shape::ErrorsHeavy => (EXPORT_ERRORS, "export-error"),
        Shape::NodeHeavy => (DELTA_IMPORT, "step-details"),
    };
    let (before, element, after) = split_element(sample, tag)?;
    let repeat = (target_bytes.saturating_sub((before.len() + after.len()) as u64)
        / element.len() as u64)
        .max(1);
    let file = std::fs::File::create(path)
        .map_err(BenchError::io(format!("cannot create {}", path.display())))?;
    let mut w = std::io::BufWriter::new(file);
    let write_err = BenchError::io(format!("cannot write {}", path.display()));
    // The copies are numbered above the steps left in `after` (the sample's other steps).
    let numbered = element
        .split_once("step-number=\"")
        .and_then(|(head, rest)| {
            let (_, tail) = rest.split_once('"')?;
            Some((head, tail))
        });
    let result = (|| -> std::io::Result<()> {
        w.write_all(before.as_bytes())?;
        for k in 0..repeat {
            match numbered {
                Some((head, tail)) => {
                    write!(w, "{head}step-number=\"{}\"{tail}", repeat - k + 1)?;
                }
                None => w.write_all(element.as_bytes())?,
            }
            w.write_all(b"\n")?;
        }
        w.write_all(after.as_bytes())?;
        w.flush()
    })();
    result.map_err(write_err)?;
    let meta = std::fs::metadata(path)
        .map_err(BenchError::io(format!("cannot read {}", path.display())))?;
    Ok(meta.len())
}
