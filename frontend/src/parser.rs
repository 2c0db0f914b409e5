//! Layer 1: Dockerfile text -> syntax tree (BuildKit's `parser/` package).
//!
//! No meaning is given to instructions here: the parser finds parser directives, joins line
//! continuations, splits each instruction into its command, its `--flags` and its raw arguments
//! (JSON or shell form, key/value pairs for ENV and LABEL, ...), reads heredoc bodies and records
//! the start and end line of every instruction. [`Instruction::dump`] prints the tree in the
//! s-expression format BuildKit's own parser tests use.

use crate::error::{Error, Msg};
use crate::shell::Lexer;

/// The default escape character.
pub const DEFAULT_ESCAPE: char = '\\';

/// Deepest `ONBUILD ONBUILD ...` nesting the parser accepts (BuildKit rejects any nesting later).
const MAX_NESTING: usize = 16;

/// A parser directive (`# syntax=...`, `# escape=...`, `# check=...`) from the top of the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Directive {
    /// Lower-case name.
    pub name: String,
    /// Value, trimmed.
    pub value: String,
    /// 1-based line.
    pub line: usize,
}

/// A heredoc attached to an instruction (`RUN <<EOF`, `COPY <<-"EOT" /dest`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Heredoc {
    /// The delimiter word, quotes removed; for `COPY` it is also the file name.
    pub name: String,
    /// File descriptor number written before `<<` (0 when absent).
    pub file_descriptor: u32,
    /// False when (part of) the delimiter was quoted: the body is not expanded.
    pub expand: bool,
    /// `<<-`: leading tabs are stripped from the body.
    pub chomp: bool,
    /// The body, each line with its line ending, without the terminator line.
    pub content: String,
}

impl Heredoc {
    /// The body with leading tabs of every line removed when `chomp` is set.
    pub fn chomped_content(&self) -> String {
        if self.chomp {
            chomp_heredoc_content(&self.content)
        } else {
            self.content.clone()
        }
    }
}

/// Removes the leading tabs of every line (for `<<-`).
pub fn chomp_heredoc_content(src: &str) -> String {
    src.split_inclusive('\n')
        .map(|l| l.trim_start_matches('\t'))
        .collect()
}

/// One instruction of the syntax tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Instruction {
    /// The command as written (`RUN`, `from`, ...).
    pub command: String,
    /// `--flags` before the arguments, as written (`--from=build`).
    pub flags: Vec<String>,
    /// Raw arguments. ENV/LABEL give triples `key, value, "="|""`; HEALTHCHECK gives the type first.
    pub args: Vec<String>,
    /// The nested instruction of an `ONBUILD`.
    pub child: Option<Box<Instruction>>,
    /// True when the arguments were written in JSON (exec) form.
    pub json: bool,
    /// Heredocs, in order of appearance.
    pub heredocs: Vec<Heredoc>,
    /// The instruction's text after continuations are joined (without heredoc bodies).
    pub original: String,
    /// 1-based first line.
    pub start_line: usize,
    /// 1-based last line (including heredoc bodies).
    pub end_line: usize,
}

impl Instruction {
    /// The command in lower case.
    pub fn name(&self) -> String {
        self.command.to_ascii_lowercase()
    }

    /// BuildKit's s-expression dump of this instruction (without the surrounding parentheses
    /// that [`Dockerfile::dump`] adds).
    pub fn dump(&self) -> String {
        let mut s = self.command.to_lowercase();
        if !self.flags.is_empty() {
            s.push_str(" [");
            let quoted: Vec<String> = self.flags.iter().map(|f| go_quote(f)).collect();
            s.push_str(&quoted.join(" "));
            s.push(']');
        }
        if let Some(child) = &self.child {
            s.push_str(" (");
            s.push_str(&child.dump());
            s.push(')');
        } else {
            for a in &self.args {
                s.push(' ');
                s.push_str(&go_quote(a));
            }
        }
        s.trim().to_string()
    }
}

