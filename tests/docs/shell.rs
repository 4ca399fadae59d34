//! Taking shell apart, as far as the examples need: the command lines of a
//! code block, by its language, split into simple commands and words, and
//! the `dlock` invocations among them.

use super::*;

/// The shell command lines of a block: continuations joined, and only the
/// parts that are commands for its language.
pub(super) fn command_lines(b: &Block) -> Vec<String> {
    // Join `\`-continued lines first.
    let mut lines = Vec::new();
    let mut cur = String::new();
    for l in b.body.lines() {
        if let Some(head) = l.strip_suffix('\\') {
            cur.push_str(head);
            cur.push(' ');
        } else {
            cur.push_str(l);
            lines.push(std::mem::take(&mut cur));
        }
    }
    if !cur.is_empty() {
        lines.push(cur);
    }
    match b.lang.as_str() {
        "sh" | "bash" | "shell" => without_heredocs(lines),
        "console" => lines
            .into_iter()
            .filter_map(|l| l.strip_prefix("$ ").map(str::to_string))
            .collect(),
        "cron" => lines
            .into_iter()
            .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
            // `MAILTO=...` and other assignments are not schedule lines.
            .filter(|l| {
                l.trim_start()
                    .starts_with(|c: char| c == '*' || c == '@' || c.is_ascii_digit())
            })
            .map(|l| {
                let skip = if l.trim_start().starts_with('@') {
                    1
                } else {
                    5
                };
                l.split_whitespace()
                    .skip(skip)
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect(),
        "ini" => lines
            .into_iter()
            .filter_map(|l| {
                let (k, v) = l.split_once('=')?;
                k.trim()
                    .starts_with("Exec")
                    .then(|| v.trim_start_matches(['-', '@', ':', '+', '!']).to_string())
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// The lines of a script without the bodies of its here-documents
/// (`cat > f <<'EOF'` ... `EOF`): they are data, not commands.
pub(super) fn without_heredocs(lines: Vec<String>) -> Vec<String> {
    let mut out = Vec::new();
    let mut until: Option<String> = None;
    for l in lines {
        if let Some(end) = &until {
            if l.trim() == end {
                until = None;
            }
            continue;
        }
        if let Some(at) = l.find("<<") {
            let word: String = l[at + 2..]
                .trim_start_matches('-')
                .trim_start()
                .trim_start_matches(['\'', '"'])
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !word.is_empty() {
                until = Some(word);
            }
        }
        out.push(l);
    }
    out
}

/// Split one line of shell into simple commands, each a list of words.
/// Handles quotes, backslashes, comments, `|`, `||`, `&&`, `;`, `&`,
/// redirections (dropped with their target) and `$(...)`, whose commands
/// are returned too (the word keeps a placeholder in its place).
pub(super) fn simple_commands(line: &str) -> Vec<Vec<String>> {
    let mut s = Splitter::default();
    let chars: Vec<char> = line.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            ' ' | '\t' => s.end_word(),
            '#' if !s.in_word => break,
            '\\' => {
                if let Some(&n) = chars.get(i + 1) {
                    s.word.push(n);
                    i += 1;
                }
                s.in_word = true;
            }
            '\'' => {
                let close = chars[i + 1..]
                    .iter()
                    .position(|&x| x == '\'')
                    .unwrap_or_else(|| panic!("unclosed ' in {line:?}"));
                s.word.extend(&chars[i + 1..i + 1 + close]);
                i += close + 1;
                s.in_word = true;
            }
            '"' => {
                i += 1;
                while i < chars.len() && chars[i] != '"' {
                    if chars[i] == '\\' && i + 1 < chars.len() {
                        s.word.push(chars[i + 1]);
                        i += 2;
                    } else if chars[i] == '$' && chars.get(i + 1) == Some(&'(') {
                        let (inner, next) = subst(&chars, i + 2, line);
                        s.out.extend(simple_commands(&inner));
                        s.word.push_str("SUBST");
                        i = next;
                    } else {
                        s.word.push(chars[i]);
                        i += 1;
                    }
                }
                assert!(i < chars.len(), "unclosed \" in {line:?}");
                s.in_word = true;
            }
            '$' if chars.get(i + 1) == Some(&'(') => {
                let (inner, next) = subst(&chars, i + 2, line);
                s.out.extend(simple_commands(&inner));
                s.word.push_str("SUBST");
                s.in_word = true;
                i = next - 1;
            }
            '|' | ';' => s.end_cmd(),
            '&' if chars.get(i + 1) == Some(&'>') => {
                // `&>FILE`: a redirection.
                s.end_word();
                i += 1;
                if chars.get(i + 1) == Some(&'>') {
                    i += 1;
                }
                s.drop_next = true;
            }
            '&' => s.end_cmd(),
            '>' | '<' if !s.in_word || s.word.chars().all(|d| d.is_ascii_digit()) => {
                // `>`, `>>`, `2>`, `2>&1`, `<`: drop it and its target.
                s.word.clear();
                s.in_word = false;
                while matches!(chars.get(i + 1), Some('>' | '<' | '|')) {
                    i += 1;
                }
                if chars.get(i + 1) == Some(&'&') {
                    i += 1;
                    while matches!(chars.get(i + 1), Some(d) if d.is_ascii_digit() || *d == '-') {
                        i += 1;
                    }
                } else {
                    s.drop_next = true;
                }
            }
            _ => {
                s.word.push(c);
                s.in_word = true;
            }
        }
        i += 1;
    }
    s.end_cmd();
    s.out
}

/// The state of [`simple_commands`].
#[derive(Default)]
pub(super) struct Splitter {
    out: Vec<Vec<String>>,
    cmd: Vec<String>,
    word: String,
    in_word: bool,
    /// Set while the next word is a redirection's target, to be dropped.
    drop_next: bool,
}

impl Splitter {
    fn end_word(&mut self) {
        if self.in_word {
            let w = std::mem::take(&mut self.word);
            if !std::mem::take(&mut self.drop_next) {
                self.cmd.push(w);
            }
            self.in_word = false;
        }
    }

    fn end_cmd(&mut self) {
        self.end_word();
        if !self.cmd.is_empty() {
            self.out.push(std::mem::take(&mut self.cmd));
        }
    }
}

/// The text of a `$(...)` that starts at `from` (after the parenthesis),
/// and the index just past its closing parenthesis.
pub(super) fn subst(chars: &[char], from: usize, line: &str) -> (String, usize) {
    let mut depth = 1;
    let mut quote: Option<char> = None;
    for (j, &c) in chars.iter().enumerate().skip(from) {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '\'' | '"') => quote = Some(c),
            (None, '(') => depth += 1,
            (None, ')') => {
                depth -= 1;
                if depth == 0 {
                    return (chars[from..j].iter().collect(), j + 1);
                }
            }
            _ => {}
        }
    }
    panic!("unclosed $( in {line:?}");
}

/// The arguments of dlock in a simple command, if it runs dlock: after
/// environment assignments and wrappers such as `sudo`, a word `dlock` or
/// `.../dlock`, or `cargo run [--release] -- ARGS` in this package.
pub(super) fn dlock_args(words: &[String]) -> Option<Vec<String>> {
    let is_assignment = |w: &str| {
        w.split_once('=').is_some_and(|(k, _)| {
            !k.is_empty()
                && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !k.starts_with(|c: char| c.is_ascii_digit())
        })
    };
    let wrappers = [
        "sudo", "exec", "command", "env", "nohup", "time", "do", "then", "else", "!",
    ];
    let mut w = words;
    while let Some(first) = w.first() {
        if is_assignment(first) || wrappers.contains(&first.as_str()) {
            w = &w[1..];
        } else {
            break;
        }
    }
    let first = w.first()?;
    if first == "dlock" || first.ends_with("/dlock") {
        return Some(w[1..].to_vec());
    }
    if first == "cargo" && w.get(1).is_some_and(|s| s == "run") {
        let dash = w.iter().position(|s| s == "--")?;
        let before = &w[2..dash];
        if before.iter().all(|s| s == "--release" || s == "-q") {
            return Some(w[dash + 1..].to_vec());
        }
    }
    None
}

/// Every dlock invocation of a block: (the line it is on, its arguments).
pub(super) fn invocations(b: &Block) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    for line in command_lines(b) {
        for words in simple_commands(&line) {
            if let Some(args) = dlock_args(&words) {
                out.push((line.trim().to_string(), args));
            }
        }
    }
    out
}

/// The extractor itself, on the shell the docs use.
#[test]
fn the_extractor_takes_shell_apart() {
    let cmds = |s: &str| simple_commands(s);
    assert_eq!(
        cmds(r#"H=$(dlock acquire --key deploy --ttl 15m)   # step 1"#),
        vec![
            vec!["dlock", "acquire", "--key", "deploy", "--ttl", "15m"],
            vec!["H=SUBST"]
        ]
    );
    assert_eq!(
        cmds(r#"dlock run -c --key r -- 'ls | wc -l' 2>&1 | tee log && echo "done $(date)" > out"#),
        vec![
            vec!["dlock", "run", "-c", "--key", "r", "--", "ls | wc -l"],
            vec!["tee", "log"],
            vec!["date"],
            vec!["echo", "done SUBST"],
        ]
    );
    assert_eq!(
        dlock_args(&[
            "DLOCK_BACKEND=redis://x".into(),
            "dlock".into(),
            "ping".into()
        ]),
        Some(vec!["ping".to_string()])
    );
    assert_eq!(
        dlock_args(&["cargo", "run", "--release", "--", "run", "--key", "k"].map(String::from)),
        Some(
            vec!["run", "--key", "k"]
                .into_iter()
                .map(String::from)
                .collect()
        )
    );
    assert_eq!(
        dlock_args(&["cargo", "run", "--example", "torture", "--", "x"].map(String::from)),
        None
    );
    let cron = Block {
        file: String::new(),
        line: 0,
        lang: "cron".into(),
        marker: None,
        body: "MAILTO=ops\n*/5 * * * * dlock -q run -n --key a -- /x.sh\n".into(),
    };
    assert_eq!(invocations(&cron).len(), 1);
    let heredoc = Block {
        lang: "sh".into(),
        body: "cat > f <<'EOF'\ndlock not a command\nEOF\ndlock ping\n".into(),
        ..cron
    };
    assert_eq!(
        invocations(&heredoc),
        vec![("dlock ping".to_string(), vec!["ping".to_string()])]
    );
    // A renamed flag is caught.
    assert!(
        parse(&[
            "run".into(),
            "--key".into(),
            "a".into(),
            "--".into(),
            "true".into()
        ])
        .is_ok()
    );
    assert!(
        parse(&[
            "run".into(),
            "--keys".into(),
            "a".into(),
            "--".into(),
            "true".into()
        ])
        .is_err()
    );
}
