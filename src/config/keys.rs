//! Keys of the file that no table takes. serde skips them (`serde_ignored` names each by
//! its path) so that every one is reported with the rest of the file's errors, each with
//! its line and, for a near miss, the key that was meant.

use super::raw::{RawConfig, RawIsolation, RawModel, RawPython, RawServe, RawSupervisor};
use serde_aux::serde_introspection::serde_introspect as fields;

/// The keys a table takes, by the table's place in the file (without array indices).
fn known(table: &[&str]) -> Option<&'static [&'static str]> {
    Some(match table {
        [] => fields::<RawConfig>(),
        ["supervisor"] => fields::<RawSupervisor>(),
        ["model"] => fields::<RawModel>(),
        ["model", "serve"] => fields::<RawServe>(),
        ["model", "python"] => fields::<RawPython>(),
        ["model", "isolation"] => fields::<RawIsolation>(),
        _ => return None,
    })
}

/// A path as serde_ignored gives it (`model.0.$__serde_spanned_private_value.colour`):
/// its segments, without serde's own (`Spanned`'s, `Option`'s `?`).
fn segments(path: &str) -> Vec<&str> {
    path.split('.')
        .filter(|s| !s.starts_with("$__") && *s != "?")
        .collect()
}

/// How a table is written in the file: `[supervisor]`, `[[model]]`, `[model.serve]`.
fn table_name(table: &[&str]) -> String {
    match table {
        [] => "the file's top level".into(),
        ["model"] => "[[model]]".into(),
        t => format!("[{}]", t.join(".")),
    }
}

/// The key of `candidates` that `key` most likely meant: one edit or transposition away,
/// or two for a longer key.
fn near(key: &str, candidates: &[&'static str]) -> Option<&'static str> {
    let most = if key.len() > 6 { 2 } else { 1 };
    candidates
        .iter()
        .map(|c| (strsim::damerau_levenshtein(key, c), *c))
        .filter(|(d, _)| *d <= most)
        .min()
        .map(|(_, c)| c)
}

/// The error of an unknown key at serde_ignored's `path` in `text`: its line and message.
pub(super) fn unknown(text: &str, path: &str) -> (usize, String) {
    let segments = segments(path);
    let (key, table) = segments
        .split_last()
        .map_or(("", &[][..]), |(k, t)| (*k, t));
    let table: Vec<&str> = table
        .iter()
        .copied()
        .filter(|s| s.parse::<usize>().is_err())
        .collect();
    let mut message = format!("unknown field `{key}` in {}", table_name(&table));
    if let Some(meant) = known(&table).and_then(|k| near(key, k)) {
        message += &format!(" (did you mean `{meant}`?)");
    }
    (line_of(text, &segments), message)
}

/// The line (1-based) where the key at `segments` is written: each table found after the
/// one before it (`[[model]]` by its index, `[supervisor]`, `[model.serve]` or `serve =
/// { … }`), then the key in it; the table's line if the key cannot be found.
fn line_of(text: &str, segments: &[&str]) -> usize {
    let lines: Vec<&str> = text.lines().collect();
    let bare = |l: &str| l.split('#').next().unwrap_or("").trim().replace(' ', "");
    let is_model = |l: &str| bare(l) == "[[model]]";
    let writes_key = |l: &str, key: &str| {
        let l = bare(l);
        l.starts_with(&format!("{key}="))
            || l.contains(&format!("{{{key}="))
            || l.contains(&format!(",{key}="))
    };
    let (mut at, mut end) = (0, lines.len());
    let mut rest = segments;
    while let Some((first, tail)) = rest.split_first() {
        let found = match (*first, tail.first().and_then(|i| i.parse::<usize>().ok())) {
            ("model", Some(n)) => {
                rest = &tail[1..];
                let starts: Vec<usize> = (0..lines.len()).filter(|&i| is_model(lines[i])).collect();
                starts.get(n).map(|&i| {
                    end = starts.get(n + 1).copied().unwrap_or(lines.len());
                    i
                })
            }
            (name, _) => {
                rest = tail;
                let header = |l: &str| {
                    let l = bare(l);
                    l == format!("[{name}]") || l.ends_with(&format!(".{name}]"))
                };
                (at..end).find(|&i| header(lines[i]) || writes_key(lines[i], name))
            }
        };
        match found {
            Some(i) => at = i,
            None => break,
        }
    }
    at + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "[supervisor]\nfront_door = 1\n\n[[model]]\nname = \"a\"\n\n[[model]]\nname = \"b\"\ncolour = \"red\"\nisolation = { pid = true, pdi = true }\n[model.serve]\nhelth = \"/h\"\n";

    #[test]
    fn each_unknown_key_has_its_line_and_the_key_it_was_near() {
        let cases = [
            (
                "supervisor.?.$__serde_spanned_private_value.front_door",
                (2, "unknown field `front_door` in [supervisor]"),
            ),
            (
                "model.1.$__serde_spanned_private_value.colour",
                (9, "unknown field `colour` in [[model]]"),
            ),
            (
                "model.1.$__serde_spanned_private_value.isolation.?.$__serde_spanned_private_value.pdi",
                (
                    10,
                    "unknown field `pdi` in [model.isolation] (did you mean `pid`?)",
                ),
            ),
            (
                "model.1.$__serde_spanned_private_value.serve.?.$__serde_spanned_private_value.helth",
                (
                    12,
                    "unknown field `helth` in [model.serve] (did you mean `health`?)",
                ),
            ),
            (
                "modle",
                (
                    1,
                    "unknown field `modle` in the file's top level (did you mean `model`?)",
                ),
            ),
        ];
        for (path, (line, message)) in cases {
            assert_eq!(unknown(TEXT, path), (line, message.to_owned()), "{path}");
        }
    }

    #[test]
    fn near_misses_are_one_or_two_edits_away() {
        let keys = ["gpu_quota", "memory_limit", "name"];
        assert_eq!(near("gpu_qouta", &keys), Some("gpu_quota"));
        assert_eq!(near("memroy_limt", &keys), Some("memory_limit"));
        assert_eq!(near("nmae", &keys), Some("name"));
        assert_eq!(near("colour", &keys), None);
    }
}