/// A parsed Dockerfile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dockerfile {
    /// Parser directives found at the top.
    pub directives: Vec<Directive>,
    /// The escape character in effect (`\` or `` ` ``).
    pub escape: char,
    /// Instructions in order.
    pub instructions: Vec<Instruction>,
    /// Warnings (empty continuation lines).
    pub warnings: Vec<String>,
}

impl Dockerfile {
    /// The dump BuildKit's parser tests compare against: one `(instruction ...)` a line.
    pub fn dump(&self) -> String {
        let mut s = String::new();
        for i in &self.instructions {
            s.push('(');
            s.push_str(&i.dump());
            s.push_str(")\n");
        }
        s
    }

    /// First line of the instructions (0 when empty).
    pub fn start_line(&self) -> usize {
        self.instructions.first().map_or(0, |i| i.start_line)
    }

    /// Last line of the instructions (0 when empty).
    pub fn end_line(&self) -> usize {
        self.instructions.last().map_or(0, |i| i.end_line)
    }
}

/// Quotes a string as Go's `strconv.Quote` does.
pub fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\x07' => out.push_str("\\a"),
            '\x08' => out.push_str("\\b"),
            '\x0c' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\x0b' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c if c.is_control() || c == '\u{feff}' => {
                let n = c as u32;
                if n < 0x10000 {
                    out.push_str(&format!("\\u{n:04x}"));
                } else {
                    out.push_str(&format!("\\U{n:08x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

struct Directives {
    escape: char,
    dir_line: usize,
    done: bool,
    seen: Vec<String>,
    found: Vec<Directive>,
}

impl Directives {
    fn new() -> Self {
        Directives {
            escape: DEFAULT_ESCAPE,
            dir_line: 0,
            done: false,
            seen: Vec::new(),
            found: Vec::new(),
        }
    }

    /// Looks for a parser directive on `line`; returns an error message for a repeated
    /// directive or a bad escape character.
    fn possible_directive(&mut self, line: &str) -> Result<(), Msg> {
        self.dir_line += 1;
        if self.done {
            return Ok(());
        }
        let Some(rest) = line.strip_prefix('#') else {
            self.done = true;
            return Ok(());
        };
        let rest = rest.trim_start();
        let Some((key, value)) = match_directive(rest) else {
            self.done = true;
            return Ok(());
        };
        let key = key.to_ascii_lowercase();
        if !matches!(key.as_str(), "syntax" | "escape" | "check") {
            self.done = true;
            return Ok(());
        }
        if self.seen.contains(&key) {
            return Err(Msg::at(
                value,
                format!("only one {key} parser directive can be used; remove the repeated `# {key}=` line"),
            ));
        }
        self.seen.push(key.clone());
        if key == "escape" {
            match value.as_str() {
                "\\" => self.escape = '\\',
                "`" => self.escape = '`',
                _ => {
                    return Err(Msg::at(
                        value.clone(),
                        format!("invalid escape token '{value}' does not match ` or \\: write `# escape=\\` or `# escape=``"),
                    ))
                }
            }
        }
        self.found.push(Directive {
            name: key,
            value,
            line: self.dir_line,
        });
        Ok(())
    }

    /// BuildKit's line-continuation rule: the escape character last on the line (trailing
    /// blanks allowed), not itself escaped. Returns the line without it, and whether the
    /// instruction ends here.
    fn trim_continuation<'a>(&self, line: &'a str) -> (&'a str, bool) {
        let t = line.trim_end_matches([' ', '\t']);
        if let Some(before) = t.strip_suffix(self.escape) {
            if before.is_empty() {
                return ("", false);
            }
            if !before.ends_with(self.escape) {
                return (before, false);
            }
        }
        (line, true)
    }
}

/// `^([a-zA-Z][a-zA-Z0-9]*)\s*=\s*(.+?)\s*$`
fn match_directive(s: &str) -> Option<(String, String)> {
    let mut chars = s.char_indices().peekable();
    let (_, first) = chars.next()?;
    if !first.is_ascii_alphabetic() {
        return None;
    }
    let mut end = first.len_utf8();
    while let Some(&(i, c)) = chars.peek() {
        if c.is_ascii_alphanumeric() {
            end = i + c.len_utf8();
            chars.next();
        } else {
            break;
        }
    }
    let key = &s[..end];
    let rest = s[end..].trim_start_matches(is_re_space);
    let after = rest.strip_prefix('=')?;
    let v = after.trim_matches(is_re_space);
    if v.is_empty() {
        // `.+?` still needs one character: a value made only of blanks keeps its last one.
        let last = after.chars().last()?;
        return Some((key.to_string(), last.to_string()));
    }
    Some((key.to_string(), v.to_string()))
}

/// `\s` of Go's RE2: ASCII white space.
fn is_re_space(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\x0c' | '\r' | ' ')
}

/// `[\t\v\f\r ]` used to split commands and arguments.
fn is_ws_sep(c: char) -> bool {
    matches!(c, '\t' | '\x0b' | '\x0c' | '\r' | ' ')
}

fn split_ws(s: &str, limit: Option<usize>) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = s;
    loop {
        if let Some(l) = limit {
            if out.len() + 1 == l {
                out.push(rest.to_string());
                return out;
            }
        }
        match rest.find(is_ws_sep) {
            Some(i) => {
                out.push(rest[..i].to_string());
                rest = rest[i..].trim_start_matches(is_ws_sep);
            }
            None => {
                out.push(rest.to_string());
                return out;
            }
        }
    }
}

fn is_comment(line: &str) -> bool {
    line.trim_start().starts_with('#')
}

fn trim_newline(s: &str) -> &str {
    s.trim_end_matches(['\r', '\n'])
}

/// Parses a Dockerfile. Errors carry the file name `Dockerfile` (see [`Error::with_file`]) and
/// the offending source line.
pub fn parse(text: &str) -> Result<Dockerfile, Error> {
    parse_text(text).map_err(|e| e.with_source(text))
}

fn parse_text(text: &str) -> Result<Dockerfile, Error> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut lines = text.split_inclusive('\n');
    let mut d = Directives::new();
    let mut current_line = 0usize;
    let mut instructions = Vec::new();
    let mut warnings = Vec::new();
    let err = |line: usize, msg: Msg| Error::syntax("Dockerfile", line, msg);

    while let Some(raw) = lines.next() {
        let token = trim_newline(raw).trim_start();
        d.possible_directive(token)
            .map_err(|m| err(current_line + 1, m))?;
        let token = if is_comment(token) { "" } else { token };
        current_line += 1;
        let start_line = current_line;
        let (first, mut end_of_line) = d.trim_continuation(token);
        if end_of_line && first.is_empty() {
            continue;
        }
        let mut buf = first.to_string();
        let mut has_empty_continuation = false;
        while !end_of_line {
            let Some(raw) = lines.next() else { break };
            let token = trim_newline(raw);
            d.possible_directive(token)
                .map_err(|m| err(current_line + 1, m))?;
            current_line += 1;
            if is_comment(raw) {
                continue;
            }
            if token.trim_start().is_empty() {
                has_empty_continuation = true;
                continue;
            }
            let (t, eol) = d.trim_continuation(token);
            end_of_line = eol;
            buf.push_str(t);
        }
        if has_empty_continuation {
            warnings.push(format!(
                "line {current_line}: Empty continuation line found in: {buf}; empty continuation lines will become errors in a future release"
            ));
        }
        let mut node = node_from_line(&buf, d.escape, 0)
            .map_err(|m| Error::syntax_in("Dockerfile", start_line, current_line, m))?;
        if can_contain_heredoc(&node) && buf.contains("<<") {
            let docs = heredocs_from_line(&buf).map_err(|m| err(start_line, m.into()))?;
            for mut doc in docs {
                let mut content = String::new();
                let mut terminated = false;
                for raw in lines.by_ref() {
                    current_line += 1;
                    let mut candidate = trim_newline(raw);
                    if doc.chomp {
                        candidate = candidate.trim_start_matches('\t');
                    }
                    if candidate == doc.name {
                        terminated = true;
                        break;
                    }
                    content.push_str(raw);
                }
                if !terminated {
                    return Err(err(
                        start_line,
                        Msg::at(
                            doc.name.clone(),
                            format!(
                                "unterminated heredoc: add a line `{}` after its body",
                                doc.name
                            ),
                        ),
                    ));
                }
                doc.content = content;
                if let Some(c) = node.child.as_mut() {
                    c.heredocs.push(doc.clone());
                }
                node.heredocs.push(doc);
            }
        }
        set_lines(&mut node, start_line, current_line);
        instructions.push(node);
    }
    if instructions.is_empty() {
        return Err(err(
            current_line,
            "file with no instructions: a Dockerfile needs at least a FROM".into(),
        ));
    }
    Ok(Dockerfile {
        directives: d.found,
        escape: d.escape,
        instructions,
        warnings,
    })
}

