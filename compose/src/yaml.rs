//! A YAML document as a tree of [`Node`]s that remember their file and line.
//!
//! Built from `saphyr-parser` events: anchors and aliases are expanded (with a size budget, so an
//! alias bomb is an error and not an out-of-memory), `<<` merge keys are applied, and every scalar
//! keeps its source text (so `FOO: 010` stays `010`, as docker compose keeps it).

use std::collections::HashMap;
use std::sync::Arc;

use saphyr_parser::{Event, Parser, ScalarStyle, Span, SpannedEventReceiver};

use crate::Error;

/// Most nodes a document may expand to (aliases included).
const MAX_NODES: usize = 200_000;
/// Deepest nesting accepted.
const MAX_DEPTH: usize = 128;

/// Where a node was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pos {
    /// The file, as the user named it.
    pub file: Arc<str>,
    /// 1-based line.
    pub line: usize,
}

/// A YAML value with its position.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// The value.
    pub v: Value,
    /// Where it was written.
    pub pos: Pos,
}

/// A YAML value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `null`, `~` or nothing.
    Null,
    /// A scalar: its text, and whether it was plain (unquoted, so `true`/`1.5` are typed).
    Scalar { text: String, plain: bool },
    /// A sequence.
    Seq(Vec<Node>),
    /// A mapping, in file order; keys are strings (with the key's own position).
    Map(Vec<(Key, Node)>),
}

/// A mapping key.
#[derive(Debug, Clone, PartialEq)]
pub struct Key {
    /// The key's text.
    pub name: String,
    /// Where the key was written.
    pub pos: Pos,
}

impl Node {
    /// A node at `pos`.
    pub fn new(v: Value, pos: Pos) -> Self {
        Node { v, pos }
    }

    /// A string scalar.
    pub fn str(text: impl Into<String>, pos: Pos) -> Self {
        Node::new(
            Value::Scalar {
                text: text.into(),
                plain: false,
            },
            pos,
        )
    }

