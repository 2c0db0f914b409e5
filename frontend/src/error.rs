//! The crate's one error type, with rustc/BuildKit-style source snippets.

use std::fmt::Write as _;

/// Where in the Dockerfile an error is: line, column and (once the source is attached with
/// [`Error::with_source`]) the text of that line, shown with a caret under the offending token.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pos {
    /// 1-based line.
    pub line: usize,
    /// 1-based column (in characters); 0 until the source is attached.
    pub column: usize,
    /// Characters to underline from `column`.
    pub width: usize,
    /// Last line of the instruction (continuations, heredocs): the token is looked for in
    /// `line..=last_line`.
    pub last_line: usize,
    /// The text the error is about (a flag, a word, a stage name), when known.
    pub token: Option<String>,
    /// The source line, once attached.
    pub text: Option<String>,
}

/// Everything that can go wrong turning a Dockerfile into a build graph. Every message names the
/// Dockerfile, the line and column, shows the line and says how to fix it:
///
/// ```text
/// Dockerfile:3:1: unknown instruction: FRUM (did you mean FROM?)
///   |
/// 3 | FRUM busybox
///   | ^^^^
/// ```
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The text cannot be parsed (directives, heredocs, JSON arrays, empty file).
    #[error("{}", render(file, pos, None, message))]
    Syntax {
        /// Dockerfile name.
        file: String,
        /// Where (boxed: keeps `Result<_, Error>` small).
        pos: Box<Pos>,
        /// What is wrong and how to fix it.
        message: String,
    },
    /// An instruction is wrong: unknown, bad flag, bad arguments, failed expansion, unknown stage.
    #[error("{}", render(file, pos, Some(instruction), message))]
    Instruction {
        /// Dockerfile name.
        file: String,
        /// Where (boxed: keeps `Result<_, Error>` small).
        pos: Box<Pos>,
        /// The instruction as written (shortened), shown when the source line is not attached.
        instruction: String,
        /// What is wrong and how to fix it.
        message: String,
    },
    /// A problem with the Dockerfile as a whole or with the build options (`--target`, no FROM).
    #[error("{file}: {message}")]
    Build {
        /// Dockerfile name.
        file: String,
        /// What is wrong and how to fix it.
        message: String,
    },
}

/// An error message inside the crate, with the token it is about when the site knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Msg {
    pub(crate) text: String,
    pub(crate) token: Option<String>,
}

impl Msg {
    /// A message about `token` (the caret goes under it).
    pub(crate) fn at(token: impl Into<String>, text: impl Into<String>) -> Msg {
        Msg {
            text: text.into(),
            token: Some(token.into()),
        }
    }
}

impl From<String> for Msg {
    fn from(text: String) -> Msg {
        Msg { text, token: None }
    }
}

impl From<&str> for Msg {
    fn from(text: &str) -> Msg {
        Msg::from(text.to_string())
    }
}

fn render(file: &str, pos: &Pos, instruction: Option<&String>, message: &str) -> String {
    let mut s = format!("{file}:{}", pos.line);
    if pos.column > 0 {
        let _ = write!(s, ":{}", pos.column);
    }
    match (&pos.text, instruction) {
        (None, Some(i)) if !i.is_empty() => {
            let _ = write!(s, ": {i}: {message}");
        }
        _ => {
            let _ = write!(s, ": {message}");
        }
    }
    if let Some(text) = &pos.text {
        let num = pos.line.to_string();
        let pad = " ".repeat(num.len());
        let shown: String = text
            .chars()
            .map(|c| if c == '\t' { ' ' } else { c })
            .collect();
        let _ = write!(s, "\n{pad} |\n{num} | {}", shown.trim_end());
        if pos.column > 0 {
            let lead = " ".repeat(pos.column - 1);
            let carets = "^".repeat(pos.width.max(1));
            let _ = write!(s, "\n{pad} | {lead}{carets}");
        }
    }
    s
}

/// Byte offset of `token` in `line`: preferably where it stands as a whole word.
fn find_token(line: &str, token: &str) -> Option<usize> {
    if token.is_empty() {
        return None;
    }
    let word = |c: char| c.is_alphanumeric() || "_-.".contains(c);
    let mut first = None;
    for (i, _) in line.match_indices(token) {
        first.get_or_insert(i);
        let before = line[..i].chars().next_back();
        let after = line[i + token.len()..].chars().next();
        let tok_start_word = token.chars().next().is_some_and(word);
        let tok_end_word = token.chars().next_back().is_some_and(word);
        let glued = (tok_start_word && before.is_some_and(word))
            || (tok_end_word && after.is_some_and(word));
        if !glued {
            return Some(i);
        }
    }
    first
}