fn set_lines(node: &mut Instruction, start: usize, end: usize) {
    node.start_line = start;
    node.end_line = end;
    if let Some(c) = node.child.as_mut() {
        set_lines(c, start, end);
    }
}

fn can_contain_heredoc(node: &Instruction) -> bool {
    let n = match (&node.child, node.name().as_str()) {
        (Some(c), "onbuild") => c.as_ref(),
        _ => node,
    };
    matches!(n.name().as_str(), "add" | "copy" | "run") && !n.json
}

/// Splits one joined line into an instruction node.
fn node_from_line(line: &str, escape: char, depth: usize) -> Result<Instruction, Msg> {
    if depth > MAX_NESTING {
        return Err("ONBUILD nested too deeply".into());
    }
    let (cmd, flags, args) = split_command(line, escape);
    let mut node = Instruction {
        command: cmd.clone(),
        flags,
        args: Vec::new(),
        child: None,
        json: false,
        heredocs: Vec::new(),
        original: line.to_string(),
        start_line: 0,
        end_line: 0,
    };
    match cmd.to_ascii_lowercase().as_str() {
        "add" | "copy" | "volume" => {
            let (a, json) = parse_maybe_json_to_list(&args)?;
            node.args = a;
            node.json = json;
        }
        "arg" => node.args = parse_words(&args, escape),
        "cmd" | "entrypoint" | "run" | "shell" => {
            let (a, json) = parse_maybe_json(&args)?;
            node.args = a;
            node.json = json;
        }
        "env" => node.args = parse_name_val(&args, "ENV", escape)?,
        "label" => node.args = parse_name_val(&args, "LABEL", escape)?,
        "expose" | "from" => node.args = parse_whitespace_delimited(&args),
        "healthcheck" => {
            let (a, json) = parse_health_config(&args)?;
            node.args = a;
            node.json = json;
        }
        "maintainer" | "stopsignal" | "user" | "workdir" => {
            if !args.is_empty() {
                node.args = vec![args];
            }
        }
        "onbuild" => {
            if !args.is_empty() {
                node.child = Some(Box::new(node_from_line(&args, escape, depth + 1)?));
            }
        }
        _ => node.args = vec![String::new()],
    }
    Ok(node)
}

