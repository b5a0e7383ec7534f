//! YAML text to a JSON value plus a map of source locations.
//!
//! Serde deserialization stops at the first problem and forgets where values came from. To
//! report every problem of a Cluster file at once, each with `file:line:column`, the document
//! is first turned into a [`serde_json::Value`] while recording where each value (and each
//! mapping key) starts, keyed by JSON pointer. Validation then works on the value and looks
//! locations up by pointer.
//!
//! Scalars are resolved with the YAML 1.2 core schema (`yes`/`no` stay strings). Duplicate
//! keys are reported (the first one wins), alias expansion is bounded, and only one document
//! is accepted.

use std::collections::HashMap;

use saphyr_parser::{Event, Parser, ScalarStyle, Span};
use serde_json::{Map, Number, Value};

use crate::diagnostic::{Diagnostic, Location};

/// Upper bound on values produced, aliases expanded included ("billion laughs" guard).
const MAX_NODES: usize = 100_000;
/// Upper bound on the bytes of scalars and keys produced, aliases expanded included (a few
/// aliases of one long scalar are as bad as many aliases of small ones).
const MAX_BYTES: usize = 8 << 20;
/// Upper bound on one value's JSON pointer (its ancestors' keys joined): keys are short.
const MAX_POINTER: usize = 16 << 10;
/// Upper bound on all recorded pointers together (locations are kept per pointer).
const MAX_POINTER_BYTES: usize = 32 << 20;
/// Upper bound on nesting depth.
const MAX_DEPTH: usize = 64;

/// A parsed YAML document with source locations.
#[derive(Debug, Clone, Default)]
pub struct LocatedValue {
    pub value: Value,
    /// Where each value starts, by JSON pointer ("" is the root).
    values: HashMap<String, Location>,
    /// Where each mapping key starts, by the JSON pointer of its value.
    keys: HashMap<String, Location>,
}

impl LocatedValue {
    /// Location of the value at `pointer`, or of its nearest ancestor that has one (values
    /// that came from an alias only have the alias's location).
    pub fn location(&self, pointer: &str) -> Option<Location> {
        let mut p = pointer;
        loop {
            if let Some(l) = self.values.get(p) {
                return Some(*l);
            }
            match p.rfind('/') {
                Some(i) => p = &p[..i],
                None => return None,
            }
        }
    }

    /// Where to point for `pointer`: its value if written in the file, otherwise the key of
    /// its nearest written ancestor (a defaulted field points at the section it belongs to).
    pub fn best_location(&self, pointer: &str) -> Option<Location> {
        if let Some(l) = self.values.get(pointer) {
            return Some(*l);
        }
        let mut p = pointer;
        while let Some(i) = p.rfind('/') {
            p = &p[..i];
            if self.values.contains_key(p) {
                return self.key_location(p);
            }
        }
        None
    }

    /// Location of the key whose value is at `pointer` (falls back to the value's location).
    pub fn key_location(&self, pointer: &str) -> Option<Location> {
        self.keys
            .get(pointer)
            .copied()
            .or_else(|| self.location(pointer))
    }
}

/// Escapes one JSON pointer segment (RFC 6901).
pub fn pointer_segment(s: &str) -> String {
    s.replace('~', "~0").replace('/', "~1")
}

enum Frame {
    Seq {
        items: Vec<Value>,
        anchor: usize,
    },
    Map {
        map: Map<String, Value>,
        anchor: usize,
        /// The key read and waiting for its value: (key, pointer of the value).
        pending: Option<String>,
        /// Set while the key being read is itself a collection (unsupported).
        complex_key_depth: usize,
    },
}

struct Builder {
    stack: Vec<Frame>,
    /// JSON pointer of the value about to be produced at each depth.
    path: Vec<String>,
    anchors: HashMap<usize, Value>,
    out: LocatedValue,
    diagnostics: Vec<Diagnostic>,
    nodes: usize,
    /// Scalar and key bytes produced so far.
    bytes: usize,
    /// Bytes of the pointers recorded in `out`.
    pointer_bytes: usize,
    root: Option<Value>,
}

