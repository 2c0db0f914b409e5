//! `${VAR}` interpolation and `.env` files, as docker compose does them.

use std::collections::BTreeMap;

use crate::yaml::{Node, Value};

/// Variables that interpolation sees: the process environment over the `.env` file.
pub type Vars = BTreeMap<String, String>;

/// Substitutes `$VAR`, `${VAR}`, `${VAR:-d}`, `${VAR-d}`, `${VAR:?e}`, `${VAR?e}`, `${VAR:+a}`,
/// `${VAR+a}` and `$$` in `s`. An error is the message of a `?` form, or a syntax problem.
pub fn interpolate(s: &str, vars: &Vars) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(r) = after.strip_prefix('$') {
            out.push('$');
            rest = r;
        } else if let Some(body) = after.strip_prefix('{') {
            let end = closing_brace(body).ok_or_else(|| format!("unclosed \"${{\" in {s:?}"))?;
            out.push_str(&expand(&body[..end], vars)?);
            rest = &body[end + 1..];
        } else {
            let n = name_len(after);
            if n == 0 {
                out.push('$');
                rest = after;
            } else {
                out.push_str(vars.get(&after[..n]).map(String::as_str).unwrap_or(""));
                rest = &after[n..];
            }
        }
    }
    out.push_str(rest);
    Ok(out)
}

fn name_len(s: &str) -> usize {
    let b = s.as_bytes();
    if b.is_empty() || !(b[0].is_ascii_alphabetic() || b[0] == b'_') {
        return 0;
    }
    b.iter()
        .take_while(|c| c.is_ascii_alphanumeric() || **c == b'_')
        .count()
}

/// Index of the `}` closing a `${`, counting nested `${...}` in defaults.
fn closing_brace(s: &str) -> Option<usize> {
    let b = s.as_bytes();
    let mut depth = 0usize;
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'$' if b.get(i + 1) == Some(&b'{') => {
                depth += 1;
                i += 1;
            }
            b'}' if depth == 0 => return Some(i),
            b'}' => depth -= 1,
            _ => {}
        }
        i += 1;
    }
    None
}

fn expand(body: &str, vars: &Vars) -> Result<String, String> {
    let n = name_len(body);
    if n == 0 {
        return Err(format!("invalid variable name in \"${{{body}}}\""));
    }
    let (name, op) = body.split_at(n);
    let val = vars.get(name);
    let set_nonempty = val.is_some_and(|v| !v.is_empty());
    let (colon, op) = match op.strip_prefix(':') {
        Some(o) => (true, o),
        None => (false, op),
    };
    let present = if colon { set_nonempty } else { val.is_some() };
    let Some(kind) = op.chars().next() else {
        if colon {
            return Err(format!("invalid \"${{{body}}}\""));
        }
        return Ok(val.cloned().unwrap_or_default());
    };
    let arg = &op[1..];
    match kind {
        '-' if present => Ok(val.cloned().unwrap_or_default()),
        '-' => interpolate(arg, vars),
        '?' if present => Ok(val.cloned().unwrap_or_default()),
        '?' => {
            let msg = interpolate(arg, vars)?;
            Err(if msg.is_empty() {
                format!("required variable {name} is missing a value")
            } else {
                format!("required variable {name} is missing a value: {msg}")
            })
        }
        '+' if present => interpolate(arg, vars),
        '+' => Ok(String::new()),
        _ => Err(format!("invalid \"${{{body}}}\"")),
    }
}

/// Interpolates every scalar of `node` (values, not keys). Errors name the node's line.
pub fn interpolate_node(node: &mut Node, vars: &Vars) -> Result<(), (usize, String)> {
    match &mut node.v {
        Value::Scalar { text, .. } => {
            if text.contains('$') {
                *text = interpolate(text, vars).map_err(|e| (node.pos.line, e))?;
            }
        }
        Value::Seq(items) => {
            for i in items {
                interpolate_node(i, vars)?;
            }
        }
        Value::Map(m) => {
            for (_, v) in m {
                interpolate_node(v, vars)?;
            }
        }
        Value::Null => {}
    }
    Ok(())
}

/// Parses an env file (`.env` or `env_file:`): `KEY=VALUE` lines, `#` comments, an optional
/// `export `, single quotes (literal), double quotes (with `\n`, `\"` escapes and interpolation),
/// and unquoted values (interpolated, a ` #` starts a comment). Values may use earlier keys and
/// `base`. A line `KEY` alone takes KEY from `base`, if set. Errors are (line, message).
pub fn parse_env_file(text: &str, base: &Vars) -> Result<Vec<(String, String)>, (usize, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim_start();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let (key, val) = match line.split_once('=') {
            Some((k, v)) => (k.trim(), Some(v)),
            None => (line.trim(), None),
        };
        if key.is_empty() || name_len(key) != key.len() && !key.contains('.') && !key.contains('-')
        {
            return Err((i + 1, format!("invalid variable name {key:?}")));
        }
        let Some(val) = val else {
            if let Some(v) = base.get(key) {
                out.push((key.to_string(), v.clone()));
            }
            continue;
        };
        let mut scope = base.clone();
        for (k, v) in &out {
            scope.entry(k.clone()).or_insert_with(|| v.clone());
        }
        let val = env_value(val.trim_start(), &scope).map_err(|e| (i + 1, e))?;
        out.retain(|(k, _)| k != key);
        out.push((key.to_string(), val));
    }
    Ok(out)
}