/// Command word, flags and the rest of the line.
fn split_command(line: &str, escape: char) -> (String, Vec<String>, String) {
    let trimmed = line.trim();
    let parts = split_ws(trimmed, Some(2));
    let cmd = parts.first().cloned().unwrap_or_default();
    if parts.len() == 2 {
        let (rest, flags) = extract_builder_flags(&parts[1], escape);
        (cmd, flags, rest.trim().to_string())
    } else {
        (cmd, Vec::new(), String::new())
    }
}

fn extract_builder_flags(line: &str, escape: char) -> (String, Vec<String>) {
    #[derive(PartialEq)]
    enum Phase {
        Spaces,
        Word,
        Quote,
    }
    let chars: Vec<(usize, char)> = line.char_indices().collect();
    let mut words = Vec::new();
    let mut phase = Phase::Spaces;
    let mut word = String::new();
    let mut quote = '\0';
    let mut blank_ok = false;
    let mut pos = 0;
    while pos <= chars.len() {
        let at_end = pos == chars.len();
        let ch = if at_end { '\0' } else { chars[pos].1 };
        if phase == Phase::Spaces {
            if at_end {
                break;
            }
            if ch.is_whitespace() {
                pos += 1;
                continue;
            }
            if ch != '-' || pos + 1 == chars.len() || chars[pos + 1].1 != '-' {
                return (line[chars[pos].0..].to_string(), words);
            }
            phase = Phase::Word;
        }
        if at_end {
            if word != "--" && (blank_ok || !word.is_empty()) {
                words.push(word);
            }
            break;
        }
        if phase == Phase::Word {
            if ch.is_whitespace() {
                phase = Phase::Spaces;
                if word == "--" {
                    return (line[chars[pos].0..].to_string(), words);
                }
                if blank_ok || !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
                word.clear();
                blank_ok = false;
                pos += 1;
                continue;
            }
            if ch == '\'' || ch == '"' {
                quote = ch;
                blank_ok = true;
                phase = Phase::Quote;
                pos += 1;
                continue;
            }
            let mut c = ch;
            if ch == escape {
                if pos + 1 == chars.len() {
                    pos += 1;
                    continue;
                }
                pos += 1;
                c = chars[pos].1;
            }
            word.push(c);
            pos += 1;
            continue;
        }
        // in quote
        if ch == quote {
            phase = Phase::Word;
            pos += 1;
            continue;
        }
        let mut c = ch;
        if ch == escape {
            if pos + 1 == chars.len() {
                phase = Phase::Word;
                pos += 1;
                continue;
            }
            pos += 1;
            c = chars[pos].1;
        }
        word.push(c);
        pos += 1;
    }
    (String::new(), words)
}

