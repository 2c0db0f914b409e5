//! Word expansion and splitting as BuildKit's `shell` package does it: `$v`, `${v}`,
//! `${v:-w}`, `${v:+w}`, `${v-w}`, `${v+w}`, `${v:?msg}`, `${v?msg}`, `${v#p}`, `${v##p}`,
//! `${v%p}`, `${v%%p}`, `${v/p/r}`, `${v//p/r}`, single and double quotes and the escape
//! character.

use std::collections::HashMap;

/// Looks a variable up: `Some(value)` when set (possibly empty).
pub type EnvLookup<'a> = dyn Fn(&str) -> Option<String> + 'a;

/// The word lexer. The flags mirror BuildKit's `shell.Lex`.
#[derive(Clone, Debug)]
pub struct Lexer {
    /// The escape character (`\` or `` ` ``).
    pub escape: char,
    /// Keep quote characters in the output.
    pub raw_quotes: bool,
    /// Keep escape characters in the output.
    pub raw_escapes: bool,
    /// Do not treat quotes specially.
    pub skip_process_quotes: bool,
    /// Leave references to unset variables as written.
    pub skip_unset_env: bool,
}

impl Lexer {
    /// A lexer with the given escape character and every flag off.
    pub fn new(escape: char) -> Self {
        Lexer {
            escape,
            raw_quotes: false,
            raw_escapes: false,
            skip_process_quotes: false,
            skip_unset_env: false,
        }
    }

    /// Expands `word` into one string (quotes removed, blanks kept).
    pub fn process_word(&self, word: &str, env: &EnvLookup<'_>) -> Result<String, String> {
        self.process(word, env).map(|(s, _)| s)
    }

    /// Expands `word` and splits the result into words.
    pub fn process_words(&self, word: &str, env: &EnvLookup<'_>) -> Result<Vec<String>, String> {
        self.process(word, env).map(|(_, w)| w)
    }

    /// Expands `word` with the variables in `vars` (`K=V` strings, later ones win).
    pub fn process_word_with(&self, word: &str, vars: &[String]) -> Result<String, String> {
        let map = env_map(vars);
        self.process_word(word, &|k| map.get(k).cloned())
    }

    fn process(&self, word: &str, env: &EnvLookup<'_>) -> Result<(String, Vec<String>), String> {
        let mut sw = ShellWord {
            lex: self,
            chars: word.chars().collect(),
            pos: 0,
            env,
            raw_escapes: self.raw_escapes,
            depth: 0,
            work: 0,
        };
        sw.process_stop_on(None, self.raw_escapes)
            .map_err(|e| format!("failed to process {}: {e}", crate::parser::go_quote(word)))
    }
}

/// A `K=V` list as a map (later entries win).
pub fn env_map(vars: &[String]) -> HashMap<String, String> {
    vars.iter()
        .map(|e| match e.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (e.clone(), String::new()),
        })
        .collect()
}

#[derive(Default)]
struct Words {
    buf: String,
    words: Vec<String>,
    in_word: bool,
}

impl Words {
    fn add_char(&mut self, ch: char) {
        if ch.is_whitespace() && self.in_word {
            if !self.buf.is_empty() {
                self.words.push(std::mem::take(&mut self.buf));
                self.in_word = false;
            }
        } else if !ch.is_whitespace() {
            self.add_raw_char(ch);
        }
    }
    fn add_raw_char(&mut self, ch: char) {
        self.buf.push(ch);
        self.in_word = true;
    }
    fn add_string(&mut self, s: &str) {
        for c in s.chars() {
            self.add_char(c);
        }
    }
    fn add_raw_string(&mut self, s: &str) {
        self.buf.push_str(s);
        self.in_word = true;
    }
    fn finish(mut self) -> Vec<String> {
        if !self.buf.is_empty() {
            self.words.push(std::mem::take(&mut self.buf));
        }
        self.words
    }
}

const MAX_DEPTH: usize = 64;

struct ShellWord<'a, 'e> {
    lex: &'a Lexer,
    chars: Vec<char>,
    pos: usize,
    env: &'a EnvLookup<'e>,
    raw_escapes: bool,
    depth: usize,
    /// Pattern-matching steps and replacement bytes spent so far on this word.
    work: usize,
}

