//! The README's tables of `error_kind`s and the alert rules name exactly the kinds the code
//! defines (`runtime/src/error_kind.rs`), with the stages that report them.

use std::collections::BTreeMap;
use std::path::Path;

use boomerang_runtime::error_kind::{DeadLetterKind, ErrorKind};

fn repository_file(path: &str) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    std::fs::read_to_string(root.join(path)).unwrap_or_else(|error| panic!("{path}: {error}"))
}

/// The rows of the README table between `<!-- {marker}` and `<!-- end of {marker}`: kind →
/// stages.
fn readme_table(marker: &str) -> BTreeMap<String, String> {
    let readme = repository_file("README.md");
    let start = readme
        .find(&format!("<!-- {marker}"))
        .unwrap_or_else(|| panic!("the README has no table marked {marker}"));
    let end = readme[start..]
        .find(&format!("<!-- end of {marker}"))
        .map(|end| start + end)
        .unwrap_or_else(|| panic!("the README's {marker} table has no end marker"));
    readme[start..end]
        .lines()
        .filter_map(|line| {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            let kind = cells.get(1)?.strip_prefix('`')?.strip_suffix('`')?;
            let stages = cells.get(2)?;
            (kind != "error_kind").then(|| (kind.to_string(), stages.to_string()))
        })
        .collect()
}

fn defined(
    kinds: impl Iterator<Item = (&'static str, &'static [&'static str])>,
) -> BTreeMap<String, String> {
    kinds
        .map(|(kind, stages)| (kind.to_string(), stages.join(", ")))
        .collect()
}

#[test]
fn the_readme_lists_every_dead_letter_kind_and_no_other() {
    let code = defined(
        DeadLetterKind::ALL
            .iter()
            .map(|kind| (kind.as_str(), kind.stages())),
    );
    assert_eq!(readme_table("dead-letter kinds"), code);
}

#[test]
fn the_readme_lists_every_error_kind_and_no_other() {
    let code = defined(
        ErrorKind::ALL
            .iter()
            .map(|kind| (kind.as_str(), kind.stages())),
    );
    assert_eq!(readme_table("error kinds"), code);
}

#[test]
fn the_alert_rules_name_only_kinds_the_code_reports() {
    let known: Vec<&str> = DeadLetterKind::ALL
        .iter()
        .map(|kind| kind.as_str())
        .chain(ErrorKind::ALL.iter().map(|kind| kind.as_str()))
        .collect();
    for file in [
        "deploy/monitoring/alerts.yml",
        "deploy/monitoring/alerts.test.yml",
    ] {
        let text = repository_file(file);
        for (position, _) in text.match_indices("error_kind=") {
            let rest = text[position + "error_kind=".len()..].trim_start_matches(['"', '\\']);
            let kind: String = rest
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                .collect();
            assert!(
                known.contains(&kind.as_str()),
                "{file} names error_kind {kind:?}, which no stage reports"
            );
        }
    }
}