/// Splits on blanks keeping quotes and escapes (they are removed later by expansion).
fn parse_words(rest: &str, escape: char) -> Vec<String> {
    #[derive(PartialEq)]
    enum Phase {
        Spaces,
        Word,
        Quote,
    }
    let chars: Vec<char> = rest.chars().collect();
    let mut words = Vec::new();
    let mut phase = Phase::Spaces;
    let mut quote = '\0';
    let mut blank_ok = false;
    let mut word = String::new();
    let mut pos = 0;
    while pos <= chars.len() {
        let at_end = pos == chars.len();
        let mut ch = if at_end { '\0' } else { chars[pos] };
        if phase == Phase::Spaces {
            if at_end {
                break;
            }
            if ch.is_whitespace() {
                pos += 1;
                continue;
            }
            phase = Phase::Word;
        }
        if at_end {
            if blank_ok || !word.is_empty() {
                words.push(std::mem::take(&mut word));
            }
            break;
        }
        if phase == Phase::Word {
            if ch.is_whitespace() {
                phase = Phase::Spaces;
                if blank_ok || !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
                word.clear();
                blank_ok = false;
                pos += 1;
                continue;
            }
            if ch == '\'' || ch == '"' {
                quote = ch;
                blank_ok = true;
                phase = Phase::Quote;
            }
            if ch == escape {
                if pos + 1 == chars.len() {
                    pos += 1;
                    continue;
                }
                word.push(ch);
                pos += 1;
                ch = chars[pos];
            }
            word.push(ch);
            pos += 1;
            continue;
        }
        // in quote
        if ch == quote {
            phase = Phase::Word;
        }
        if ch == escape && quote != '\'' {
            if pos + 1 == chars.len() {
                phase = Phase::Word;
                pos += 1;
                continue;
            }
            pos += 1;
            word.push(ch);
            ch = chars[pos];
        }
        word.push(ch);
        pos += 1;
    }
    words
}

