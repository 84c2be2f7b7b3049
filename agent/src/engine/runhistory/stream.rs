//! The streaming half of the run-history parser: one pass of a pull parser (`quick-xml`) over
//! the input, no DOM.
//!
//! # Why streaming
//!
//! Run-history XML of a large run is tens of megabytes (5,000 errors with .NET stack traces, or
//! hundreds of thousands of small elements). A DOM costs several times the input in memory and
//! most of the parse time for the small-element shape; this parser keeps only the input, the
//! values it returns and one small frame per open element.
//!
//! # Same results as a tree walk
//!
//! The results are those of walking the document tree along fixed paths (the contract in the
//! parent module), reproduced event by event:
//!
//! - "the first child named X": a field is taken from the first matching element only; later
//!   ones are skipped (their subtrees are not read);
//! - "the text of an element": the concatenation of its direct text, CDATA and entity or
//!   character references, not that of nested elements, with line ends normalised (`\r\n` and
//!   `\r` become `\n`) as an XML parser must; attribute values are normalised the XML way too;
//! - errors: a document that is not well-formed is [`ParseError::Malformed`] even when a
//!   semantic error (a missing element, a bad counter) comes earlier in the text, so the parser
//!   keeps reading to the end after it found a semantic error; among semantic errors the one
//!   reported is the one a tree walk meets first (run fields before steps, within a step the
//!   step number, dates, result, connection, counters, outbound counters in that order).
//!
//! # Safety
//!
//! `<!DOCTYPE` is refused as soon as it is read ([`ParseError::DtdRefused`]), so no entity can
//! be declared; references resolve only to the five predefined entities and to character
//! references (anything else is malformed). Input characters outside XML's `Char` production
//! are refused. The [`MAX_NODES`] limit is kept (same counting as a DOM: elements, text runs,
//! comments and processing instructions, plus the document) although memory no longer grows
//! with it. Deep nesting costs one byte per level on the frame stack (and the element name on
//! the reader's stack of open names), no recursion.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use quick_xml::XmlVersion;
use quick_xml::escape::resolve_xml_entity;
use quick_xml::events::{BytesRef, BytesStart, Event};
use quick_xml::reader::Reader;

use super::{
    ErrorSummary, Incident, MAX_ERRORS_KEPT, MAX_NODES, ParseError, RunDetails, StepDetails,
    SyncErrorInfo, literal, parse_engine_timestamp, parse_uint, snippet,
};

/// What an open element is to the parser. One per open element, on a stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Frame {
    /// Not on any path the parser reads: its whole subtree is skipped.
    Ignore,
    /// `<execution-histories>` root.
    Histories,
    /// `<run-history>`.
    History,
    /// `<run-details>`.
    Run,
    /// `<step-details>`.
    Step,
    /// The step's first `<step-description>`.
    Description,
    /// The description's first `<step-type>`.
    StepType,
    /// The step's first `<ma-connection>`.
    Connection,
    /// A `<connection-log>` of that connection.
    ConnectionLog,
    /// An `<incident>` of a connection log.
    Incident,
    /// The incident's first `<cd-error>`.
    IncidentCd,
    /// A staging, inbound-flow, export or discovery counter block.
    Counters,
    /// An `<outbound-flow-counters>` block.
    Outbound,
    /// The step's first error block of a kind.
    Errors(Block),
    /// One error element whose details are kept.
    Error,
    /// The kept error's first `<cd-error>`.
    ErrorCd,
    /// The kept error's first `<extension-error-info>`.
    ErrorExt,
    /// An element whose direct text is collected into the capture buffer.
    Text(Field),
}

/// The three error blocks of a step, in the order their errors are listed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Block {
    Discovery = 0,
    Sync = 1,
    Retry = 2,
}