impl ShellWord<'_, '_> {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }
    fn next(&mut self) -> Option<char> {
        let c = self.chars.get(self.pos).copied();
        if c.is_some() {
            self.pos += 1;
        }
        c
    }

    fn process_stop_on(
        &mut self,
        stop: Option<char>,
        raw_escapes: bool,
    ) -> Result<(String, Vec<String>), String> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err("substitutions nested too deeply".into());
        }
        let saved = self.raw_escapes;
        self.raw_escapes = raw_escapes;
        let r = self.stop_on_inner(stop);
        self.raw_escapes = saved;
        self.depth -= 1;
        r
    }

    fn stop_on_inner(&mut self, stop: Option<char>) -> Result<(String, Vec<String>), String> {
        let mut result = String::new();
        let mut words = Words::default();
        while let Some(ch) = self.peek() {
            if result.len() > MAX_WORD {
                return Err(too_long());
            }
            if Some(ch) == stop {
                self.next();
                return Ok((result, words.finish()));
            }
            let quotes = !self.lex.skip_process_quotes;
            match ch {
                '$' => {
                    let tmp = self.process_dollar()?;
                    if result.len() + tmp.len() > MAX_WORD {
                        return Err(too_long());
                    }
                    result.push_str(&tmp);
                    words.add_string(&tmp);
                }
                '<' => {
                    let tmp = self.process_possible_heredoc();
                    result.push_str(&tmp);
                    words.add_raw_string(&tmp);
                }
                '\'' if quotes => {
                    let tmp = self.process_single_quote()?;
                    result.push_str(&tmp);
                    words.add_raw_string(&tmp);
                }
                '"' if quotes => {
                    let tmp = self.process_double_quote()?;
                    result.push_str(&tmp);
                    words.add_raw_string(&tmp);
                }
                _ => {
                    self.next();
                    if ch == self.lex.escape {
                        if self.raw_escapes {
                            words.add_raw_char(ch);
                            result.push(ch);
                        }
                        match self.next() {
                            None => break,
                            Some(c) => {
                                words.add_raw_char(c);
                                result.push(c);
                            }
                        }
                    } else {
                        words.add_char(ch);
                        result.push(ch);
                    }
                }
            }
        }
        if let Some(s) = stop {
            return Err(format!(
                "unexpected end of statement while looking for matching {s}"
            ));
        }
        Ok((result, words.finish()))
    }

    fn process_single_quote(&mut self) -> Result<String, String> {
        let mut result = String::new();
        let open = self.next();
        if self.lex.raw_quotes {
            result.extend(open);
        }
        loop {
            match self.next() {
                None => {
                    return Err(
                        "unexpected end of statement while looking for matching single-quote"
                            .into(),
                    )
                }
                Some('\'') => {
                    if self.lex.raw_quotes {
                        result.push('\'');
                    }
                    return Ok(result);
                }
                Some(c) => result.push(c),
            }
        }
    }

    fn process_double_quote(&mut self) -> Result<String, String> {
        let mut result = String::new();
        let open = self.next();
        if self.lex.raw_quotes {
            result.extend(open);
        }
        loop {
            match self.peek() {
                None => {
                    return Err(
                        "unexpected end of statement while looking for matching double-quote"
                            .into(),
                    )
                }
                Some('"') => {
                    self.next();
                    if self.lex.raw_quotes {
                        result.push('"');
                    }
                    return Ok(result);
                }
                Some('$') => {
                    let v = self.process_dollar()?;
                    if result.len() + v.len() > MAX_WORD {
                        return Err(too_long());
                    }
                    result.push_str(&v);
                }
                Some(_) => {
                    let mut ch = self.next().unwrap_or_default();
                    if ch == self.lex.escape {
                        if self.raw_escapes {
                            result.push(ch);
                        }
                        match self.peek() {
                            None => continue,
                            Some(c) if c == '"' || c == '$' || c == self.lex.escape => {
                                ch = c;
                                self.next();
                            }
                            Some(_) => {}
                        }
                    }
                    result.push(ch);
                }
            }
        }
    }

    fn get_env(&self, name: &str) -> Option<String> {
        (self.env)(name)
    }

    fn process_dollar(&mut self) -> Result<String, String> {
        self.next();
        if self.peek() != Some('{') {
            let name = self.process_name();
            if name.is_empty() {
                return Ok("$".into());
            }
            return Ok(match self.get_env(&name) {
                Some(v) => v,
                None if self.lex.skip_unset_env => format!("${name}"),
                None => String::new(),
            });
        }
        self.next();
        match self.peek() {
            None => return Err("syntax error: missing '}'".into()),
            Some('{') | Some('}') | Some(':') => {
                return Err("syntax error: bad substitution".into())
            }
            _ => {}
        }
        let name = self.process_name();
        let Some(mut ch) = self.next() else {
            return Err("syntax error: missing '}'".into());
        };
        let mut chs = ch.to_string();
        let mut null_is_unset = false;
        match ch {
            '}' => Ok(match self.get_env(&name) {
                Some(v) => v,
                None if self.lex.skip_unset_env => format!("${{{name}}}"),
                None => String::new(),
            }),
            ':' | '+' | '-' | '?' | '#' | '%' => {
                if ch == ':' {
                    null_is_unset = true;
                    let Some(c) = self.next() else {
                        return Err("syntax error: missing '}'".into());
                    };
                    ch = c;
                    chs.push(c);
                }
                let raw = ch == '#' || ch == '%';
                if null_is_unset && raw {
                    return Err(format!("unsupported modifier ({chs}) in substitution"));
                }
                let word = match self.process_stop_on(Some('}'), raw) {
                    Ok((w, _)) => w,
                    Err(e) => {
                        if self.peek().is_none() {
                            return Err("syntax error: missing '}'".into());
                        }
                        return Err(e);
                    }
                };
                let value = self.get_env(&name);
                if self.lex.skip_unset_env && value.is_none() {
                    return Ok(format!("${{{name}{chs}{word}}}"));
                }
                let set = value.is_some();
                let value = value.unwrap_or_default();
                let unset_or_null = !set || (null_is_unset && value.is_empty());
                match ch {
                    '-' => Ok(if unset_or_null { word } else { value }),
                    '+' => Ok(if unset_or_null { String::new() } else { word }),
                    '?' => {
                        if !set {
                            let m = if word.is_empty() {
                                "is not allowed to be unset".to_string()
                            } else {
                                word
                            };
                            return Err(format!("{name}: {m}"));
                        }
                        if null_is_unset && value.is_empty() {
                            let m = if word.is_empty() {
                                "is not allowed to be empty".to_string()
                            } else {
                                word
                            };
                            return Err(format!("{name}: {m}"));
                        }
                        Ok(value)
                    }
                    '%' | '#' => {
                        let (greedy, pat) = match word.strip_prefix(ch) {
                            Some(p) => (true, p.to_string()),
                            None => (false, word),
                        };
                        let toks = parse_pattern(&pat)
                            .map_err(|e| format!("invalid pattern ({pat}) in substitution: {e}"))?;
                        let v: Vec<char> = value.chars().collect();
                        self.spend(&toks, &v)?;
                        if ch == '#' {
                            Ok(trim_prefix(&toks, &v, greedy).into_iter().collect())
                        } else {
                            let rt: Vec<Tok> = toks.into_iter().rev().collect();
                            let rv: Vec<char> = v.into_iter().rev().collect();
                            let mut out = trim_prefix(&rt, &rv, greedy);
                            out.reverse();
                            Ok(out.into_iter().collect())
                        }
                    }
                    _ => Err(format!("unsupported modifier ({chs}) in substitution")),
                }
            }
            '/' => {
                let all = self.peek() == Some('/');
                if all {
                    self.next();
                }
                let pattern = match self.process_stop_on(Some('/'), true) {
                    Ok((p, _)) => p,
                    Err(e) => {
                        if self.peek().is_none() {
                            return Err("syntax error: missing '/' in ${}".into());
                        }
                        return Err(e);
                    }
                };
                let replacement = match self.process_stop_on(Some('}'), true) {
                    Ok((r, _)) => r,
                    Err(e) => {
                        if self.peek().is_none() {
                            return Err("syntax error: missing '}'".into());
                        }
                        return Err(e);
                    }
                };
                let Some(value) = self.get_env(&name) else {
                    if self.lex.skip_unset_env {
                        return Ok(format!("${{{name}/{pattern}/{replacement}}}"));
                    }
                    return Ok(String::new());
                };
                let toks = parse_pattern(&pattern)
                    .map_err(|e| format!("invalid pattern ({pattern}) in substitution: {e}"))?;
                let v: Vec<char> = value.chars().collect();
                self.spend(&toks, &v)?;
                let out = replace(&toks, &v, &replacement, all, &mut self.work)?;
                self.work = self.work.saturating_add(out.len());
                Ok(out)
            }
            _ => Err(format!("unsupported modifier ({chs}) in substitution")),
        }
    }

    fn process_name(&mut self) -> String {
        let mut name = String::new();
        while let Some(ch) = self.peek() {
            if name.is_empty() && is_digit(ch) {
                while let Some(c) = self.peek() {
                    if !is_digit(c) {
                        break;
                    }
                    name.push(c);
                    self.next();
                }
                return name;
            }
            if name.is_empty() && matches!(ch, '@' | '*' | '#' | '?' | '-' | '$' | '!' | '0') {
                self.next();
                return ch.to_string();
            }
            if !ch.is_alphabetic() && !is_digit(ch) && ch != '_' {
                break;
            }
            self.next();
            name.push(ch);
        }
        name
    }

    fn process_possible_heredoc(&mut self) -> String {
        self.next();
        if self.peek() != Some('<') {
            return "<".into();
        }
        self.next();
        let mut s = String::from("<<");
        while let Some(c) = self.peek() {
            if !matches!(c, '\t' | '\r' | ' ') {
                break;
            }
            s.push(c);
            self.next();
        }
        s
    }
}

