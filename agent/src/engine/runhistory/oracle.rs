//! The previous run-history parser, on roxmltree's DOM: kept only as the oracle the streaming
//! parser is compared with (`runhistory::tests`).

#![allow(clippy::unwrap_used, reason = "test-only code")]

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use roxmltree::Node;

use super::*;

impl ParseError {
    pub(super) fn from_xml(e: roxmltree::Error) -> Self {
        match e {
            roxmltree::Error::NodesLimitReached => ParseError::TooManyNodes { limit: MAX_NODES },
            roxmltree::Error::DtdDetected => ParseError::DtdRefused,
            other => ParseError::Malformed(other.to_string()),
        }
    }
}

/// The DOM parse of [`super::parse`], same limits.
pub(super) fn parse(xml: &str) -> Result<Vec<RunDetails>, ParseError> {
    if xml.len() > MAX_INPUT_BYTES {
        return Err(ParseError::TooLarge {
            bytes: xml.len(),
            limit: MAX_INPUT_BYTES,
        });
    }
    let body = strip_prolog(xml);
    let options = roxmltree::ParsingOptions {
        // Explicit although it is the default: DTDs are how entity-expansion attacks start.
        allow_dtd: false,
        nodes_limit: MAX_NODES,
        ..roxmltree::ParsingOptions::default()
    };
    let doc =
        roxmltree::Document::parse_with_options(body, options).map_err(ParseError::from_xml)?;
    let root = doc.root_element();
    let mut runs = Vec::new();
    match root.tag_name().name() {
        "run-history" => parse_history(root, &mut runs)?,
        "execution-histories" => {
            for history in elements(root, "run-history") {
                parse_history(history, &mut runs)?;
            }
        }
        other => return Err(ParseError::UnexpectedRoot(snippet(other))),
    }
    Ok(runs)
}

fn parse_history(history: Node<'_, '_>, runs: &mut Vec<RunDetails>) -> Result<(), ParseError> {
    for rd in elements(history, "run-details") {
        runs.push(parse_run(rd)?);
    }
    Ok(())
}

fn parse_run(rd: Node<'_, '_>) -> Result<RunDetails, ParseError> {
    const PARENT: &str = "run-details";
    let ma_id = required_text(rd, "ma-id", PARENT)?;
    let ma = required_text(rd, "ma-name", PARENT)?;
    let run_number_text = required_text(rd, "run-number", PARENT)?;
    let run_number = parse_uint::<u64>(&run_number_text).ok_or_else(|| ParseError::BadNumber {
        field: "<run-number>",
        value: snippet(&run_number_text),
    })?;
    let profile = required_text(rd, "run-profile-name", PARENT)?;
    let security_id = child(rd, "security-id")
        .map(trimmed_text)
        .unwrap_or_default();

    let mut steps = elements(rd, "step-details")
        .map(parse_step)
        .collect::<Result<Vec<_>, _>>()?;
    steps.sort_by_key(|s| s.step_number);
    if let Some(w) = steps
        .windows(2)
        .find(|w| w[0].step_number == w[1].step_number)
    {
        return Err(ParseError::DuplicateStep {
            run_number,
            step_number: w[0].step_number,
        });
    }
    Ok(RunDetails {
        ma_id,
        ma,
        run_number,
        profile,
        security_id,
        steps,
    })
}