/// Where the text of a [`Frame::Text`] element goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    MaId,
    MaName,
    RunNumber,
    Profile,
    SecurityId,
    StartDate,
    EndDate,
    StepResult,
    Subtype,
    Partition,
    ConnectionResult,
    ConnectionServer,
    IncidentResult,
    IncidentDate,
    IncidentServer,
    IncidentCode,
    IncidentLiteral,
    IncidentDetail,
    Counter,
    OutboundCounter,
    ErrorDn,
    ErrorType,
    ErrorCode,
    ErrorLiteral,
    CallStack,
    ExtensionContext,
}

/// Semantic errors of a step, ranked in the order a tree walk checks them; the lowest rank wins,
/// and within one rank the first in document order.
mod rank {
    pub const STEP_NUMBER: u8 = 1;
    pub const START_DATE: u8 = 2;
    pub const END_DATE: u8 = 3;
    pub const STEP_RESULT: u8 = 4;
    pub const INCIDENT_DATE: u8 = 5;
    pub const COUNTERS: u8 = 6;
    pub const OUTBOUND: u8 = 7;
}

#[derive(Default)]
struct RunDraft {
    ma_id: Option<String>,
    ma: Option<String>,
    run_number: Option<String>,
    profile: Option<String>,
    security_id: Option<String>,
    steps: Vec<StepDetails>,
    /// The first step (in document order) that failed.
    step_error: Option<ParseError>,
}

#[derive(Default)]
struct StepDraft {
    number: u32,
    step_id: String,
    error: Option<(u8, ParseError)>,
    start_seen: bool,
    started_at: Option<DateTime<Utc>>,
    end_seen: bool,
    finished_at: Option<DateTime<Utc>>,
    result: Option<String>,
    progress: Option<String>,
    description_seen: bool,
    step_type_seen: bool,
    step_type: String,
    subtypes: Vec<String>,
    partition: Option<String>,
    connection_seen: bool,
    connection_result: Option<String>,
    connection_server: Option<String>,
    incidents: Vec<Incident>,
    counters: BTreeMap<String, u64>,
    outbound: BTreeMap<String, BTreeMap<String, u64>>,
    /// Target MA of the open outbound block; `None` when it has no `ma` attribute.
    outbound_target: Option<String>,
    errors_seen: [bool; 3],
    errors: [Vec<SyncErrorInfo>; 3],
    error_count: u64,
}

impl StepDraft {
    fn fail(&mut self, rank: u8, error: ParseError) {
        if self.error.as_ref().is_none_or(|(r, _)| rank < *r) {
            self.error = Some((rank, error));
        }
    }
}

#[derive(Default)]
struct IncidentDraft {
    result: Option<String>,
    date_seen: bool,
    date: Option<DateTime<Utc>>,
    server: Option<String>,
    cd_seen: bool,
    code: Option<String>,
    literal: Option<String>,
    detail: Option<String>,
}

#[derive(Default)]
struct ErrorDraft {
    kind: &'static str,
    cs_guid: String,
    dn_attribute: Option<String>,
    display_name: Option<String>,
    dn: Option<String>,
    error_type: Option<String>,
    cd_seen: bool,
    code: Option<String>,
    cd_literal: Option<String>,
    ext_seen: bool,
    call_stack: Option<String>,
    extension_context: Option<String>,
}