fn parse_name_val(rest: &str, key: &str, escape: char) -> Result<Vec<String>, Msg> {
    let words = parse_words(rest, escape);
    if words.is_empty() {
        return Ok(Vec::new());
    }
    if !words[0].contains('=') {
        let parts = split_ws(rest, Some(2));
        if parts.len() < 2 {
            return Err(Msg::at(
                words[0].clone(),
                format!(
                    "{key} must have two arguments: write `{key} {} value` or `{key} {}=value`",
                    words[0], words[0]
                ),
            ));
        }
        return Ok(vec![parts[0].clone(), parts[1].clone(), String::new()]);
    }
    let mut out = Vec::new();
    for w in words {
        let Some((k, v)) = w.split_once('=') else {
            return Err(Msg::at(
                w.clone(),
                format!(
                    "Syntax error - can't find = in {}. Must be of the form: name=value (write `{w}=<value>`, or quote a value with spaces)",
                    go_quote(&w)
                ),
            ));
        };
        out.push(k.to_string());
        out.push(v.to_string());
        out.push("=".to_string());
    }
    Ok(out)
}

fn parse_whitespace_delimited(rest: &str) -> Vec<String> {
    if rest.is_empty() {
        return Vec::new();
    }
    split_ws(rest, None)
}

enum JsonErr {
    NotArray,
    NotStrings,
}

fn parse_json(rest: &str) -> Result<Vec<String>, JsonErr> {
    let rest = rest.trim_start();
    if !rest.starts_with('[') {
        return Err(JsonErr::NotArray);
    }
    let values: Vec<serde_json::Value> =
        serde_json::from_str(rest).map_err(|_| JsonErr::NotArray)?;
    values
        .into_iter()
        .map(|v| match v {
            serde_json::Value::String(s) => Ok(s),
            _ => Err(JsonErr::NotStrings),
        })
        .collect()
}

const NOT_STRING_ARRAY: &str =
    "when using JSON array syntax, arrays must be comprised of strings only";

fn parse_maybe_json(rest: &str) -> Result<(Vec<String>, bool), String> {
    if rest.is_empty() {
        return Ok((Vec::new(), false));
    }
    match parse_json(rest) {
        Ok(v) => Ok((v, true)),
        Err(JsonErr::NotStrings) => Err(NOT_STRING_ARRAY.into()),
        Err(JsonErr::NotArray) => Ok((vec![rest.to_string()], false)),
    }
}

fn parse_maybe_json_to_list(rest: &str) -> Result<(Vec<String>, bool), String> {
    match parse_json(rest) {
        Ok(v) => Ok((v, true)),
        Err(JsonErr::NotStrings) => Err(NOT_STRING_ARRAY.into()),
        Err(JsonErr::NotArray) => Ok((parse_whitespace_delimited(rest), false)),
    }
}

fn parse_health_config(rest: &str) -> Result<(Vec<String>, bool), String> {
    let sep = rest.find(char::is_whitespace).unwrap_or(rest.len());
    if sep == 0 {
        return Ok((Vec::new(), false));
    }
    let typ = &rest[..sep];
    let next = rest[sep..].trim_start();
    let (cmd, json) = parse_maybe_json(next)?;
    let mut out = vec![typ.to_string()];
    out.extend(cmd);
    Ok((out, json))
}