fn is_digit(c: char) -> bool {
    c.is_ascii_digit() || (!c.is_ascii() && c.is_numeric())
}

/// One element of a shell pattern (no bracket expressions, as in BuildKit).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tok {
    Lit(char),
    Any,
    Star,
}

/// Longest pattern accepted, which bounds the matcher's work and recursion.
const MAX_PATTERN: usize = 256;

/// Longest expansion of one word (bytes). Nested `${v//p/r}` multiplies lengths, so without a
/// bound a few hundred input bytes can expand without end.
const MAX_WORD: usize = 1 << 20;

/// Most pattern-position x value-position pairs (each memoized) plus replacement bytes one word's
/// pattern operations may cost in total.
const MAX_MATCH_WORK: usize = 4 << 20;

fn too_long() -> String {
    format!(
        "expansion longer than {} KiB: a nested ${{v//p/r}} or a huge value grows it too much",
        MAX_WORD >> 10
    )
}

impl ShellWord<'_, '_> {
    /// Accounts for matching `pat` against `v`; one word may spend at most `MAX_MATCH_WORK`
    /// over all its `${v#p}`/`${v%p}`/`${v/p/r}` (and the bytes replacements produce).
    fn spend(&mut self, pat: &[Tok], v: &[char]) -> Result<(), String> {
        let cost = (pat.len() + 1).saturating_mul(v.len() + 1);
        self.work = self.work.saturating_add(cost);
        if self.work > MAX_MATCH_WORK {
            return Err(format!(
                "pattern matching in this word is too much work (pattern of {} characters on a value of {}): shorten the value or the pattern",
                pat.len(),
                v.len()
            ));
        }
        Ok(())
    }
}

