//! The results: a table with the budget beside each figure, and the same as JSON.

use serde::Serialize;
use serde_json::{Value, json};

/// One measured figure.
#[derive(Debug, Clone, Serialize)]
pub struct Figure {
    /// Stable key for tools (`schedule.lateness_p99_ms`, ...).
    pub key: String,
    /// What was measured, in words.
    pub metric: String,
    /// The measured value; `None` when it could not be measured (see `note`).
    pub value: Option<f64>,
    pub unit: String,
    /// The budget in words, empty when the figure has none.
    pub budget: String,
    /// Whether the value is within the budget (`None`: no budget, or not measured).
    pub within_budget: Option<bool>,
    /// How it was measured, or why it is missing.
    pub note: String,
}

/// A budget: at most or at least a value.
#[derive(Debug, Clone, Copy)]
pub enum Budget {
    None,
    AtMost(f64),
    AtLeast(f64),
}

/// All figures of one `fleet-bench` invocation, plus context.
#[derive(Debug, Default)]
pub struct Report {
    pub figures: Vec<Figure>,
    /// Correctness checks (counts that must match), by name.
    pub checks: Vec<(String, Value)>,
    pub context: Vec<(String, Value)>,
}

impl Report {
    pub fn add(
        &mut self,
        key: &str,
        metric: &str,
        value: Option<f64>,
        unit: &str,
        budget: Budget,
        note: impl Into<String>,
    ) {
        let (text, within) = match budget {
            Budget::None => (String::new(), None),
            Budget::AtMost(b) => (format!("≤ {} {unit}", fmt_num(b)), value.map(|v| v <= b)),
            Budget::AtLeast(b) => (format!("≥ {} {unit}", fmt_num(b)), value.map(|v| v >= b)),
        };
        self.figures.push(Figure {
            key: key.into(),
            metric: metric.into(),
            value,
            unit: unit.into(),
            budget: text,
            within_budget: within,
            note: note.into(),
        });
    }

    pub fn check(&mut self, name: &str, value: Value) {
        self.checks.push((name.into(), value));
    }

    pub fn context(&mut self, name: &str, value: Value) {
        self.context.push((name.into(), value));
    }

    /// The table: metric | measured | budget | within budget?
    pub fn table(&self) -> String {
        let rows: Vec<[String; 4]> = self
            .figures
            .iter()
            .map(|f| {
                [
                    f.metric.clone(),
                    f.value.map_or_else(
                        || format!("— ({})", f.note),
                        |v| format!("{} {}", fmt_num(v), f.unit),
                    ),
                    f.budget.clone(),
                    match f.within_budget {
                        Some(true) => "yes".into(),
                        Some(false) => "NO".into(),
                        None => String::new(),
                    },
                ]
            })
            .collect();
        let head = ["metric", "measured", "budget", "within budget?"];
        let mut widths = head.map(|h| h.chars().count());
        for r in &rows {
            for (w, c) in widths.iter_mut().zip(r) {
                *w = (*w).max(c.chars().count());
            }
        }
        let line = |cells: [&str; 4]| {
            let mut s = String::from("|");
            for (c, w) in cells.iter().zip(widths) {
                s.push_str(&format!(" {c}{} |", " ".repeat(w - c.chars().count())));
            }
            s.push('\n');
            s
        };
        let mut out = line(head);
        out.push('|');
        for w in widths {
            out.push_str(&format!("{}|", "-".repeat(w + 2)));
        }
        out.push('\n');
        for r in &rows {
            out.push_str(&line([&r[0], &r[1], &r[2], &r[3]]));
        }
        out
    }

    pub fn json(&self) -> Value {
        let map = |v: &[(String, Value)]| {
            Value::Object(v.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        };
        json!({
            "figures": self.figures,
            "checks": map(&self.checks),
            "context": map(&self.context),
        })
    }
}

/// A number for people: integers without decimals, others with up to 3 significant decimals.
pub fn fmt_num(v: f64) -> String {
    if (v.fract() == 0.0 && v.abs() < 1e15) || v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}
