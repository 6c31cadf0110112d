//! The template `observer config` prints: every key with its default
//! value and, above it, its field's doc comment.
//!
//! Generated from the structs, so that it cannot drift from them: the
//! values are what serde writes for `Config::default()` (and so what it
//! reads back), the comments are the fields' doc comments, which
//! `DocumentedFields` refuses to compile without. A section is introduced
//! by the doc comment of its field in `Config`.

use std::fmt::Write as _;

use documented::DocumentedFields;
use serde::Serialize;

use super::Config;

impl Config {
    /// The defaults as a documented TOML file (`observer config`). An error
    /// would be a default that TOML cannot hold (an integer past i64).
    pub fn documented_defaults() -> Result<String, toml::ser::Error> {
        let mut out = String::from("# observer configuration. Every key is optional; shown are the defaults.\n");
        // Destructured without `..`: a section added to Config and not
        // listed here does not compile.
        macro_rules! sections {
            ($($section:ident),*) => {{
                let Config { $($section),* } = Config::default();
                $( write_section(&mut out, stringify!($section), &$section)?; )*
            }};
        }
        sections!(daemon, history, capture, diagnosis, enrich, kernel, syslog, metrics, alerts, email, otlp);
        Ok(out)
    }
}

/// One `[section]` of the template: the section's doc comment, its header,
/// then each key in the struct's order with its doc comment above it.
fn write_section<T: Serialize + DocumentedFields>(
    out: &mut String,
    name: &str,
    section: &T,
) -> Result<(), toml::ser::Error> {
    let values = toml::Table::try_from(section)?;
    out.push('\n');
    write_comment(out, Config::get_field_docs(name).unwrap_or_default());
    let _ = writeln!(out, "[{name}]");
    for (key, doc) in T::FIELD_NAMES.iter().zip(T::FIELD_DOCS) {
        write_comment(out, doc);
        let _ = match values.get(*key) {
            Some(value) => writeln!(out, "{key} = {value}"),
            // serde leaves a `None` out: there is no value to show.
            None => writeln!(out, "# {key}: unset by default"),
        };
    }
    Ok(())
}

fn write_comment(out: &mut String, doc: &str) {
    for line in doc.lines() {
        out.push('#');
        if !line.is_empty() {
            out.push(' ');
            out.push_str(line);
        }
        out.push('\n');
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn parse(text: &str) -> Config {
        Config::parse(text, Path::new("template.toml")).unwrap()
    }

    #[test]
    fn documented_defaults_parse_back_to_the_defaults() {
        assert_eq!(parse(&Config::documented_defaults().unwrap()), Config::default());
    }

    #[test]
    fn every_key_of_the_defaults_is_in_the_template_with_a_comment_above_it() {
        let template = Config::documented_defaults().unwrap();
        let lines: Vec<&str> = template.lines().collect();
        let defaults = toml::Table::try_from(Config::default()).unwrap();
        assert!(!defaults.is_empty());
        for (section, keys) in &defaults {
            let keys = keys.as_table().unwrap();
            let header = format!("[{section}]");
            let start = lines.iter().position(|l| *l == header).unwrap_or_else(|| panic!("no {header}"));
            assert!(lines[start - 1].starts_with('#'), "no comment above {header}");
            let end = lines[start + 1..].iter().position(|l| l.starts_with('[')).map_or(lines.len(), |n| start + 1 + n);
            assert!(!keys.is_empty(), "{header} is empty");
            for (key, value) in keys {
                let line = format!("{key} = {value}");
                let at = lines[start..end]
                    .iter()
                    .position(|l| *l == line)
                    .unwrap_or_else(|| panic!("{section}.{key}: no `{line}` under {header}"));
                assert!(lines[start + at - 1].starts_with("# "), "{section}.{key}: no comment above it");
            }
        }
    }
}