/// Parse the document body (prolog already stripped).
pub(super) fn parse_body(body: &str) -> Result<Vec<RunDetails>, ParseError> {
    let mut reader = Reader::from_str(body);
    {
        let config = reader.config_mut();
        config.check_end_names = true;
        config.check_comments = true;
        config.allow_unmatched_ends = false;
        config.allow_dangling_amp = false;
        config.expand_empty_elements = false;
        config.trim_text(false);
    }
    let invalid_char_at = first_invalid_char(body);
    let mut p = Parser::default();
    loop {
        let event = reader.read_event().map_err(|e| {
            ParseError::Malformed(format!("{e} (at byte {})", reader.error_position()))
        })?;
        if let Some(at) = invalid_char_at
            && reader.buffer_position() > at as u64
        {
            return Err(ParseError::Malformed(format!(
                "a character that XML does not allow at byte {at}"
            )));
        }
        let is_text = matches!(
            event,
            Event::Text(_) | Event::CData(_) | Event::GeneralRef(_)
        );
        if !is_text {
            p.in_text_run = false;
        }
        match event {
            Event::Start(e) => {
                p.count_node()?;
                let frame = p.start(&e)?;
                p.stack.push(frame);
            }
            Event::Empty(e) => {
                p.count_node()?;
                let frame = p.start(&e)?;
                p.end(frame);
            }
            Event::End(_) => {
                // quick-xml has checked that the name matches the open element.
                if let Some(frame) = p.stack.pop() {
                    p.end(frame);
                }
            }
            Event::Text(t) => {
                p.text_node(|| t.xml10_content(), is_xml_whitespace)?;
            }
            Event::CData(c) => {
                if p.stack.is_empty() {
                    return Err(ParseError::Malformed(
                        "CDATA outside the root element".into(),
                    ));
                }
                p.text_node(|| c.xml10_content(), |_| false)?;
            }
            Event::GeneralRef(r) => {
                if p.stack.is_empty() {
                    return Err(ParseError::Malformed(
                        "entity reference outside the root element".into(),
                    ));
                }
                let resolved = resolve_reference(&r)?;
                p.text_node(|| resolved.into(), |_| false)?;
            }
            Event::Comment(_) | Event::PI(_) => p.count_node()?,
            Event::Decl(_) => {
                return Err(ParseError::Malformed(
                    "an XML declaration is only allowed at the start of the document".into(),
                ));
            }
            Event::DocType(_) => return Err(ParseError::DtdRefused),
            Event::Eof => break,
        }
    }
    if !p.stack.is_empty() {
        return Err(ParseError::Malformed(format!(
            "unexpected end of input: {} element(s) not closed",
            p.stack.len()
        )));
    }
    if !p.root_seen {
        return Err(ParseError::Malformed("no root element".into()));
    }
    match p.failed {
        Some(e) => Err(e),
        None => Ok(p.runs),
    }
}

/// Byte offset of the first character outside XML 1.0's `Char` production: C0 controls other
/// than tab, line feed and carriage return, and U+FFFE / U+FFFF (surrogates cannot occur in a
/// `str`).
fn first_invalid_char(s: &str) -> Option<usize> {
    const fn is_bad_control(b: u8) -> bool {
        b < 0x20 && b != b'\t' && b != b'\n' && b != b'\r'
    }
    let bytes = s.as_bytes();
    // Blocks without an early exit inside, so the check is vectorised; the block that has one
    // is searched again byte by byte.
    let control = bytes.chunks(64).enumerate().find_map(|(n, block)| {
        if block.iter().fold(false, |bad, &b| bad | is_bad_control(b)) {
            block
                .iter()
                .position(|&b| is_bad_control(b))
                .map(|i| n * 64 + i)
        } else {
            None
        }
    });
    let noncharacter = [s.find('\u{FFFE}'), s.find('\u{FFFF}')]
        .into_iter()
        .flatten()
        .min();
    [control, noncharacter].into_iter().flatten().min()
}

fn is_xml_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
}

