//! The trainer's floors: no module but the crate root imports the command layer, and no two
//! modules import each other through any path (`tools/module-graph.py`). The checker itself is
//! tested on a small tree that breaks both rules.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn graph(src: &Path) -> Output {
    Command::new("python3")
        .arg(repo().join("tools/module-graph.py"))
        .arg(src)
        .output()
        .expect("python3 runs tools/module-graph.py")
}

#[test]
fn the_trainer_has_floors() {
    let out = graph(&repo().join("trainer/src"));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains(" 0 circles, 0 modules importing `commands`"),
        "{text}"
    );
}

#[test]
fn the_checker_finds_a_circle_and_an_import_of_the_command_layer() {
    let dir = std::env::temp_dir().join(format!("pneumoscope-floors-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("study")).unwrap();
    let write = |p: &str, s: &str| std::fs::write(dir.join(p), s).unwrap();
    write(
        "main.rs",
        "mod commands;\nmod study;\nmod train;\nfn main() { commands::run(); }\n",
    );
    write(
        "commands.rs",
        "use crate::study::cv;\npub fn run() { cv::go(); }\n",
    );
    write("study/mod.rs", "pub mod cv;\npub mod report;\n");
    // cv -> train -> study::report -> cv: a circle of three; report also calls the top.
    write("study/cv.rs", "pub fn go() { crate::train::fit(); }\n");
    write(
        "train.rs",
        "use crate::study::{report};\npub fn fit() { report::write(); }\n",
    );
    write(
        "study/report.rs",
        "pub fn write() { super::cv::go(); let _ = crate::commands::run; }\n",
    );
    let out = graph(&dir);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("study::report imports the command layer `commands`"),
        "{text}"
    );
    assert!(
        text.contains("import circle of 4 modules: commands, study::cv, study::report, train"),
        "{text}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