fn parse_pattern(p: &str) -> Result<Vec<Tok>, String> {
    let chars: Vec<char> = p.chars().collect();
    if chars.len() > MAX_PATTERN {
        return Err(format!("pattern longer than {MAX_PATTERN} characters"));
    }
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        i += 1;
        match c {
            '*' => out.push(Tok::Star),
            '?' => out.push(Tok::Any),
            '\\' => {
                if matches!(chars.get(i), Some('}') | Some('/')) {
                    continue;
                }
                match chars.get(i) {
                    Some(&n) if n == '*' || n == '?' || n == '\\' => {
                        out.push(Tok::Lit(n));
                        i += 1;
                    }
                    Some(&n) => return Err(format!("invalid escape '\\{n}'")),
                    None => return Err("invalid escape '\\'".into()),
                }
            }
            c => out.push(Tok::Lit(c)),
        }
    }
    Ok(out)
}

/// Leftmost-first (Perl-like) matching of `pat` at `v[start..]`; returns the end of the match.
struct Matcher<'a> {
    pat: &'a [Tok],
    v: &'a [char],
    greedy: bool,
    memo: HashMap<(usize, usize), Option<usize>>,
}

impl Matcher<'_> {
    fn at(&mut self, pi: usize, vi: usize) -> Option<usize> {
        if pi == self.pat.len() {
            return Some(vi);
        }
        if let Some(r) = self.memo.get(&(pi, vi)) {
            return *r;
        }
        let r = match self.pat[pi] {
            Tok::Lit(c) => {
                if self.v.get(vi) == Some(&c) {
                    self.at(pi + 1, vi + 1)
                } else {
                    None
                }
            }
            Tok::Any => match self.v.get(vi) {
                Some(&c) if c != '\n' => self.at(pi + 1, vi + 1),
                _ => None,
            },
            Tok::Star => {
                let mut max = vi;
                while max < self.v.len() && self.v[max] != '\n' {
                    max += 1;
                }
                let mut found = None;
                if self.greedy {
                    for j in (vi..=max).rev() {
                        if let Some(e) = self.at(pi + 1, j) {
                            found = Some(e);
                            break;
                        }
                    }
                } else {
                    for j in vi..=max {
                        if let Some(e) = self.at(pi + 1, j) {
                            found = Some(e);
                            break;
                        }
                    }
                }
                found
            }
        };
        self.memo.insert((pi, vi), r);
        r
    }
}