fn loc(span: &Span) -> Location {
    Location {
        line: span.start.line(),
        column: span.start.col() + 1,
    }
}

fn count_nodes(v: &Value) -> usize {
    match v {
        Value::Array(a) => 1 + a.iter().map(count_nodes).sum::<usize>(),
        Value::Object(m) => 1 + m.values().map(count_nodes).sum::<usize>(),
        _ => 1,
    }
}

/// The bytes of the scalars and keys in `v`.
fn count_bytes(v: &Value) -> usize {
    match v {
        Value::Array(a) => a.iter().map(count_bytes).sum(),
        Value::Object(m) => m.iter().map(|(k, v)| k.len() + count_bytes(v)).sum(),
        Value::String(s) => s.len(),
        _ => 8,
    }
}

/// Resolves a plain scalar with the YAML 1.2 core schema.
fn resolve_plain(s: &str) -> Value {
    match s {
        "" | "~" | "null" | "Null" | "NULL" => return Value::Null,
        "true" | "True" | "TRUE" => return Value::Bool(true),
        "false" | "False" | "FALSE" => return Value::Bool(false),
        _ => {}
    }
    let (sign, digits) = match s.strip_prefix('-') {
        Some(rest) => (-1i128, rest),
        None => (1i128, s.strip_prefix('+').unwrap_or(s)),
    };
    let int = if let Some(hex) = s.strip_prefix("0x") {
        i128::from_str_radix(hex, 16).ok()
    } else if let Some(oct) = s.strip_prefix("0o") {
        i128::from_str_radix(oct, 8).ok()
    } else if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        digits.parse::<i128>().ok().map(|n| n * sign)
    } else {
        None
    };
    if let Some(n) = int {
        if let Ok(i) = i64::try_from(n) {
            return Value::Number(i.into());
        }
        if let Ok(u) = u64::try_from(n) {
            return Value::Number(u.into());
        }
        return Value::String(s.to_owned());
    }
    let looks_float = s
        .bytes()
        .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'+' | b'-'))
        && s.bytes().any(|b| b.is_ascii_digit());
    if looks_float
        && let Ok(f) = s.parse::<f64>()
        && let Some(n) = Number::from_f64(f)
    {
        return Value::Number(n);
    }
    Value::String(s.to_owned())
}

impl Builder {
    fn pointer(&self) -> String {
        self.path.concat()
    }

    /// The pointer the next value will have, or None when the next scalar is a key.
    fn next_value_pointer(&self) -> Option<String> {
        match self.stack.last() {
            None => Some(String::new()),
            Some(Frame::Seq { items, .. }) => Some(format!("{}/{}", self.pointer(), items.len())),
            Some(Frame::Map {
                pending: Some(k), ..
            }) => Some(format!("{}/{}", self.pointer(), pointer_segment(k))),
            Some(Frame::Map { pending: None, .. }) => None,
        }
    }

    fn in_complex_key(&self) -> bool {
        self.stack.iter().any(|f| {
            matches!(
                f,
                Frame::Map {
                    complex_key_depth: d,
                    ..
                } if *d > 0
            )
        })
    }

    fn error(&mut self, at: Location, path: String, message: String, hint: &str) {
        self.diagnostics
            .push(Diagnostic::error(path, message).at(at).hint(hint));
    }