fn is_xml_whitespace(s: &str) -> bool {
    s.bytes().all(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
}

/// A predefined entity (`&amp;` ...) or a character reference (`&#38;`, `&#x26;`); nothing else
/// exists without a DTD.
fn resolve_reference(r: &BytesRef<'_>) -> Result<String, ParseError> {
    let name: &str = r;
    match r.resolve_char_ref() {
        Ok(Some(c)) if is_xml_char(c) => Ok(c.to_string()),
        Ok(Some(_)) | Err(_) => Err(ParseError::Malformed(format!(
            "invalid character reference &{};",
            snippet(name)
        ))),
        Ok(None) => resolve_xml_entity(name).map(str::to_owned).ok_or_else(|| {
            ParseError::Malformed(format!("unknown entity reference &{};", snippet(name)))
        }),
    }
}

/// An attribute's normalised value, by its exact (unprefixed) name.
fn attribute(e: &BytesStart<'_>, name: &str) -> Result<Option<String>, ParseError> {
    for attr in e.attributes() {
        let attr = attr.map_err(|err| ParseError::Malformed(err.to_string()))?;
        if attr.key.as_ref() == name {
            let value = attr
                .normalized_value_with(XmlVersion::Implicit1_0, 1, resolve_xml_entity)
                .map_err(|err| ParseError::Malformed(err.to_string()))?;
            return Ok(Some(value.into_owned()));
        }
    }
    Ok(None)
}

fn trimmed(s: &str) -> String {
    s.trim().to_owned()
}

/// An optional timestamp's value: empty → `None`, unparsable → error.
fn timestamp(text: &str, element: &'static str) -> Result<Option<DateTime<Utc>>, ParseError> {
    let value = text.trim();
    if value.is_empty() {
        return Ok(None);
    }
    parse_engine_timestamp(value)
        .map(Some)
        .ok_or_else(|| ParseError::BadTimestamp {
            element,
            value: snippet(value),
        })
}

/// Add one counter to a block's map (summing repeated names).
fn add_counter(into: &mut BTreeMap<String, u64>, name: &str, text: &str) -> Result<(), ParseError> {
    let value_text = text.trim();
    let value = parse_uint::<u64>(value_text).ok_or_else(|| ParseError::CounterNotANumber {
        element: snippet(name),
        value: snippet(value_text),
    })?;
    let slot = match into.get_mut(name) {
        Some(slot) => slot,
        None => into.entry(name.to_owned()).or_insert(0),
    };
    *slot = slot
        .checked_add(value)
        .ok_or_else(|| ParseError::CounterOverflow {
            element: snippet(name),
        })?;
    Ok(())
}

#[derive(Default)]
struct Parser {
    stack: Vec<Frame>,
    /// Direct text of the open [`Frame::Text`] element.
    text: String,
    /// Element name of the open counter.
    name: String,
    runs: Vec<RunDetails>,
    /// The semantic error to report once the whole input proved well-formed.
    failed: Option<ParseError>,
    root_seen: bool,
    run: RunDraft,
    step: StepDraft,
    incident: IncidentDraft,
    error: ErrorDraft,
    nodes: u32,
    in_text_run: bool,
}

impl Parser {
    /// One more DOM node (the document node counts as the first).
    fn count_node(&mut self) -> Result<(), ParseError> {
        if self.nodes.saturating_add(1) >= MAX_NODES {
            return Err(ParseError::TooManyNodes { limit: MAX_NODES });
        }
        self.nodes += 1;
        Ok(())
    }

    /// Text, CDATA or a reference: one text node per run of them; collected when the open
    /// element's text is wanted.
    fn text_node<'s>(
        &mut self,
        content: impl FnOnce() -> std::borrow::Cow<'s, str>,
        outside_ok: impl FnOnce(&str) -> bool,
    ) -> Result<(), ParseError> {
        match self.stack.last().copied() {
            None => {
                let text = content();
                if outside_ok(&text) {
                    return Ok(());
                }
                Err(ParseError::Malformed(format!(
                    "text outside the root element: {:?}",
                    snippet(text.trim())
                )))
            }
            Some(top) => {
                if !self.in_text_run {
                    self.count_node()?;
                    self.in_text_run = true;
                }
                if matches!(top, Frame::Text(_)) {
                    self.text.push_str(&content());
                }
                Ok(())
            }
        }
    }

    /// The frame for an element that starts under the current top of the stack.
    fn start(&mut self, e: &BytesStart<'_>) -> Result<Frame, ParseError> {
        let Some(&parent) = self.stack.last() else {
            if self.root_seen {
                return Err(ParseError::Malformed("more than one root element".into()));
            }
            self.root_seen = true;
            let local = e.local_name();
            return Ok(match local.as_ref() {
                "run-history" => Frame::History,
                "execution-histories" => Frame::Histories,
                other => {
                    self.failed = Some(ParseError::UnexpectedRoot(snippet(other)));
                    Frame::Ignore
                }
            });
        };
        if parent == Frame::Ignore || matches!(parent, Frame::Text(_)) || self.failed.is_some() {
            return Ok(Frame::Ignore);
        }
        let local = e.local_name();
        let name = local.as_ref();
        let frame = match parent {
            Frame::Histories => match name {
                "run-history" => Frame::History,
                _ => Frame::Ignore,
            },
            Frame::History => match name {
                "run-details" => {
                    self.run = RunDraft::default();
                    Frame::Run
                }
                _ => Frame::Ignore,
            },
            Frame::Run => match name {
                "ma-id" => first_text(self.run.ma_id.is_none(), Field::MaId),
                "ma-name" => first_text(self.run.ma.is_none(), Field::MaName),
                "run-number" => first_text(self.run.run_number.is_none(), Field::RunNumber),
                "run-profile-name" => first_text(self.run.profile.is_none(), Field::Profile),
                "security-id" => first_text(self.run.security_id.is_none(), Field::SecurityId),
                "step-details" => {
                    self.start_step(e)?;
                    Frame::Step
                }
                _ => Frame::Ignore,
            },
            Frame::Step => self.start_in_step(e, name)?,
            Frame::Description => match name {
                "step-type" if !self.step.step_type_seen => {
                    self.step.step_type_seen = true;
                    self.step.step_type = attribute(e, "type")?
                        .map(|t| trimmed(&t))
                        .unwrap_or_default();
                    Frame::StepType
                }
                "partition" => first_text(self.step.partition.is_none(), Field::Partition),
                _ => Frame::Ignore,
            },
            Frame::StepType if name.ends_with("-subtype") => Frame::Text(Field::Subtype),
            Frame::Connection => match name {
                "connection-result" => first_text(
                    self.step.connection_result.is_none(),
                    Field::ConnectionResult,
                ),
                "server" => first_text(
                    self.step.connection_server.is_none(),
                    Field::ConnectionServer,
                ),
                "connection-log" => Frame::ConnectionLog,
                _ => Frame::Ignore,
            },
            Frame::ConnectionLog => match name {
                "incident" => {
                    self.incident = IncidentDraft::default();
                    Frame::Incident
                }
                _ => Frame::Ignore,
            },
            Frame::Incident => match name {
                "connection-result" => {
                    first_text(self.incident.result.is_none(), Field::IncidentResult)
                }
                "date" if !self.incident.date_seen => {
                    self.incident.date_seen = true;
                    self.capture(Field::IncidentDate)
                }
                "server" => first_text(self.incident.server.is_none(), Field::IncidentServer),
                "cd-error" if !self.incident.cd_seen => {
                    self.incident.cd_seen = true;
                    Frame::IncidentCd
                }
                _ => Frame::Ignore,
            },
            Frame::IncidentCd => match name {
                "error-code" => first_text(self.incident.code.is_none(), Field::IncidentCode),
                "error-literal" => {
                    first_text(self.incident.literal.is_none(), Field::IncidentLiteral)
                }
                "server-error-detail" => {
                    first_text(self.incident.detail.is_none(), Field::IncidentDetail)
                }
                _ => Frame::Ignore,
            },
            Frame::Counters => {
                self.name.clear();
                self.name.push_str(name);
                Frame::Text(Field::Counter)
            }
            Frame::Outbound => {
                self.name.clear();
                self.name.push_str(name);
                Frame::Text(Field::OutboundCounter)
            }
            Frame::Errors(block) => {
                let kind = match (block, name) {
                    (Block::Discovery, "ma-object-error") => "discovery",
                    (Block::Sync, "import-error") => "import",
                    (Block::Sync, "export-error") => "export",
                    (Block::Retry, "retry-error") => "mv-retry",
                    _ => return Ok(Frame::Ignore),
                };
                self.step.error_count = self.step.error_count.saturating_add(1);
                if self.step.errors[block as usize].len() >= MAX_ERRORS_KEPT {
                    return Ok(Frame::Ignore);
                }
                self.error = ErrorDraft {
                    kind,
                    cs_guid: attribute(e, "cs-guid")?
                        .map(|g| trimmed(&g))
                        .unwrap_or_default(),
                    dn_attribute: attribute(e, "dn")?,
                    display_name: attribute(e, "displayName")?,
                    ..ErrorDraft::default()
                };
                Frame::Error
            }
            Frame::Error => match name {
                "dn" => first_text(self.error.dn.is_none(), Field::ErrorDn),
                "error-type" => first_text(self.error.error_type.is_none(), Field::ErrorType),
                "cd-error" if !self.error.cd_seen => {
                    self.error.cd_seen = true;
                    Frame::ErrorCd
                }
                "extension-error-info" if !self.error.ext_seen => {
                    self.error.ext_seen = true;
                    Frame::ErrorExt
                }
                _ => Frame::Ignore,
            },
            Frame::ErrorCd => match name {
                "error-code" => first_text(self.error.code.is_none(), Field::ErrorCode),
                "error-literal" => first_text(self.error.cd_literal.is_none(), Field::ErrorLiteral),
                _ => Frame::Ignore,
            },
            Frame::ErrorExt => match name {
                "call-stack" => first_text(self.error.call_stack.is_none(), Field::CallStack),
                "extension-context" => first_text(
                    self.error.extension_context.is_none(),
                    Field::ExtensionContext,
                ),
                _ => Frame::Ignore,
            },
            Frame::StepType | Frame::Ignore | Frame::Text(_) => Frame::Ignore,
        };
        if let Frame::Text(_) = frame {
            self.text.clear();
        }
        Ok(frame)
    }

    fn capture(&mut self, field: Field) -> Frame {
        Frame::Text(field)
    }

    fn start_step(&mut self, e: &BytesStart<'_>) -> Result<(), ParseError> {
        self.step = StepDraft::default();
        match attribute(e, "step-number")? {
            None => self.step.fail(
                rank::STEP_NUMBER,
                ParseError::MissingAttribute {
                    attribute: "step-number",
                    element: "step-details",
                },
            ),
            Some(text) => match parse_uint::<u32>(text.trim()) {
                Some(n) => self.step.number = n,
                None => self.step.fail(
                    rank::STEP_NUMBER,
                    ParseError::BadNumber {
                        field: "step-number attribute",
                        value: snippet(&text),
                    },
                ),
            },
        }
        self.step.step_id = attribute(e, "step-id")?
            .map(|s| trimmed(&s))
            .unwrap_or_default();
        Ok(())
    }

    fn start_in_step(&mut self, e: &BytesStart<'_>, name: &str) -> Result<Frame, ParseError> {
        let s = &mut self.step;
        Ok(match name {
            "start-date" if !s.start_seen => {
                s.start_seen = true;
                Frame::Text(Field::StartDate)
            }
            "end-date" if !s.end_seen => {
                s.end_seen = true;
                Frame::Text(Field::EndDate)
            }
            "step-result" if s.result.is_none() => {
                s.progress = attribute(e, "progress")?.map(|p| trimmed(&p));
                Frame::Text(Field::StepResult)
            }
            "step-description" if !s.description_seen => {
                s.description_seen = true;
                Frame::Description
            }
            "ma-connection" if !s.connection_seen => {
                s.connection_seen = true;
                Frame::Connection
            }
            "staging-counters"
            | "inbound-flow-counters"
            | "export-counters"
            | "ma-discovery-counters" => Frame::Counters,
            "outbound-flow-counters" => {
                match attribute(e, "ma")? {
                    Some(target) => {
                        let target = trimmed(&target);
                        s.outbound.entry(target.clone()).or_default();
                        s.outbound_target = Some(target);
                    }
                    None => {
                        s.outbound_target = None;
                        s.fail(
                            rank::OUTBOUND,
                            ParseError::MissingAttribute {
                                attribute: "ma",
                                element: "outbound-flow-counters",
                            },
                        );
                    }
                }
                Frame::Outbound
            }
            "ma-discovery-errors" => error_block(s, Block::Discovery),
            "synchronization-errors" => error_block(s, Block::Sync),
            "mv-retry-errors" => error_block(s, Block::Retry),
            _ => Frame::Ignore,
        })
    }

    /// An element closes: hand its collected text or draft to its parent.
    fn end(&mut self, frame: Frame) {
        match frame {
            Frame::Text(field) => {
                let text = std::mem::take(&mut self.text);
                self.end_text(field, &text);
                // Keep the buffer's capacity for the next element.
                self.text = text;
                self.text.clear();
            }
            Frame::Run => self.end_run(),
            Frame::Step => self.end_step(),
            Frame::Incident => {
                let i = std::mem::take(&mut self.incident);
                self.step.incidents.push(Incident {
                    connection_result: i.result.unwrap_or_default(),
                    date: i.date,
                    server: i.server.unwrap_or_default(),
                    error_code: i.code,
                    error_literal: i.literal,
                    server_error_detail: i.detail,
                });
            }
            Frame::Error => self.end_error(),
            _ => {}
        }
    }

    fn end_text(&mut self, field: Field, text: &str) {
        let s = &mut self.step;
        match field {
            Field::MaId => self.run.ma_id = Some(trimmed(text)),
            Field::MaName => self.run.ma = Some(trimmed(text)),
            Field::RunNumber => self.run.run_number = Some(trimmed(text)),
            Field::Profile => self.run.profile = Some(trimmed(text)),
            Field::SecurityId => self.run.security_id = Some(trimmed(text)),
            Field::StartDate => match timestamp(text, "start-date") {
                Ok(t) => s.started_at = t,
                Err(e) => s.fail(rank::START_DATE, e),
            },
            Field::EndDate => match timestamp(text, "end-date") {
                Ok(t) => s.finished_at = t,
                Err(e) => s.fail(rank::END_DATE, e),
            },
            Field::StepResult => s.result = Some(trimmed(text)),
            Field::Subtype => {
                let t = text.trim();
                if !t.is_empty() {
                    s.subtypes.push(t.to_owned());
                }
            }
            Field::Partition => s.partition = Some(trimmed(text)),
            Field::ConnectionResult => s.connection_result = Some(trimmed(text)),
            Field::ConnectionServer => s.connection_server = Some(trimmed(text)),
            Field::IncidentResult => self.incident.result = Some(trimmed(text)),
            Field::IncidentDate => match timestamp(text, "date") {
                Ok(t) => self.incident.date = t,
                Err(e) => s.fail(rank::INCIDENT_DATE, e),
            },
            Field::IncidentServer => self.incident.server = Some(trimmed(text)),
            Field::IncidentCode => self.incident.code = Some(trimmed(text)),
            Field::IncidentLiteral => self.incident.literal = Some(literal(text)),
            Field::IncidentDetail => self.incident.detail = Some(literal(text)),
            Field::Counter => {
                if let Err(e) = add_counter(&mut s.counters, &self.name, text) {
                    s.fail(rank::COUNTERS, e);
                }
            }
            Field::OutboundCounter => {
                if let Some(target) = &s.outbound_target {
                    let into = s.outbound.entry(target.clone()).or_default();
                    if let Err(e) = add_counter(into, &self.name, text) {
                        s.fail(rank::OUTBOUND, e);
                    }
                }
            }
            Field::ErrorDn => self.error.dn = Some(trimmed(text)),
            Field::ErrorType => self.error.error_type = Some(trimmed(text)),
            Field::ErrorCode => self.error.code = Some(trimmed(text)),
            Field::ErrorLiteral => self.error.cd_literal = Some(text.to_owned()),
            Field::CallStack => self.error.call_stack = Some(text.to_owned()),
            Field::ExtensionContext => self.error.extension_context = Some(text.to_owned()),
        }
    }

    fn end_error(&mut self) {
        let d = std::mem::take(&mut self.error);
        let block = match d.kind {
            "discovery" => Block::Discovery,
            "mv-retry" => Block::Retry,
            _ => Block::Sync,
        };
        // `cd-error/error-literal`, else a non-blank `call-stack`, else `extension-context`.
        let error_literal = d
            .cd_literal
            .or_else(|| d.call_stack.filter(|s| !s.trim().is_empty()))
            .or(d.extension_context)
            .map(|l| literal(&l));
        self.step.errors[block as usize].push(SyncErrorInfo {
            kind: d.kind.to_owned(),
            cs_guid: d.cs_guid,
            dn: d
                .dn_attribute
                .or(d.dn)
                .or(d.display_name)
                .unwrap_or_default(),
            error_type: d.error_type.unwrap_or_default(),
            error_code: d.code,
            error_literal,
        });
    }

    fn end_step(&mut self) {
        let mut s = std::mem::take(&mut self.step);
        if s.result.is_none() {
            s.fail(
                rank::STEP_RESULT,
                ParseError::MissingElement {
                    element: "step-result",
                    parent: "step-details",
                },
            );
        }
        if let Some((_, e)) = s.error {
            if self.run.step_error.is_none() {
                self.run.step_error = Some(e);
            }
            return;
        }
        if self.run.step_error.is_some() {
            return;
        }
        let [discovery, sync, retry] = s.errors;
        let mut first = discovery;
        first.extend(sync);
        first.extend(retry);
        first.truncate(MAX_ERRORS_KEPT);
        self.run.steps.push(StepDetails {
            step_number: s.number,
            step_id: s.step_id,
            step_type: s.step_type,
            subtype: s.subtypes.join(", "),
            partition: s.partition.unwrap_or_default(),
            started_at: s.started_at,
            finished_at: s.finished_at,
            result: s.result.unwrap_or_default(),
            progress: s.progress,
            connection_result: s.connection_result,
            connection_server: s.connection_server,
            connection_incidents: s.incidents,
            counters: s.counters,
            outbound: s.outbound,
            errors: ErrorSummary {
                count: s.error_count,
                first,
            },
        });
    }

    fn end_run(&mut self) {
        let r = std::mem::take(&mut self.run);
        match finish_run(r) {
            Ok(run) => self.runs.push(run),
            Err(e) => self.failed = Some(e),
        }
    }
}

