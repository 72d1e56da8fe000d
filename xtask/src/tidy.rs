//! The tidy pass: every `unsafe` block or impl carries a `// SAFETY:` comment,
//! `unsafe` appears only in `sys.rs` files, and no test is `#[ignore]`d.

use std::fs;
use std::path::{Path, PathBuf};

const CRATES: [&str; 6] = [
    "ufork-core",
    "ufork-io",
    "ufork-daemon",
    "ufork-wsgi-like",
    "ufork-cli",
    "xtask",
];

pub fn run(root: &Path) -> Result<(), String> {
    eprintln!("==> tidy");
    let mut files = Vec::new();
    for krate in CRATES {
        collect(&root.join(krate), &mut files);
    }
    let mut problems = Vec::new();
    for file in &files {
        let Ok(text) = fs::read_to_string(file) else {
            continue;
        };
        check(file, &text, &mut problems);
    }
    if problems.is_empty() {
        eprintln!("tidy: {} files checked, 0 problems", files.len());
        Ok(())
    } else {
        for p in &problems {
            eprintln!("tidy: {p}");
        }
        Err(format!("tidy found {} problems", problems.len()))
    }
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            if path.file_name().is_some_and(|n| n != "target") {
                collect(&path, out);
            }
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn check(file: &Path, text: &str, problems: &mut Vec<String>) {
    let name = file.display();
    let is_sys = file.file_name().is_some_and(|n| n == "sys.rs");
    let is_tidy = file.ends_with("xtask/src/tidy.rs");
    let lines: Vec<&str> = text.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        let code = line.split("//").next().unwrap_or("");
        if is_tidy {
            continue;
        }
        if code.contains("#[ignore") {
            problems.push(format!(
                "{name}:{}: #[ignore] test (fix it or delete it)",
                i + 1
            ));
        }
        let unsafe_use = code.contains("unsafe {") || code.contains("unsafe impl");
        if unsafe_use {
            if !is_sys {
                problems.push(format!("{name}:{}: unsafe outside a sys.rs module", i + 1));
            }
            let documented = lines[..i]
                .iter()
                .rev()
                .take(8)
                .any(|l| l.contains("SAFETY:"));
            if !documented {
                problems.push(format!(
                    "{name}:{}: unsafe without a // SAFETY: comment",
                    i + 1
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn undocumented_unsafe_and_ignore_are_caught() {
        let mut problems = Vec::new();
        let bad = "fn f() {\n    unsafe { g() };\n}\n#[ignore]\n#[test]\nfn t() {}\n";
        check(Path::new("x/sys.rs"), bad, &mut problems);
        assert_eq!(problems.len(), 2, "{problems:?}");
        let mut problems = Vec::new();
        check(
            Path::new("x/lib.rs"),
            "// SAFETY: fine\nunsafe { g() };\n",
            &mut problems,
        );
        assert_eq!(problems.len(), 1, "outside sys.rs: {problems:?}");
        let mut problems = Vec::new();
        check(
            Path::new("x/sys.rs"),
            "// SAFETY: fine\nunsafe { g() };\n",
            &mut problems,
        );
        assert!(problems.is_empty());
    }
}