fn env_value(v: &str, scope: &Vars) -> Result<String, String> {
    if let Some(r) = v.strip_prefix('\'') {
        let end = r.find('\'').ok_or("unterminated single quote")?;
        return Ok(r[..end].to_string());
    }
    if let Some(r) = v.strip_prefix('"') {
        let mut s = String::new();
        let mut chars = r.chars();
        loop {
            match chars.next() {
                None => return Err("unterminated double quote".into()),
                Some('"') => break,
                Some('\\') => match chars.next() {
                    Some('n') => s.push('\n'),
                    Some('t') => s.push('\t'),
                    Some(c) => s.push(c),
                    None => return Err("unterminated double quote".into()),
                },
                Some(c) => s.push(c),
            }
        }
        return interpolate(&s, scope);
    }
    let v = match v.find(" #") {
        Some(i) => &v[..i],
        None => v,
    };
    interpolate(v.trim_end(), scope)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(kv: &[(&str, &str)]) -> Vars {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn forms() {
        let v = vars(&[("A", "a"), ("E", "")]);
        assert_eq!(interpolate("x${A}y", &v).unwrap(), "xay");
        assert_eq!(interpolate("$A/$A", &v).unwrap(), "a/a");
        assert_eq!(interpolate("${B}", &v).unwrap(), "");
        assert_eq!(interpolate("${B:-d}", &v).unwrap(), "d");
        assert_eq!(interpolate("${E:-d}", &v).unwrap(), "d");
        assert_eq!(interpolate("${E-d}", &v).unwrap(), "");
        assert_eq!(interpolate("${B-d}", &v).unwrap(), "d");
        assert_eq!(interpolate("${A:-d}", &v).unwrap(), "a");
        assert_eq!(interpolate("${A:+alt}", &v).unwrap(), "alt");
        assert_eq!(interpolate("${E:+alt}", &v).unwrap(), "");
        assert_eq!(interpolate("${E+alt}", &v).unwrap(), "alt");
        assert_eq!(interpolate("${B+alt}", &v).unwrap(), "");
        assert_eq!(interpolate("$$A", &v).unwrap(), "$A");
        assert_eq!(interpolate("$${A}", &v).unwrap(), "${A}");
        assert_eq!(interpolate("a $ b $1", &v).unwrap(), "a $ b $1");
        assert_eq!(interpolate("${B:-${A}x}", &v).unwrap(), "ax");
    }

    #[test]
    fn required() {
        let v = vars(&[("E", "")]);
        let e = interpolate("${B:?need B}", &v).unwrap_err();
        assert!(e.contains("B") && e.contains("need B"), "{e}");
        assert!(interpolate("${E:?x}", &v).is_err());
        assert_eq!(interpolate("${E?x}", &v).unwrap(), "");
        assert!(interpolate("${B?}", &v).unwrap_err().contains("B"));
    }

    #[test]
    fn syntax_errors() {
        let v = Vars::new();
        assert!(interpolate("${A", &v).is_err());
        assert!(interpolate("${}", &v).is_err());
        assert!(interpolate("${1A}", &v).is_err());
        assert!(interpolate("${A:}", &v).is_err());
        assert!(interpolate("${A*x}", &v).is_err());
    }

    #[test]
    fn env_files() {
        let base = vars(&[("HOME", "/root")]);
        let text = "# c\n\nA=1\nexport B = two words  # comment\nC='lit $A'\nD=\"q\\n${A}\"\nE=${HOME}/x\nHOME\nMISSING\nA=3\n";
        let got = parse_env_file(text, &base).unwrap();
        let m: BTreeMap<_, _> = got.into_iter().collect();
        assert_eq!(m["A"], "3");
        assert_eq!(m["B"], "two words");
        assert_eq!(m["C"], "lit $A");
        assert_eq!(m["D"], "q\n1");
        assert_eq!(m["E"], "/root/x");
        assert_eq!(m["HOME"], "/root");
        assert!(!m.contains_key("MISSING"));
        assert_eq!(parse_env_file("A='x\n", &base).unwrap_err().0, 1);
        assert_eq!(parse_env_file("ok=1\n=x\n", &base).unwrap_err().0, 2);
    }
}