fn parse_step(sd: Node<'_, '_>) -> Result<StepDetails, ParseError> {
    const PARENT: &str = "step-details";
    let step_number_text = sd
        .attribute("step-number")
        .ok_or(ParseError::MissingAttribute {
            attribute: "step-number",
            element: PARENT,
        })?;
    let step_number =
        parse_uint::<u32>(step_number_text.trim()).ok_or_else(|| ParseError::BadNumber {
            field: "step-number attribute",
            value: snippet(step_number_text),
        })?;
    let step_id = sd
        .attribute("step-id")
        .unwrap_or_default()
        .trim()
        .to_owned();

    let started_at = optional_timestamp(sd, "start-date")?;
    let finished_at = optional_timestamp(sd, "end-date")?;
    let result_node = child(sd, "step-result").ok_or(ParseError::MissingElement {
        element: "step-result",
        parent: PARENT,
    })?;
    let result = trimmed_text(result_node);
    let progress = result_node
        .attribute("progress")
        .map(|p| p.trim().to_owned());

    let (step_type, subtype, partition) = match child(sd, "step-description") {
        Some(desc) => describe(desc),
        None => Default::default(),
    };

    let (connection_result, connection_server, connection_incidents) =
        match child(sd, "ma-connection") {
            Some(conn) => connection(conn)?,
            None => (None, None, Vec::new()),
        };

    let mut counters = BTreeMap::new();
    for block in sd.children().filter(|n| {
        n.is_element()
            && matches!(
                n.tag_name().name(),
                "staging-counters"
                    | "inbound-flow-counters"
                    | "export-counters"
                    | "ma-discovery-counters"
            )
    }) {
        read_counters(block, &mut counters)?;
    }

    let mut outbound: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    for block in elements(sd, "outbound-flow-counters") {
        let target = block
            .attribute("ma")
            .ok_or(ParseError::MissingAttribute {
                attribute: "ma",
                element: "outbound-flow-counters",
            })?
            .trim()
            .to_owned();
        read_counters(block, outbound.entry(target).or_default())?;
    }

    let mut errors = ErrorSummary::default();
    if let Some(block) = child(sd, "ma-discovery-errors") {
        collect_errors(block, &[("ma-object-error", "discovery")], &mut errors);
    }
    if let Some(block) = child(sd, "synchronization-errors") {
        collect_errors(
            block,
            &[("import-error", "import"), ("export-error", "export")],
            &mut errors,
        );
    }
    if let Some(block) = child(sd, "mv-retry-errors") {
        collect_errors(block, &[("retry-error", "mv-retry")], &mut errors);
    }

    Ok(StepDetails {
        step_number,
        step_id,
        step_type,
        subtype,
        partition,
        started_at,
        finished_at,
        result,
        progress,
        connection_result,
        connection_server,
        connection_incidents,
        counters,
        outbound,
        errors,
    })
}

/// `(step_type, subtype, partition)` of a `step-description`.
fn describe(desc: Node<'_, '_>) -> (String, String, String) {
    let (step_type, subtype) = match child(desc, "step-type") {
        Some(st) => {
            let ty = st.attribute("type").unwrap_or_default().trim().to_owned();
            let subtypes: Vec<String> = st
                .children()
                .filter(|n| n.is_element() && n.tag_name().name().ends_with("-subtype"))
                .map(trimmed_text)
                .filter(|s| !s.is_empty())
                .collect();
            (ty, subtypes.join(", "))
        }
        None => (String::new(), String::new()),
    };
    let partition = child(desc, "partition")
        .map(trimmed_text)
        .unwrap_or_default();
    (step_type, subtype, partition)
}

type Connection = (Option<String>, Option<String>, Vec<Incident>);

fn connection(conn: Node<'_, '_>) -> Result<Connection, ParseError> {
    let result = child(conn, "connection-result").map(trimmed_text);
    let server = child(conn, "server").map(trimmed_text);
    let mut incidents = Vec::new();
    for log in elements(conn, "connection-log") {
        for incident in elements(log, "incident") {
            let cd = child(incident, "cd-error");
            incidents.push(Incident {
                connection_result: child(incident, "connection-result")
                    .map(trimmed_text)
                    .unwrap_or_default(),
                date: optional_timestamp(incident, "date")?,
                server: child(incident, "server")
                    .map(trimmed_text)
                    .unwrap_or_default(),
                error_code: cd.and_then(|c| child(c, "error-code")).map(trimmed_text),
                error_literal: cd
                    .and_then(|c| child(c, "error-literal"))
                    .map(|n| literal(&text(n))),
                server_error_detail: cd
                    .and_then(|c| child(c, "server-error-detail"))
                    .map(|n| literal(&text(n))),
            });
        }
    }
    Ok((result, server, incidents))
}