/// Parses a heredoc word (`<<EOF`, `3<<-"END"`). `None` when `src` is not a heredoc.
pub fn parse_heredoc(src: &str) -> Result<Option<Heredoc>, String> {
    // ^(\d*)<<(-?)\s*([^<]*)$
    let digits_end = src.find(|c: char| !c.is_ascii_digit()).unwrap_or(src.len());
    let Some(rest) = src[digits_end..].strip_prefix("<<") else {
        return Ok(None);
    };
    let fd: u32 = src[..digits_end].parse().unwrap_or(0);
    let (chomp, rest) = match rest.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, rest),
    };
    let rest = rest.trim_start_matches(is_re_space);
    if rest.contains('<') || rest.is_empty() {
        return Ok(None);
    }
    let env = |_: &str| None;
    let mut lex = Lexer::new('\\');
    lex.skip_unset_env = true;
    let words = lex.process_words(rest, &env)?;
    if words.len() != 1 {
        return Ok(None);
    }
    lex.raw_quotes = true;
    let raw = lex.process_words(rest, &env)?;
    if raw.len() != 1 {
        return Err(format!(
            "internal lexing of heredoc produced inconsistent results: {rest}"
        ));
    }
    let quotes = |s: &str| s.chars().filter(|c| *c == '\'' || *c == '"').count();
    Ok(Some(Heredoc {
        name: words[0].clone(),
        file_descriptor: fd,
        expand: quotes(&words[0]) == quotes(&raw[0]),
        chomp,
        content: String::new(),
    }))
}

