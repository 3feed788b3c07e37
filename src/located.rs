//! Configuration problems and where they are: a path into the TOML document
//! (`seal[0].hsm[1].timeout`) turned into a line and column of the file, an error inside one
//! section with its span, and the naming rule of seals and members. A leaf that the config and
//! every seal type's own section use.

use std::ops::Range;

/// A path into the TOML document, for locating errors.
#[derive(Debug, Clone)]
pub enum Seg {
    Key(&'static str),
    Index(usize),
}

pub struct Problem {
    pub at: Vec<Seg>,
    pub message: String,
}

pub fn problem(at: Vec<Seg>, message: impl Into<String>) -> Problem {
    Problem {
        at,
        message: message.into(),
    }
}

pub fn dotted(at: &[Seg]) -> String {
    let mut s = String::new();
    for seg in at {
        match seg {
            Seg::Key(k) => {
                if !s.is_empty() {
                    s.push('.');
                }
                s.push_str(k);
            }
            Seg::Index(i) => s.push_str(&format!("[{i}]")),
        }
    }
    s
}

pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset.min(text.len())).unwrap_or("");
    let line = before.matches('\n').count() + 1;
    let column = before
        .rsplit('\n')
        .next()
        .map(|l| l.chars().count())
        .unwrap_or(0)
        + 1;
    (line, column)
}

/// Finds the line of the deepest part of `at` present in the document.
pub fn locate(text: &str, at: &[Seg]) -> (usize, usize) {
    let Ok(doc) = text.parse::<toml_edit::Document<String>>() else {
        return (1, 1);
    };
    let mut best = None;
    let mut item: Option<&toml_edit::Item> = None;
    let mut table: Option<&toml_edit::Table> = Some(doc.as_table());
    for seg in at {
        match seg {
            Seg::Key(k) => {
                let Some(t) = table else { break };
                if let Some(key) = t.key(k) {
                    best = key.span().or(best);
                }
                item = t.get(k);
                if let Some(span) = item.and_then(|i| i.span()) {
                    best = best.or(Some(span));
                }
                table = item.and_then(|i| i.as_table());
                if item.is_none() {
                    break;
                }
            }
            Seg::Index(i) => {
                let Some(aot) = item.and_then(|it| it.as_array_of_tables()) else {
                    break;
                };
                let Some(t) = aot.get(*i) else { break };
                best = t.span().or(best);
                table = Some(t);
            }
        }
    }
    best.map(|s| line_col(text, s.start)).unwrap_or((1, 1))
}

impl Problem {
    /// The problem with `prefix` put in front of its path (a section's problems, in the document).
    pub fn under(mut self, prefix: &[Seg]) -> Problem {
        let mut at = prefix.to_vec();
        at.append(&mut self.at);
        self.at = at;
        self
    }
}

/// An error inside one section: where (`span`, absolute in the file), which key (relative to the
/// section, may be empty) and what.
#[derive(Debug)]
pub struct SectionError {
    pub span: Option<Range<usize>>,
    pub key: String,
    pub message: String,
}

impl From<toml::de::Error> for SectionError {
    fn from(e: toml::de::Error) -> SectionError {
        SectionError {
            span: e.span(),
            key: String::new(),
            message: e.message().trim().to_string(),
        }
    }
}

impl SectionError {
    pub fn at(span: Range<usize>, key: &str, message: impl Into<String>) -> SectionError {
        SectionError {
            span: Some(span),
            key: key.to_string(),
            message: message.into(),
        }
    }
}

/// Seal and member names: 1-64 characters of `a-z A-Z 0-9 - _ .`.
pub fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 64
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

/// The table that holds the byte `offset` of `text`, named as errors name it: `listener`,
/// `seal[1].hsm[0]` ("" at the top level). Read from the table headers above the offset, which is
/// what a parse error has when serde cannot say which table it was in.
pub fn table_at(text: &str, offset: usize) -> String {
    let before = text.get(..offset.min(text.len())).unwrap_or(text);
    // Per array-of-tables path: how many headers so far; a parent's header resets its children.
    let mut counts: Vec<(String, usize)> = Vec::new();
    let mut current = String::new();
    for line in before.lines() {
        let t = line.trim();
        let array = t.starts_with("[[");
        let Some(name) = t
            .strip_prefix("[[")
            .and_then(|r| r.split("]]").next())
            .or_else(|| t.strip_prefix('[').and_then(|r| r.split(']').next()))
        else {
            continue;
        };
        let name = name.trim().to_string();
        if array {
            counts.retain(|(n, _)| !n.starts_with(&format!("{name}.")));
            match counts.iter_mut().find(|(n, _)| *n == name) {
                Some((_, c)) => *c += 1,
                None => counts.push((name.clone(), 0)),
            }
        }
        // seal.hsm -> seal[i].hsm[j]: each prefix that is an array of tables gets its index.
        let mut shown = String::new();
        let mut prefix = String::new();
        for part in name.split('.') {
            if !prefix.is_empty() {
                prefix.push('.');
                shown.push('.');
            }
            prefix.push_str(part);
            shown.push_str(part);
            if let Some((_, c)) = counts.iter().find(|(n, _)| *n == prefix) {
                shown.push_str(&format!("[{c}]"));
            }
        }
        current = shown;
    }
    current
}

#[cfg(test)]
mod table_tests {
    use super::table_at;

    #[test]
    fn tables_and_arrays_of_tables_are_named_with_their_index() {
        let text = "a = 1\n[listener]\nx = 1\n[[seal]]\n[[seal.hsm]]\n[[seal.hsm]]\ny = 2\n[[seal]]\n[[seal.hsm]]\nz = 3\n";
        let at = |needle: &str| table_at(text, text.find(needle).unwrap());
        assert_eq!(at("a = 1"), "");
        assert_eq!(at("x = 1"), "listener");
        assert_eq!(at("y = 2"), "seal[0].hsm[1]");
        assert_eq!(at("z = 3"), "seal[1].hsm[0]");
    }
}