    /// The mapping's entry for `key`.
    pub fn get(&self, key: &str) -> Option<&Node> {
        match &self.v {
            Value::Map(m) => m.iter().find(|(k, _)| k.name == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// What kind of value this is, for error messages.
    pub fn kind(&self) -> &'static str {
        match &self.v {
            Value::Null => "null",
            Value::Scalar { .. } => "a scalar",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }
}

enum Frame {
    Seq(Vec<Node>, Pos, usize),
    Map(Vec<(Key, Node)>, Option<Key>, Pos, usize, Vec<String>),
}

struct Builder {
    file: Arc<str>,
    stack: Vec<Frame>,
    anchors: HashMap<usize, Node>,
    root: Option<Node>,
    nodes: usize,
    err: Option<Error>,
}

impl Builder {
    fn pos(&self, span: &Span) -> Pos {
        Pos {
            file: self.file.clone(),
            line: span.start.line(),
        }
    }

    fn fail(&mut self, line: usize, msg: String) {
        if self.err.is_none() {
            self.err = Some(Error::Yaml {
                file: self.file.to_string(),
                line,
                msg,
            });
        }
    }

    fn push_value(&mut self, node: Node, anchor: usize) {
        if anchor > 0 {
            self.anchors.insert(anchor, node.clone());
        }
        match self.stack.last_mut() {
            None => self.root = Some(node),
            Some(Frame::Seq(items, _, _)) => items.push(node),
            Some(Frame::Map(entries, key, _, _, merged)) => match key.take() {
                None => {
                    let name = match &node.v {
                        Value::Scalar { text, .. } => text.clone(),
                        Value::Null => String::new(),
                        _ => {
                            let line = node.pos.line;
                            self.fail(line, "a mapping key must be a string".into());
                            return;
                        }
                    };
                    *key = Some(Key {
                        name,
                        pos: node.pos,
                    });
                }
                Some(k) => {
                    if k.name == "<<" {
                        merge_key(entries, node, merged);
                    } else if let Some(i) = merged.iter().position(|m| *m == k.name) {
                        merged.remove(i);
                        if let Some(e) = entries.iter_mut().find(|(e, _)| e.name == k.name) {
                            *e = (k, node);
                        }
                    } else if entries.iter().any(|(e, _)| e.name == k.name) {
                        let line = k.pos.line;
                        self.fail(line, format!("duplicate key {:?}", k.name));
                    } else {
                        entries.push((k, node));
                    }
                }
            },
        }
    }
}

/// `<<: *base` (or a list of them): the base's keys that the mapping does not set yet.
fn merge_key(entries: &mut Vec<(Key, Node)>, node: Node, merged: &mut Vec<String>) {
    let bases = match node.v {
        Value::Map(_) => vec![node],
        Value::Seq(items) => items,
        _ => return,
    };
    for base in bases {
        if let Value::Map(m) = base.v {
            for (k, v) in m {
                if !entries.iter().any(|(e, _)| e.name == k.name) {
                    merged.push(k.name.clone());
                    entries.push((k, v));
                }
            }
        }
    }
}

fn count(node: &Node) -> usize {
    match &node.v {
        Value::Seq(items) => 1 + items.iter().map(count).sum::<usize>(),
        Value::Map(m) => 1 + m.iter().map(|(_, v)| count(v)).sum::<usize>(),
        _ => 1,
    }
}

impl<'i> SpannedEventReceiver<'i> for Builder {
    fn on_event(&mut self, ev: Event<'i>, span: Span) {
        if self.err.is_some() {
            return;
        }
        let pos = self.pos(&span);
        self.nodes += 1;
        if self.nodes > MAX_NODES {
            self.fail(pos.line, "document too large".into());
            return;
        }
        match ev {
            Event::Scalar(text, style, anchor, _tag) => {
                let plain = style == ScalarStyle::Plain;
                let v = if plain && matches!(&*text, "" | "~" | "null" | "Null" | "NULL") {
                    Value::Null
                } else {
                    Value::Scalar {
                        text: text.into_owned(),
                        plain,
                    }
                };
                self.push_value(Node::new(v, pos), anchor);
            }
            Event::SequenceStart(anchor, _) => {
                if self.stack.len() >= MAX_DEPTH {
                    self.fail(pos.line, "nesting too deep".into());
                    return;
                }
                self.stack.push(Frame::Seq(Vec::new(), pos, anchor));
            }
            Event::MappingStart(anchor, _) => {
                if self.stack.len() >= MAX_DEPTH {
                    self.fail(pos.line, "nesting too deep".into());
                    return;
                }
                self.stack
                    .push(Frame::Map(Vec::new(), None, pos, anchor, Vec::new()));
            }
            Event::SequenceEnd | Event::MappingEnd => match self.stack.pop() {
                Some(Frame::Seq(items, p, anchor)) => {
                    self.push_value(Node::new(Value::Seq(items), p), anchor)
                }
                Some(Frame::Map(entries, _, p, anchor, _)) => {
                    self.push_value(Node::new(Value::Map(entries), p), anchor)
                }
                None => self.fail(pos.line, "unbalanced document".into()),
            },
            Event::Alias(id) => match self.anchors.get(&id) {
                Some(n) => {
                    let n = n.clone();
                    self.nodes += count(&n);
                    if self.nodes > MAX_NODES {
                        self.fail(pos.line, "document too large (aliases)".into());
                        return;
                    }
                    self.push_value(n, 0)
                }
                None => self.fail(pos.line, "unknown alias".into()),
            },
            Event::Nothing
            | Event::StreamStart
            | Event::StreamEnd
            | Event::DocumentStart(_)
            | Event::DocumentEnd => {}
        }
    }
}

/// Parses one YAML document of `file`; an empty document is an empty mapping.
pub fn parse(file: &str, text: &str) -> Result<Node, Error> {
    let mut b = Builder {
        file: Arc::from(file),
        stack: Vec::new(),
        anchors: HashMap::new(),
        root: None,
        nodes: 0,
        err: None,
    };
    let mut parser = Parser::new_from_str(text);
    if let Err(e) = parser.load(&mut b, false) {
        return Err(Error::Yaml {
            file: file.to_string(),
            line: e.marker().line(),
            msg: e.info().to_string(),
        });
    }
    if let Some(e) = b.err {
        return Err(e);
    }
    let pos = Pos {
        file: b.file.clone(),
        line: 1,
    };
    Ok(match b.root {
        None | Some(Node { v: Value::Null, .. }) => Node::new(Value::Map(Vec::new()), pos),
        Some(n) => n,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(n: &Node) -> &str {
        match &n.v {
            Value::Scalar { text, .. } => text,
            _ => panic!("not a scalar: {n:?}"),
        }
    }

    #[test]
    fn positions_and_scalars() {
        let n = parse("c.yaml", "a: 1\nb:\n  - x\n  - 'y'\nc: ~\n").unwrap();
        assert_eq!(n.get("a").unwrap().pos.line, 1);
        let Value::Seq(items) = &n.get("b").unwrap().v else {
            panic!()
        };
        assert_eq!(items[1].pos.line, 4);
        assert_eq!(text(&items[1]), "y");
        assert_eq!(n.get("c").unwrap().v, Value::Null);
    }

    #[test]
    fn keeps_number_text() {
        let n = parse("c.yaml", "a: 010\nb: 1.50\n").unwrap();
        assert_eq!(text(n.get("a").unwrap()), "010");
        assert_eq!(text(n.get("b").unwrap()), "1.50");
    }

    #[test]
    fn anchors_and_merge_keys() {
        let n = parse(
            "c.yaml",
            "x-base: &b\n  image: busybox\n  user: nobody\nweb:\n  <<: *b\n  user: root\n",
        )
        .unwrap();
        let web = n.get("web").unwrap();
        assert_eq!(text(web.get("image").unwrap()), "busybox");
        assert_eq!(text(web.get("user").unwrap()), "root");
    }

    #[test]
    fn errors_have_lines() {
        let e = parse("c.yaml", "a: 1\nb: [1, 2\n").unwrap_err().to_string();
        assert!(e.starts_with("c.yaml:"), "{e}");
        let e = parse("c.yaml", "a: 1\na: 2\n").unwrap_err().to_string();
        assert!(e.contains("c.yaml:2") && e.contains("duplicate"), "{e}");
    }

    #[test]
    fn alias_bomb_is_an_error() {
        let mut s = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..12 {
            let p = i - 1;
            s.push_str(&format!(
                "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
            ));
        }
        let e = parse("c.yaml", &s).unwrap_err().to_string();
        assert!(e.contains("too large"), "{e}");
    }

    #[test]
    fn empty_is_empty_map() {
        assert_eq!(parse("c.yaml", "").unwrap().v, Value::Map(vec![]));
        assert_eq!(
            parse("c.yaml", "# nothing\n").unwrap().v,
            Value::Map(vec![])
        );
    }
}