fn first_text(first: bool, field: Field) -> Frame {
    if first {
        Frame::Text(field)
    } else {
        Frame::Ignore
    }
}

fn error_block(s: &mut StepDraft, block: Block) -> Frame {
    if s.errors_seen[block as usize] {
        return Frame::Ignore;
    }
    s.errors_seen[block as usize] = true;
    Frame::Errors(block)
}

/// Checks in the order of the run's contract: its own fields, then its steps, then duplicate
/// step numbers.
fn finish_run(r: RunDraft) -> Result<RunDetails, ParseError> {
    const PARENT: &str = "run-details";
    let missing = |element| ParseError::MissingElement {
        element,
        parent: PARENT,
    };
    let ma_id = r.ma_id.ok_or_else(|| missing("ma-id"))?;
    let ma = r.ma.ok_or_else(|| missing("ma-name"))?;
    let run_number_text = r.run_number.ok_or_else(|| missing("run-number"))?;
    let run_number = parse_uint::<u64>(&run_number_text).ok_or_else(|| ParseError::BadNumber {
        field: "<run-number>",
        value: snippet(&run_number_text),
    })?;
    let profile = r.profile.ok_or_else(|| missing("run-profile-name"))?;
    if let Some(e) = r.step_error {
        return Err(e);
    }
    let mut steps = r.steps;
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
        security_id: r.security_id.unwrap_or_default(),
        steps,
    })
}
