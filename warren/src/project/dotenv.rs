//! `.dev.vars` files, read as wrangler reads them (the npm `dotenv` parser's
//! rules): `KEY=value` lines, `export KEY=value`, `#` comments, values in
//! single, double or back quotes (which may span lines; `\n` in double quotes
//! is a newline). Nothing is expanded: a `$VAR` stays as written, so a file
//! never pulls the developer's own environment into a worker.

/// The `(key, value)` pairs of a dotenv `text`, in order; an error names the
/// line.
pub fn parse(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    let mut lines = text.lines().enumerate();
    while let Some((i, raw)) = lines.next() {
        let line = raw.trim_start();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let Some((key, rest)) = line.split_once('=') else {
            return Err(format!("line {}: expected KEY=value", i + 1));
        };
        let key = key.trim();
        let valid = key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-');
        if key.is_empty() || !valid {
            return Err(format!("line {}: {key:?} is not a variable name", i + 1));
        }
        let rest = rest.trim_start();
        let value = match rest.chars().next() {
            Some(q @ ('"' | '\'' | '`')) => {
                let mut body = rest[1..].to_owned();
                // The value ends at the next closing quote, perhaps lines later.
                loop {
                    if let Some(end) = body.find(q) {
                        body.truncate(end);
                        break;
                    }
                    match lines.next() {
                        Some((_, more)) => {
                            body.push('\n');
                            body.push_str(more);
                        }
                        None => {
                            return Err(format!("line {}: the {q} quote is not closed", i + 1));
                        }
                    }
                }
                if q == '"' {
                    body.replace("\\n", "\n").replace("\\r", "\r")
                } else {
                    body
                }
            }
            _ => {
                // An unquoted value ends at a ` #` comment.
                let end = rest.find(" #").unwrap_or(rest.len());
                rest[..end].trim().to_owned()
            }
        };
        out.push((key.to_owned(), value));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn values_are_read_as_wrangler_reads_them_and_never_expanded() {
        let text = "# secrets\nTOKEN=abc  # the token\nexport QUOTED=\"a b\\nc\"\nSINGLE='x\\ny'\nHOME_COPY=${HOME}\nEMPTY=\nMULTI=\"one\ntwo\"\n\n  SPACED = v \n";
        assert_eq!(
            parse(text).unwrap(),
            vec![
                ("TOKEN".into(), "abc".into()),
                ("QUOTED".into(), "a b\nc".into()),
                ("SINGLE".into(), "x\\ny".into()),
                ("HOME_COPY".into(), "${HOME}".into()),
                ("EMPTY".into(), String::new()),
                ("MULTI".into(), "one\ntwo".into()),
                ("SPACED".into(), "v".into()),
            ]
        );
    }

    #[test]
    fn bad_lines_name_their_number() {
        assert_eq!(
            parse("A=1\nnot a pair\n").unwrap_err(),
            "line 2: expected KEY=value"
        );
        assert_eq!(
            parse("A=\"open\n").unwrap_err(),
            "line 1: the \" quote is not closed"
        );
        assert_eq!(
            parse("B C=1\n").unwrap_err(),
            "line 1: \"B C\" is not a variable name"
        );
    }
}