impl Pos {
    fn new(line: usize, last_line: usize, token: Option<String>) -> Pos {
        Pos {
            line,
            column: 0,
            width: 0,
            last_line: last_line.max(line),
            token,
            text: None,
        }
    }

    /// Fills in column, width and text from the Dockerfile's lines.
    fn attach(&mut self, lines: &[&str]) {
        if self.text.is_some() || self.line == 0 || self.line > lines.len() {
            return;
        }
        let last = self.last_line.min(lines.len());
        if let Some(tok) = self.token.as_deref() {
            for n in self.line..=last {
                let l = lines[n - 1];
                if let Some(b) = find_token(l, tok) {
                    self.line = n;
                    self.column = l[..b].chars().count() + 1;
                    self.width = tok.chars().count();
                    self.text = Some(l.to_string());
                    return;
                }
            }
        }
        // No token (or not found as written, e.g. after expansion): the instruction's keyword.
        let l = lines[self.line - 1];
        let lead = l.len() - l.trim_start().len();
        self.column = l[..lead].chars().count() + 1;
        self.width = l[lead..]
            .split_whitespace()
            .next()
            .map_or(1, |w| w.chars().count());
        self.text = Some(l.to_string());
    }
}

impl Error {
    pub(crate) fn syntax(file: &str, line: usize, message: impl Into<Msg>) -> Error {
        Error::syntax_in(file, line, line, message)
    }

    /// A syntax error in an instruction spanning `line..=last_line`.
    pub(crate) fn syntax_in(
        file: &str,
        line: usize,
        last_line: usize,
        message: impl Into<Msg>,
    ) -> Error {
        let m = message.into();
        Error::Syntax {
            file: file.into(),
            pos: Box::new(Pos::new(line, last_line, m.token)),
            message: m.text,
        }
    }

    pub(crate) fn instruction(line: usize, instruction: &str, message: impl Into<Msg>) -> Error {
        Error::instruction_in(line, line, instruction, message)
    }

    /// An instruction error for an instruction spanning `line..=last_line`.
    pub(crate) fn instruction_in(
        line: usize,
        last_line: usize,
        instruction: &str,
        message: impl Into<Msg>,
    ) -> Error {
        let m = message.into();
        let one_line: String = instruction.split_whitespace().collect::<Vec<_>>().join(" ");
        let short = if one_line.chars().count() > 60 {
            let s: String = one_line.chars().take(57).collect();
            format!("{s}...")
        } else {
            one_line
        };
        Error::Instruction {
            file: "Dockerfile".into(),
            pos: Box::new(Pos::new(line, last_line, m.token)),
            instruction: short,
            message: m.text,
        }
    }

    pub(crate) fn build(message: impl Into<String>) -> Error {
        Error::Build {
            file: "Dockerfile".into(),
            message: message.into(),
        }
    }

    /// The same error naming `name` as the Dockerfile.
    pub fn with_file(mut self, name: &str) -> Error {
        match &mut self {
            Error::Syntax { file, .. }
            | Error::Instruction { file, .. }
            | Error::Build { file, .. } => *file = name.to_string(),
        }
        self
    }

    /// The same error with its position resolved against the Dockerfile's text: the column of the
    /// offending token and the source line to show. Errors already carrying a line keep it.
    pub fn with_source(mut self, dockerfile_text: &str) -> Error {
        if let Error::Syntax { pos, .. } | Error::Instruction { pos, .. } = &mut self {
            let text = dockerfile_text
                .strip_prefix('\u{feff}')
                .unwrap_or(dockerfile_text);
            let lines: Vec<&str> = text
                .split('\n')
                .map(|l| l.strip_suffix('\r').unwrap_or(l))
                .collect();
            pos.attach(&lines);
        }
        self
    }

    /// The 1-based line the error is about, when there is one.
    pub fn line(&self) -> Option<usize> {
        match self {
            Error::Syntax { pos, .. } | Error::Instruction { pos, .. } => Some(pos.line),
            Error::Build { .. } => None,
        }
    }

    /// The 1-based column the error is about, once the source is attached.
    pub fn column(&self) -> Option<usize> {
        match self {
            Error::Syntax { pos, .. } | Error::Instruction { pos, .. } if pos.column > 0 => {
                Some(pos.column)
            }
            _ => None,
        }
    }
}