    /// Attaches a finished value to its parent.
    fn push_value(&mut self, v: Value, anchor: usize, at: Location) {
        if anchor != 0 {
            self.anchors.insert(anchor, v.clone());
        }
        match self.stack.last_mut() {
            None => {
                if self.root.is_some() {
                    self.error(
                        at,
                        String::new(),
                        "more than one YAML document".into(),
                        "a Cluster file holds exactly one document; remove the extra `---` section",
                    );
                } else {
                    self.root = Some(v);
                }
            }
            Some(Frame::Seq { items, .. }) => items.push(v),
            Some(Frame::Map { map, pending, .. }) => match pending.take() {
                Some(k) => {
                    map.insert(k, v);
                }
                None => {
                    // A scalar in key position: it becomes the pending key.
                    let key = match v {
                        Value::String(s) => s,
                        other => other.to_string(),
                    };
                    let ptr = format!("{}/{}", self.path.concat(), pointer_segment(&key));
                    if let Some(Frame::Map { map, pending, .. }) = self.stack.last_mut() {
                        if map.contains_key(&key) {
                            let first = self.out.keys.get(&ptr).copied();
                            let msg = match first {
                                Some(f) => format!(
                                    "duplicate key `{key}` (first defined at line {})",
                                    f.line
                                ),
                                None => format!("duplicate key `{key}`"),
                            };
                            self.diagnostics.push(
                                Diagnostic::error(json_path(&ptr), msg)
                                    .at(at)
                                    .hint("remove one of the two; only the first is used"),
                            );
                            // Read the value but drop it.
                            *pending = Some(format!("\u{0}dup\u{0}{key}"));
                        } else {
                            *pending = Some(key);
                            self.out.keys.insert(ptr, at);
                        }
                    }
                }
            },
        }
    }

    fn on_event(&mut self, ev: Event<'_>, span: Span) -> Result<(), Diagnostic> {
        let at = loc(&span);
        match ev {
            Event::Scalar(text, style, anchor, _tag) => {
                if self.in_complex_key() {
                    return Ok(());
                }
                self.count(at)?;
                self.count_bytes(text.len(), at)?;
                let v = if style == ScalarStyle::Plain {
                    resolve_plain(&text)
                } else {
                    Value::String(text.into_owned())
                };
                if let Some(p) = self.next_value_pointer() {
                    self.record(p, at)?;
                }
                self.push_value(v, anchor, at);
            }
            Event::Alias(id) => {
                if self.in_complex_key() {
                    return Ok(());
                }
                let (nodes, bytes) = self
                    .anchors
                    .get(&id)
                    .map_or((0, 0), |v| (count_nodes(v), count_bytes(v)));
                // Counted before the copy is made.
                self.nodes += nodes;
                self.count(at)?;
                self.count_bytes(bytes, at)?;
                let v = self.anchors.get(&id).cloned().unwrap_or(Value::Null);
                if let Some(p) = self.next_value_pointer() {
                    self.record(p, at)?;
                }
                self.push_value(v, 0, at);
            }
            Event::SequenceStart(anchor, _) | Event::MappingStart(anchor, _) => {
                let is_map = matches!(ev, Event::MappingStart(..));
                if let Some(Frame::Map {
                    pending: None,
                    complex_key_depth,
                    ..
                }) = self.stack.last_mut()
                {
                    *complex_key_depth += 1;
                    return Ok(());
                }
                if self.in_complex_key() {
                    if let Some(Frame::Map {
                        complex_key_depth, ..
                    }) =
                        self.stack.iter_mut().rev().find(
                            |f| matches!(f, Frame::Map { complex_key_depth: d, .. } if *d > 0),
                        )
                    {
                        *complex_key_depth += 1;
                    }
                    return Ok(());
                }
                self.count(at)?;
                if self.stack.len() >= MAX_DEPTH {
                    return Err(Diagnostic::error(
                        json_path(&self.pointer()),
                        format!("nesting deeper than {MAX_DEPTH} levels"),
                    )
                    .at(at));
                }
                let p = self.next_value_pointer().unwrap_or_default();
                self.record(p.clone(), at)?;
                let seg = p[self.pointer().len()..].to_owned();
                self.path.push(seg);
                self.stack.push(if is_map {
                    Frame::Map {
                        map: Map::new(),
                        anchor,
                        pending: None,
                        complex_key_depth: 0,
                    }
                } else {
                    Frame::Seq {
                        items: Vec::new(),
                        anchor,
                    }
                });
            }
            Event::SequenceEnd | Event::MappingEnd => {
                if let Some(Frame::Map {
                    complex_key_depth, ..
                }) = self
                    .stack
                    .iter_mut()
                    .rev()
                    .find(|f| matches!(f, Frame::Map { complex_key_depth: d, .. } if *d > 0))
                {
                    *complex_key_depth -= 1;
                    if *complex_key_depth == 0
                        && let Some(Frame::Map { pending, .. }) = self.stack.last_mut()
                    {
                        *pending = Some("\u{0}complex\u{0}".into());
                        let p = self.pointer();
                        self.error(
                            at,
                            json_path(&p),
                            "a mapping key that is a list or a mapping".into(),
                            "keys must be plain strings",
                        );
                    }
                    return Ok(());
                }
                let frame = self.stack.pop();
                self.path.pop();
                let (v, anchor) = match frame {
                    Some(Frame::Seq { items, anchor }) => (Value::Array(items), anchor),
                    Some(Frame::Map {
                        mut map, anchor, ..
                    }) => {
                        map.retain(|k, _| !k.starts_with('\u{0}'));
                        (Value::Object(map), anchor)
                    }
                    None => return Ok(()),
                };
                self.push_value(v, anchor, at);
            }
            Event::StreamStart
            | Event::StreamEnd
            | Event::DocumentStart(_)
            | Event::DocumentEnd
            | Event::Nothing => {}
        }
        Ok(())
    }