/// Add every element child of a counter block to `into` (summing repeated names: the schema
/// allows several `inbound-flow-counters` blocks and several blocks for one outbound MA).
fn read_counters(block: Node<'_, '_>, into: &mut BTreeMap<String, u64>) -> Result<(), ParseError> {
    for counter in block.children().filter(Node::is_element) {
        let name = counter.tag_name().name();
        let value_text = text(counter);
        let value_text = value_text.trim();
        let value = parse_uint::<u64>(value_text).ok_or_else(|| ParseError::CounterNotANumber {
            element: snippet(name),
            value: snippet(value_text),
        })?;
        let slot = into.entry(name.to_owned()).or_insert(0);
        *slot = slot
            .checked_add(value)
            .ok_or_else(|| ParseError::CounterOverflow {
                element: snippet(name),
            })?;
    }
    Ok(())
}

fn collect_errors(block: Node<'_, '_>, kinds: &[(&str, &str)], summary: &mut ErrorSummary) {
    for node in block.children().filter(Node::is_element) {
        let name = node.tag_name().name();
        let Some((_, kind)) = kinds.iter().find(|(element, _)| *element == name) else {
            continue;
        };
        summary.count = summary.count.saturating_add(1);
        if summary.first.len() >= MAX_ERRORS_KEPT {
            continue;
        }
        let cd = child(node, "cd-error");
        let ext = child(node, "extension-error-info");
        let dn = node
            .attribute("dn")
            .map(str::to_owned)
            .or_else(|| child(node, "dn").map(trimmed_text))
            .or_else(|| node.attribute("displayName").map(str::to_owned))
            .unwrap_or_default();
        let error_literal = cd
            .and_then(|c| child(c, "error-literal"))
            .or_else(|| {
                ext.and_then(|e| {
                    child(e, "call-stack")
                        .filter(|n| !text(*n).trim().is_empty())
                        .or_else(|| child(e, "extension-context"))
                })
            })
            .map(|n| literal(&text(n)));
        summary.first.push(SyncErrorInfo {
            kind: (*kind).to_owned(),
            cs_guid: node
                .attribute("cs-guid")
                .unwrap_or_default()
                .trim()
                .to_owned(),
            dn,
            error_type: child(node, "error-type")
                .map(trimmed_text)
                .unwrap_or_default(),
            error_code: cd.and_then(|c| child(c, "error-code")).map(trimmed_text),
            error_literal,
        });
    }
}

/// An optional timestamp child; absent or empty → `None`, unparsable → error.
fn optional_timestamp(
    parent: Node<'_, '_>,
    element: &'static str,
) -> Result<Option<DateTime<Utc>>, ParseError> {
    let Some(node) = child(parent, element) else {
        return Ok(None);
    };
    let value = trimmed_text(node);
    if value.is_empty() {
        return Ok(None);
    }
    parse_engine_timestamp(&value)
        .map(Some)
        .ok_or_else(|| ParseError::BadTimestamp {
            element,
            value: snippet(&value),
        })
}

fn required_text(
    parent: Node<'_, '_>,
    element: &'static str,
    parent_name: &'static str,
) -> Result<String, ParseError> {
    child(parent, element)
        .map(trimmed_text)
        .ok_or(ParseError::MissingElement {
            element,
            parent: parent_name,
        })
}

fn child<'a, 'i>(node: Node<'a, 'i>, name: &str) -> Option<Node<'a, 'i>> {
    node.children()
        .find(|n| n.is_element() && n.tag_name().name() == name)
}

fn elements<'a, 'i: 'a>(
    node: Node<'a, 'i>,
    name: &'a str,
) -> impl Iterator<Item = Node<'a, 'i>> + 'a {
    node.children()
        .filter(move |n| n.is_element() && n.tag_name().name() == name)
}