fn trim_prefix(pat: &[Tok], v: &[char], greedy: bool) -> Vec<char> {
    let mut m = Matcher {
        pat,
        v,
        greedy,
        memo: HashMap::new(),
    };
    match m.at(0, 0) {
        Some(end) => v[end..].to_vec(),
        None => v.to_vec(),
    }
}

/// Expands Go's regexp replacement template (`$0`, `${0}`, `$$`; other groups are empty).
fn expand_template(repl: &str, matched: &str) -> String {
    let chars: Vec<char> = repl.chars().collect();
    let mut out = String::new();
    let mut i = 0;
    while i < chars.len() {
        if chars[i] != '$' || i + 1 >= chars.len() {
            out.push(chars[i]);
            i += 1;
            continue;
        }
        if chars[i + 1] == '$' {
            out.push('$');
            i += 2;
            continue;
        }
        let name_ok = |c: char| c.is_alphanumeric() || c == '_';
        let (name, next) = if chars[i + 1] == '{' {
            // `${name}`: scanning only the name keeps this linear (no search for a far `}`).
            let mut j = i + 2;
            while j < chars.len() && name_ok(chars[j]) {
                j += 1;
            }
            if j == i + 2 || chars.get(j) != Some(&'}') {
                out.push('$');
                i += 1;
                continue;
            }
            (chars[i + 2..j].iter().collect::<String>(), j + 1)
        } else {
            let mut j = i + 1;
            while j < chars.len() && name_ok(chars[j]) {
                j += 1;
            }
            if j == i + 1 {
                out.push('$');
                i += 1;
                continue;
            }
            (chars[i + 1..j].iter().collect(), j)
        };
        if name.parse::<u64>() == Ok(0) {
            out.push_str(matched);
        }
        i = next;
    }
    out
}