    fn count_bytes(&mut self, bytes: usize, at: Location) -> Result<(), Diagnostic> {
        self.bytes = self.bytes.saturating_add(bytes);
        if self.bytes > MAX_BYTES {
            return Err(Diagnostic::error(
                String::new(),
                format!("document expands to more than {MAX_BYTES} bytes of text"),
            )
            .at(at)
            .hint("a Cluster file is small; check for runaway anchors and aliases"));
        }
        Ok(())
    }

    /// Records where the value at `pointer` starts, within the pointer budgets.
    fn record(&mut self, pointer: String, at: Location) -> Result<(), Diagnostic> {
        self.pointer_bytes = self.pointer_bytes.saturating_add(pointer.len());
        if pointer.len() > MAX_POINTER || self.pointer_bytes > MAX_POINTER_BYTES {
            return Err(Diagnostic::error(
                String::new(),
                format!(
                    "the document nests keys more than {MAX_POINTER} bytes deep (or all paths \
                     together exceed {MAX_POINTER_BYTES} bytes)"
                ),
            )
            .at(at)
            .hint("a Cluster file's keys are short field names; check for runaway keys"));
        }
        self.out.values.insert(pointer, at);
        Ok(())
    }

    fn count(&mut self, at: Location) -> Result<(), Diagnostic> {
        self.nodes += 1;
        if self.nodes > MAX_NODES {
            return Err(Diagnostic::error(
                String::new(),
                format!("document expands to more than {MAX_NODES} values"),
            )
            .at(at)
            .hint("a Cluster file is small; check for runaway anchors and aliases"));
        }
        Ok(())
    }
}

/// Turns a JSON pointer into the dotted field path users read (`spec.hosts[1].address`).
pub fn json_path(pointer: &str) -> String {
    let mut out = String::new();
    for seg in pointer.split('/').skip(1) {
        let seg = seg.replace("~1", "/").replace("~0", "~");
        if !seg.is_empty() && seg.bytes().all(|b| b.is_ascii_digit()) {
            out.push_str(&format!("[{seg}]"));
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(&seg);
        }
    }
    out
}

