//! Links: every relative link in the docs resolves to a file, and every
//! `#anchor` to a heading of the file it points into (GitHub's heading ids).

use super::*;

/// GitHub's heading ids of a Markdown file: lower case, punctuation
/// dropped, spaces to hyphens, `-1`, `-2` for repeats.
pub(super) fn anchors(file: &Path) -> BTreeSet<String> {
    let text = std::fs::read_to_string(file).unwrap();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut out = BTreeSet::new();
    let mut fence: Option<String> = None;
    for line in text.lines() {
        let t = line.trim_start();
        if t.starts_with("```") || t.starts_with("~~~") {
            let f: String = t.chars().take_while(|&c| c == '`' || c == '~').collect();
            match &fence {
                Some(open) if t.trim_end() == open => fence = None,
                None => fence = Some(f),
                _ => {}
            }
            continue;
        }
        if fence.is_some() || !t.starts_with('#') {
            continue;
        }
        let title = t.trim_start_matches('#');
        if !title.starts_with(' ') {
            continue;
        }
        let slug: String = title
            .trim()
            .to_lowercase()
            .chars()
            .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
            .map(|c| if c == ' ' { '-' } else { c })
            .collect();
        let n = seen.entry(slug.clone()).or_insert(0);
        out.insert(if *n == 0 {
            slug.clone()
        } else {
            format!("{slug}-{n}")
        });
        *n += 1;
    }
    out
}

/// Link targets of a Markdown file outside code blocks and code spans:
/// (line, target).
pub(super) fn links(file: &Path) -> Vec<(usize, String)> {
    let text = std::fs::read_to_string(file).unwrap();
    let mut out = Vec::new();
    let mut fence: Option<String> = None;
    for (i, line) in text.lines().enumerate() {
        let t = line.trim_start();
        if t.starts_with("```") || t.starts_with("~~~") {
            let f: String = t.chars().take_while(|&c| c == '`' || c == '~').collect();
            match &fence {
                Some(open) if t.trim_end() == open => fence = None,
                None => fence = Some(f),
                _ => {}
            }
            continue;
        }
        if fence.is_some() {
            continue;
        }
        // Drop code spans: `[x](y)` inside backticks is not a link.
        let mut plain = String::new();
        for (k, part) in line.split('`').enumerate() {
            if k % 2 == 0 {
                plain.push_str(part);
            }
        }
        let mut rest = plain.as_str();
        while let Some(at) = rest.find("](") {
            let after = &rest[at + 2..];
            let end = after.find(')').unwrap_or(after.len());
            let target = after[..end].split_whitespace().next().unwrap_or("");
            out.push((i + 1, target.to_string()));
            rest = &after[end..];
        }
        // Reference definitions: `[name]: target`.
        let def = plain.trim_start().strip_prefix('[');
        if let Some((_, target)) = def.and_then(|d| d.split_once("]: ")) {
            out.push((i + 1, target.trim().to_string()));
        }
    }
    out
}

#[test]
fn every_relative_link_in_the_docs_resolves() {
    let mut checked = 0;
    let mut broken = Vec::new();
    for page in pages() {
        for (line, target) in links(&page) {
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            checked += 1;
            let (path, anchor) = match target.split_once('#') {
                Some((p, a)) => (p, Some(a)),
                None => (target.as_str(), None),
            };
            let dest = if path.is_empty() {
                page.clone()
            } else {
                page.parent().unwrap().join(path)
            };
            let here = format!("{}:{line}: {target}", rel(&page));
            if !dest.exists() {
                broken.push(format!("{here}: no file {}", dest.display()));
                continue;
            }
            let is_md = dest.extension().is_some_and(|x| x == "md");
            if let Some(a) = anchor.filter(|a| is_md && !anchors(&dest).contains(*a)) {
                broken.push(format!("{here}: no heading #{a} in {}", rel(&dest)));
            }
        }
    }
    eprintln!("docs: checked {checked} relative links");
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
    assert!(checked >= 50, "only {checked} relative links found");
}