/// `work` is the word's running cost (see `MAX_MATCH_WORK`); each template expansion adds to it.
fn replace(
    pat: &[Tok],
    v: &[char],
    repl: &str,
    all: bool,
    work: &mut usize,
) -> Result<String, String> {
    let mut m = Matcher {
        pat,
        v,
        greedy: true,
        memo: HashMap::new(),
    };
    let find_from = |m: &mut Matcher<'_>, from: usize| -> Option<(usize, usize)> {
        (from..=v.len()).find_map(|s| m.at(0, s).map(|e| (s, e)))
    };
    if !all {
        return match find_from(&mut m, 0) {
            Some((a, b)) => {
                let mut s: String = v[..a].iter().collect();
                s.push_str(repl);
                s.extend(&v[b..]);
                Ok(s)
            }
            None => Ok(v.iter().collect()),
        };
    }
    let mut out = String::new();
    let mut last_end = 0;
    let mut search = 0;
    while search <= v.len() {
        let Some((a, b)) = find_from(&mut m, search) else {
            break;
        };
        out.extend(&v[last_end.min(a)..a]);
        if b > last_end || a == 0 {
            *work = work.saturating_add(repl.len() + (b - a));
            if *work > MAX_MATCH_WORK {
                return Err(format!(
                    "replacement in this word is too much work ({} matches of a {}-byte template): shorten the value or the replacement",
                    v.len(),
                    repl.len()
                ));
            }
            let matched: String = v[a..b].iter().collect();
            out.push_str(&expand_template(repl, &matched));
        }
        if out.len() > MAX_WORD {
            return Err(too_long());
        }
        last_end = b;
        search = if search + 1 > b { search + 1 } else { b };
    }
    out.extend(&v[last_end.min(v.len())..]);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by `cargo fuzz run expand`: nested `${v//p/r}` with an empty pattern multiplies the
    /// length at every level and ran for minutes; now it stops with an error at `MAX_WORD`.
    #[test]
    fn nested_replace_growth_is_bounded() {
        let start = std::time::Instant::now();
        let env = |k: &str| (k == "A").then(|| "abcdefgh".to_string());
        let mut word = "$A".to_string();
        for _ in 0..12 {
            word = format!("${{A//{word}$A$A}}");
            word = word.replacen("${A//", "${A///", 1);
        }
        let r = Lexer::new('\\').process_word(&word, &env);
        assert!(r.unwrap_err().contains("expansion longer than"));
        // The fuzzer's input, run with the harness's lexer flags and variables.
        let fuzz_input = include_bytes!("../tests/fuzz-regressions/expand-growth.bin");
        let mode = fuzz_input[0];
        let mut lex = Lexer::new(if mode & 1 == 0 { '\\' } else { '`' });
        lex.raw_quotes = mode & 2 != 0;
        lex.raw_escapes = mode & 4 != 0;
        lex.skip_process_quotes = mode & 8 != 0;
        lex.skip_unset_env = mode & 16 != 0;
        let env = |k: &str| match k {
            "A" => Some("a b  c".to_string()),
            "PAT" => Some("*.tar.gz".to_string()),
            _ => None,
        };
        let word = std::str::from_utf8(&fuzz_input[1..]).unwrap();
        let r = lex.process_word(word, &env);
        assert!(
            r.as_ref()
                .err()
                .is_some_and(|e| e.contains("expansion longer than")),
            "{:?}",
            r.map(|v| v.len())
        );
        assert!(start.elapsed() < std::time::Duration::from_secs(5));
        // A big value with a long pattern is refused rather than matched at length x length cost.
        let big = "x".repeat(100_000);
        let r = Lexer::new('\\').process_word("${B%%*y*y*y*y*y*y*y*y*y*y*y*y*y*y*y*y*y*y*y*y*y*y*y*y*y*y*y*y*y*y*y*y*y*y*y*y*y*y*y*y*y*y*y*y*y*y}", &|_| Some(big.clone()));
        assert!(r.unwrap_err().contains("too much work"));
        // The second slow fuzz input: many replacements, each under the limits, within budget.
        let slow = include_bytes!("../tests/fuzz-regressions/expand-slow.bin");
        let _ = lex.process_word(&String::from_utf8_lossy(&slow[1..]), &env);
        // Ordinary use is unaffected.
        let plain = |k: &str| (k == "A").then(|| "abcdefgh".to_string());
        let r = Lexer::new('\\')
            .process_word("${A//b/B}-${A%%e*}", &plain)
            .unwrap();
        assert_eq!(r, "aBcdefgh-abcd");
    }

    fn conformance_dir() -> std::path::PathBuf {
        crate::test_data::conformance("buildkit/shell")
    }

    #[test]
    fn conformance_env_var_test() {
        let dir = conformance_dir();
        let text = std::fs::read_to_string(dir.join("envVarTest")).unwrap();
        let env: HashMap<&str, &str> = [
            ("PWD", "/home"),
            ("SHELL", "bash"),
            ("KOREAN", "한국어"),
            ("NULL", ""),
        ]
        .into_iter()
        .collect();
        let lookup = |k: &str| env.get(k).map(|v| v.to_string());
        let lex = Lexer::new('\\');
        let (mut checked, mut failures) = (0, Vec::new());
        for (n, line) in text.lines().enumerate() {
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            let parts: Vec<&str> = line.split('|').collect();
            assert_eq!(parts.len(), 3, "line {}", n + 1);
            let (plat, src, exp) = (parts[0].trim(), parts[1].trim(), parts[2].trim());
            if plat == "W" {
                continue;
            }
            checked += 1;
            let got = lex.process_word(src, &lookup);
            let ok = match (&got, exp) {
                (Err(_), "error") => true,
                (Ok(g), e) => e != "error" && g == e,
                _ => false,
            };
            if !ok {
                failures.push(format!("line {}: {src:?} -> {got:?}, want {exp:?}", n + 1));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
        assert!(checked > 150, "checked {checked}");
        println!("envVarTest: {checked} cases pass");
    }

    #[test]
    fn conformance_words_test() {
        let dir = conformance_dir();
        let text = std::fs::read_to_string(dir.join("wordsTest")).unwrap();
        let mut envs: Vec<String> = Vec::new();
        let lex = Lexer::new('\\');
        let (mut checked, mut failures) = (0, Vec::new());
        for (n, line) in text.lines().enumerate() {
            if line.starts_with('#') {
                continue;
            }
            if let Some(rest) = line.strip_prefix("ENV ") {
                envs.push(rest.trim_start_matches(' ').to_string());
                continue;
            }
            let parts: Vec<&str> = line.split('|').collect();
            assert_eq!(parts.len(), 2, "line {}", n + 1);
            let src = parts[0].trim();
            let expected: Vec<String> = parts[1]
                .trim_start_matches(' ')
                .split(',')
                .map(str::to_string)
                .collect();
            let map = env_map(&envs);
            let got = lex
                .process_words(src, &|k| map.get(k).cloned())
                .unwrap_or_else(|_| vec!["error".into()]);
            checked += 1;
            if got != expected {
                failures.push(format!(
                    "line {}: {src:?} -> {got:?}, want {expected:?}",
                    n + 1
                ));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
        println!("wordsTest: {checked} cases pass");
    }

    #[test]
    fn patterns() {
        let lex = Lexer::new('\\');
        let env = |k: &str| (k == "v").then(|| "foo/bar/baz.tar.gz".to_string());
        let e = |w: &str| lex.process_word(w, &env).unwrap();
        assert_eq!(e("${v#*/}"), "bar/baz.tar.gz");
        assert_eq!(e("${v##*/}"), "baz.tar.gz");
        assert_eq!(e("${v%.*}"), "foo/bar/baz.tar");
        assert_eq!(e("${v%%.*}"), "foo/bar/baz");
        assert_eq!(e("${v/\\//-}"), "foo-bar/baz.tar.gz");
        assert_eq!(e("${v//\\//-}"), "foo-bar-baz.tar.gz");
        assert_eq!(e("${v//a/}"), "foo/br/bz.tr.gz");
        assert!(lex.process_word("${v//a}", &env).is_err());
        assert_eq!(e("${v-x}${u-x}${u+y}${v+y}"), "foo/bar/baz.tar.gzxy");
        assert!(lex.process_word("${u:?must be set}", &env).is_err());
        assert!(lex.process_word("${u?}", &env).is_err());
    }

    #[test]
    fn skip_unset_and_raw() {
        let mut lex = Lexer::new('\\');
        lex.skip_unset_env = true;
        lex.raw_quotes = true;
        let env = |_: &str| None;
        assert_eq!(
            lex.process_word("'a' $x ${y:-z}", &env).unwrap(),
            "'a' $x ${y:-z}"
        );
        let nested = format!("{}x{}", "${a:-".repeat(200), "}".repeat(200));
        assert!(Lexer::new('\\').process_word(&nested, &env).is_err());
    }
}