/// Parses YAML text. On a syntax error the result holds the single located syntax error;
/// otherwise it holds the value and any duplicate-key errors found along the way.
pub fn parse(text: &str) -> (Option<LocatedValue>, Vec<Diagnostic>) {
    let mut b = Builder {
        stack: Vec::new(),
        path: Vec::new(),
        anchors: HashMap::new(),
        out: LocatedValue::default(),
        diagnostics: Vec::new(),
        nodes: 0,
        bytes: 0,
        pointer_bytes: 0,
        root: None,
    };
    for item in Parser::new_from_str(text) {
        match item {
            Ok((ev, span)) => {
                if let Err(d) = b.on_event(ev, span) {
                    b.diagnostics.push(d);
                    return (None, b.diagnostics);
                }
            }
            Err(e) => {
                let m = e.marker();
                b.diagnostics.push(
                    Diagnostic::error(String::new(), format!("YAML syntax: {}", e.info()))
                        .at(Location {
                            line: m.line(),
                            column: m.col() + 1,
                        })
                        .hint("check indentation and quoting around this point"),
                );
                return (None, b.diagnostics);
            }
        }
    }
    let mut out = b.out;
    out.value = b.root.unwrap_or(Value::Null);
    (Some(out), b.diagnostics)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_core_schema_scalars() {
        assert_eq!(resolve_plain("22"), Value::from(22));
        assert_eq!(resolve_plain("-3"), Value::from(-3));
        assert_eq!(resolve_plain("0x10"), Value::from(16));
        assert_eq!(resolve_plain("1.20"), Value::from(1.2));
        assert_eq!(resolve_plain("1.20.2"), Value::from("1.20.2"));
        assert_eq!(resolve_plain("yes"), Value::from("yes"));
        assert_eq!(resolve_plain("~"), Value::Null);
        assert_eq!(resolve_plain("TRUE"), Value::Bool(true));
        assert_eq!(resolve_plain("10.0.0.1"), Value::from("10.0.0.1"));
        assert_eq!(resolve_plain("nan"), Value::from("nan"));
    }

    #[test]
    fn records_locations_by_pointer() {
        let text = "a:\n  b: 1\n  c:\n    - x\n    - y: 2\n";
        let (v, d) = parse(text);
        assert!(d.is_empty(), "{d:?}");
        let v = v.expect("parsed");
        assert_eq!(v.value["a"]["c"][1]["y"], Value::from(2));
        let at = |p: &str| v.location(p).map(|l| (l.line, l.column));
        assert_eq!(at("/a/b"), Some((2, 6)));
        assert_eq!(at("/a/c/0"), Some((4, 7)));
        assert_eq!(at("/a/c/1/y"), Some((5, 10)));
        assert_eq!(
            v.key_location("/a/c/1/y").map(|l| (l.line, l.column)),
            Some((5, 7))
        );
        // Unknown deeper pointers fall back to the nearest ancestor.
        assert_eq!(at("/a/c/1/y/z"), Some((5, 10)));
    }

    #[test]
    fn reports_duplicate_keys_and_keeps_the_first() {
        let (v, d) = parse("a: 1\nb: 2\na: 3\n");
        assert_eq!(v.expect("parsed").value["a"], Value::from(1));
        assert_eq!(d.len(), 1);
        assert!(
            d[0].message.contains("duplicate key `a`"),
            "{}",
            d[0].message
        );
        assert_eq!(d[0].location.map(|l| l.line), Some(3));
    }

    #[test]
    fn syntax_errors_are_located() {
        let (v, d) = parse("a: [1, 2\nb: 3\n");
        assert!(v.is_none());
        assert_eq!(d.len(), 1);
        assert!(d[0].location.is_some());
    }

    #[test]
    fn alias_bomb_is_bounded() {
        let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..12 {
            let p = i - 1;
            text.push_str(&format!(
                "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
            ));
        }
        let (v, d) = parse(&text);
        assert!(v.is_none());
        assert!(d[0].message.contains("more than"), "{}", d[0].message);
    }

    #[test]
    fn aliases_expand_and_complex_keys_are_reported() {
        let (v, d) = parse("base: &b {x: 1}\nother: *b\n? [a, b]\n: 3\n");
        let v = v.expect("parsed");
        assert_eq!(v.value["other"]["x"], Value::from(1));
        assert_eq!(d.len(), 1, "{d:?}");
        assert!(d[0].message.contains("mapping key"));
    }

    #[test]
    fn two_documents_are_an_error() {
        let (_, d) = parse("a: 1\n---\nb: 2\n");
        assert_eq!(d.len(), 1);
        assert!(d[0].message.contains("more than one YAML document"));
    }

    #[test]
    fn json_paths_read_naturally() {
        assert_eq!(json_path("/spec/hosts/1/address"), "spec.hosts[1].address");
        assert_eq!(json_path("/a~1b/c~0d"), "a/b.c~d");
        assert_eq!(json_path(""), "");
    }
}