fn heredocs_from_line(line: &str) -> Result<Vec<Heredoc>, String> {
    let mut lex = Lexer::new('\\');
    lex.raw_quotes = true;
    lex.raw_escapes = true;
    lex.skip_unset_env = true;
    let words = lex.process_words(line, &|_| None).unwrap_or_default();
    let mut docs = Vec::new();
    for w in words {
        if let Some(h) = parse_heredoc(&w)? {
            docs.push(h);
        }
    }
    Ok(docs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dump(s: &str) -> String {
        parse(s).unwrap().dump()
    }

    #[test]
    fn directives_only_at_top() {
        let df = parse("# syntax=docker/dockerfile:1\n# escape=`\nFROM a\nRUN x `\n  y\n").unwrap();
        assert_eq!(df.escape, '`');
        assert_eq!(df.directives.len(), 2);
        assert_eq!(df.dump(), "(from \"a\")\n(run \"x   y\")\n");
        let df = parse("FROM a\n# escape=`\nRUN x \\\n y\n").unwrap();
        assert_eq!(df.escape, '\\');
        assert!(parse("# escape=x\nFROM a\n").is_err());
        assert!(parse("# syntax=a\n# syntax=b\nFROM a\n").is_err());
        let df = parse("# check=skip=all\nFROM a\n").unwrap();
        assert_eq!(df.directives[0].value, "skip=all");
    }

    #[test]
    fn continuation_with_comments_and_eof() {
        let df = parse("FROM a\nRUN a \\\n# c\n\n  b \\").unwrap();
        assert_eq!(df.instructions[1].args, vec!["a   b"]);
        assert_eq!(df.instructions[1].start_line, 2);
        assert_eq!(df.instructions[1].end_line, 5);
        assert_eq!(df.warnings.len(), 1);
    }

    #[test]
    fn crlf() {
        assert_eq!(
            dump("FROM a\r\nRUN a \\\r\n b\r\nCMD [\"x\"]\r\n"),
            "(from \"a\")\n(run \"a  b\")\n(cmd \"x\")\n"
        );
    }

    #[test]
    fn heredocs() {
        let df = parse(
            "FROM a\nRUN <<EOF\necho hi\nEOF\nCOPY <<-\"A\" <<B /dest/\n\tone\n\tA\ntwo\nB\nRUN x\n",
        )
        .unwrap();
        let run = &df.instructions[1];
        assert_eq!(run.heredocs.len(), 1);
        assert_eq!(run.heredocs[0].content, "echo hi\n");
        assert!(run.heredocs[0].expand);
        assert_eq!((run.start_line, run.end_line), (2, 4));
        let copy = &df.instructions[2];
        assert_eq!(copy.heredocs.len(), 2);
        assert_eq!(copy.heredocs[0].name, "A");
        assert!(!copy.heredocs[0].expand);
        assert!(copy.heredocs[0].chomp);
        assert_eq!(copy.heredocs[0].chomped_content(), "one\n");
        assert_eq!(copy.heredocs[1].content, "two\n");
        assert_eq!(copy.args, vec!["<<-\"A\"", "<<B", "/dest/"]);
        assert_eq!(df.instructions[3].start_line, 10);
        assert!(parse("FROM a\nRUN <<EOF\nx\n").is_err());
        // JSON form never has heredocs
        let df = parse("FROM a\nRUN [\"<<EOF\"]\nEOF\n").unwrap();
        assert_eq!(df.instructions.len(), 3);
    }

    #[test]
    fn onbuild_heredoc_and_nesting() {
        let df = parse("FROM a\nONBUILD RUN <<EOF\nx\nEOF\n").unwrap();
        let ob = &df.instructions[1];
        assert_eq!(ob.dump(), "onbuild (run \"<<EOF\")");
        assert_eq!(ob.child.as_ref().unwrap().heredocs[0].content, "x\n");
        let deep = format!("FROM a\n{}RUN x\n", "ONBUILD ".repeat(100));
        assert!(parse(&deep).is_err());
    }

    #[test]
    fn json_fallback() {
        assert_eq!(dump("CMD [\"a\", 'b']"), "(cmd \"[\\\"a\\\", 'b']\")\n");
        assert!(parse("CMD [\"a\", 1]").is_err());
        assert_eq!(dump("VOLUME /a /b"), "(volume \"/a\" \"/b\")\n");
    }

    #[test]
    fn empty_is_error() {
        assert!(parse("").is_err());
        assert!(parse("# just a comment\n\n").is_err());
    }

    fn conformance_dir() -> std::path::PathBuf {
        crate::test_data::conformance("buildkit/parser")
    }

    fn cases(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
        let mut v: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_dir())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn conformance_testfiles() {
        let dir = conformance_dir();
        let mut failures = Vec::new();
        let all = cases(&dir.join("testfiles"));
        for case in &all {
            let df = std::fs::read(case.join("Dockerfile")).unwrap();
            let df = String::from_utf8_lossy(&df);
            let want = std::fs::read_to_string(case.join("result"))
                .unwrap()
                .replace("\r\n", "\n");
            match parse(&df) {
                Ok(tree) if tree.dump() == want => {}
                Ok(tree) => failures.push(format!(
                    "{}:\n--- got\n{}--- want\n{}",
                    case.display(),
                    tree.dump(),
                    want
                )),
                Err(e) => failures.push(format!("{}: {e}", case.display())),
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
        assert!(all.len() > 30);
        println!("parser testfiles: {} cases pass", all.len());
    }

    #[test]
    fn conformance_negative() {
        let dir = conformance_dir();
        let all = cases(&dir.join("testfiles-negative"));
        for case in &all {
            let df = std::fs::read(case.join("Dockerfile")).unwrap();
            let res = parse(&String::from_utf8_lossy(&df));
            assert!(res.is_err(), "{} parsed: {res:?}", case.display());
        }
        assert!(all.len() >= 4);
        println!("parser testfiles-negative: {} cases rejected", all.len());
    }

    #[test]
    fn conformance_line_numbers() {
        let dir = conformance_dir();
        let df = std::fs::read_to_string(dir.join("testfile-line/Dockerfile")).unwrap();
        let tree = parse(&df).unwrap();
        assert_eq!((tree.start_line(), tree.end_line()), (5, 31));
        let lines: Vec<(usize, usize)> = tree
            .instructions
            .iter()
            .map(|i| (i.start_line, i.end_line))
            .collect();
        assert_eq!(lines, vec![(5, 5), (11, 12), (17, 31)]);
    }
}