/// All direct text of an element (text, CDATA and entity references may be split in nodes).
fn text(node: Node<'_, '_>) -> String {
    node.children()
        .filter(Node::is_text)
        .filter_map(|n| n.text())
        .collect()
}

fn trimmed_text(node: Node<'_, '_>) -> String {
    text(node).trim().to_owned()
}

/// The streaming parser against the DOM parser: same runs, or the same error (for malformed
/// input, both malformed).
#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;

    /// Every real run-history sample in `tests/data/run-history`, decoded as a file is.
    fn samples() -> Vec<(String, String)> {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/run-history");
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "xml") {
                let text = decode_bytes(&std::fs::read(&path).unwrap()).unwrap();
                out.push((path.display().to_string(), text));
            }
        }
        out.sort();
        assert!(out.len() >= 2, "samples missing in {}", dir.display());
        out
    }

    /// Same result from both parsers; returns whether it parsed.
    fn same(xml: &str, what: &str) -> bool {
        let old = parse(xml);
        let new = super::super::parse(xml);
        match (&old, &new) {
            (Err(ParseError::Malformed(_)), Err(ParseError::Malformed(_))) => {}
            _ => assert_eq!(new, old, "{what}"),
        }
        old.is_ok()
    }

    #[test]
    fn streaming_parser_matches_the_dom_parser_on_every_sample() {
        for (name, text) in samples() {
            assert!(same(&text, &name), "{name} did not parse");
            // CRLF line ends (the engine writes them on Windows): normalised alike.
            let crlf = text.replace('\n', "\r\n");
            assert!(same(&crlf, &format!("{name} with CRLF")));
            // The engine's UTF-16 file, decoded once.
            let mut utf16 = vec![0xFF, 0xFE];
            utf16.extend(text.encode_utf16().flat_map(u16::to_le_bytes));
            let decoded = decode_bytes(&utf16).unwrap();
            assert!(same(&decoded, &format!("{name} as UTF-16")));
            assert_eq!(
                super::super::parse(&decoded).unwrap(),
                super::super::parse(&text).unwrap()
            );
        }
    }

    /// Edge cases of "first child", direct text, references, CDATA, comments, attribute
    /// normalisation and error precedence.
    #[test]
    fn streaming_parser_matches_the_dom_parser_on_edge_cases() {
        let run = |steps: &str| {
            format!(
                "<run-history><run-details><ma-id> {{A}} </ma-id><ma-id>second</ma-id><ma-name>A&amp;B&#x20;&#67;</ma-name>\
                 <run-number>7</run-number><run-profile-name><![CDATA[Delta <Sync>]]></run-profile-name>\
                 <security-id>C<!-- c -->ON<x>ignored</x>TOSO\\svc<?pi x?></security-id>{steps}</run-details></run-history>"
            )
        };
        let cases = [
            run(""),
            run("<step-details step-number=' 2 ' step-id='\t{S}\n'><step-result progress=\"1/2\">success</step-result>\
                 <step-result>second</step-result><start-date/><end-date>2024-01-01 00:00:00.5</end-date>\
                 <start-date>bad but second</start-date>\
                 <step-description><step-type type='apply-rules'><a-subtype> x </a-subtype><b-subtype/><c-subtype>y<z-subtype>n</z-subtype></c-subtype></step-type>\
                 <step-type type='second'/><partition>p</partition></step-description>\
                 <ma-connection><server>s1</server><server>s2</server><connection-log><incident><date>2024-01-01 00:00:00.000</date>\
                 <cd-error><error-literal>\r\n l1\r\n l2 \r</error-literal></cd-error><cd-error><error-code>no</error-code></cd-error></incident></connection-log>\
                 <connection-log><incident/></connection-log></ma-connection><ma-connection><server>other</server></ma-connection>\
                 <outbound-flow-counters ma='X'/><outbound-flow-counters ma=' Y '><c>1</c><c>2</c></outbound-flow-counters>\
                 <staging-counters><stage-add>1<x>9</x></stage-add><stage-add>2</stage-add></staging-counters><export-counters/>\
                 <synchronization-errors><export-error dn='CN=a,&#10;DC=x ' cs-guid=' g '><dn>child</dn><error-type>t</error-type>\
                 <extension-error-info><call-stack>  </call-stack><extension-context>ctx</extension-context></extension-error-info></export-error>\
                 <import-error displayName='D'><dn> child dn </dn><extension-error-info><call-stack/></extension-error-info></import-error>\
                 <other-error/></synchronization-errors><synchronization-errors><import-error/></synchronization-errors>\
                 <ma-discovery-errors><ma-object-error/></ma-discovery-errors></step-details>\
                 <step-details step-number='1'><step-result/></step-details>"),
            // Error precedence: run fields before steps, dates before counters, ...
            "<run-history><run-details><run-number>x</run-number><step-details/></run-details></run-history>".into(),
            run("<step-details step-number='1'><staging-counters><a>x</a></staging-counters><start-date>bad</start-date><step-result/></step-details>"),
            run("<step-details step-number='1'><outbound-flow-counters/><staging-counters><a>x</a></staging-counters></step-details>"),
            run("<step-details step-number='1'><step-result/></step-details><step-details step-number='q'><step-result/></step-details>"),
            run("<step-details step-number='1'><step-result/></step-details><step-details step-number='1'><step-result/></step-details>"),
            // A semantic error before a well-formedness error: malformed wins.
            format!("{}<", run("<step-details/>")),
            "<run-history><run-details></run-details><run-details><ma-id/></run-details></run-history>".into(),
            "<execution-histories><run-history/><other/><run-history></run-history></execution-histories>".into(),
            "<foo><run-details/></foo>".into(),
            "<foo/><bar/>".into(),
            "<run-history/>text".into(),
            "<run-history>&unknown;</run-history>".into(),
            "<run-history>&#0;</run-history>".into(),
            "<run-history>\u{1}</run-history>".into(),
            "<run-history></run-histor>".into(),
            "<!-- a -- b --><run-history/>".into(),
            " \n<run-history/>\n<!-- trailing -->\n".into(),
        ];
        for (i, xml) in cases.iter().enumerate() {
            same(xml, &format!("case {i}: {xml}"));
        }
    }

    /// Random mutations of the real samples: wherever the DOM parser produced runs, or refused
    /// the input for a reason other than well-formedness, the streaming parser agrees.
    #[test]
    fn streaming_parser_matches_the_dom_parser_on_mutated_samples() {
        let samples: Vec<Vec<u8>> = samples().into_iter().map(|(_, t)| t.into_bytes()).collect();
        let mut rng = StdRng::seed_from_u64(0xD1FF);
        let specials: &[u8] = b"<>/&;\"'=?!-[]x0 \n";
        let mut parsed = 0;
        for i in 0..3000 {
            let mut bytes = samples[i % samples.len()].clone();
            for _ in 0..rng.random_range(1..=3) {
                let at = rng.random_range(0..bytes.len());
                match rng.random_range(0..3) {
                    0 => bytes[at] = specials[rng.random_range(0..specials.len())],
                    1 => {
                        let to = rng.random_range(at..=bytes.len().min(at + 40));
                        bytes.drain(at..to);
                    }
                    _ => {
                        let to = rng.random_range(at..=bytes.len().min(at + 80));
                        let chunk = bytes[at..to].to_vec();
                        bytes.splice(to..to, chunk);
                    }
                }
            }
            let xml = String::from_utf8_lossy(&bytes);
            let old = parse(&xml);
            let new = super::super::parse(&xml);
            match &old {
                Err(ParseError::Malformed(_)) => {}
                _ => {
                    parsed += usize::from(old.is_ok());
                    assert_eq!(new, old, "mutation {i}: {xml}");
                }
            }
        }
        assert!(parsed > 100, "only {parsed} mutations parsed");
    }
}
