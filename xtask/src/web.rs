//! Building the browser package `pkg/`: the root crate compiled to `wasm32-unknown-unknown` in
//! release, bound with `wasm-bindgen` and optimised with `wasm-opt` (binaryen from npm; Debian's
//! is too old for current wasm-bindgen output). Installs what it needs on a fresh machine.

use crate::{cache_dir, cargo, have, root, run, target_dir};
use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};
use std::path::PathBuf;
use std::process::Command;

/// The `wasm-bindgen-cli` this build installs; the `wasm-bindgen` crate in `Cargo.toml` is
/// pinned to the same exact version (a test checks it).
pub const WASM_BINDGEN_VERSION: &str = "0.2.130";

/// The browser target.
pub const TARGET: &str = "wasm32-unknown-unknown";

/// `wasm-opt` settings. `-O1`: as fast in the browser as `-O3` (72 vs 73 ms per inference on the
/// CPU backend) and smaller once gzipped (4.3 vs 4.6 MB), in about a minute instead of four.
/// The output is cached by the checksum of the input and these settings.
const WASM_OPT: [&str; 8] = [
    "-O1",
    "--enable-simd",
    "--enable-bulk-memory",
    "--enable-nontrapping-float-to-int",
    "--enable-sign-ext",
    "--enable-reference-types",
    "--enable-multivalue",
    "--enable-mutable-globals",
];

fn output(cmd: &mut Command) -> Option<String> {
    cmd.output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
}

/// The wasm target, `wasm-bindgen-cli` at the pinned version, and the npm packages.
pub fn ensure_tools() -> Result<()> {
    let installed = output(Command::new("rustup").args(["target", "list", "--installed"]));
    if !installed.is_some_and(|t| t.lines().any(|l| l.trim() == TARGET)) {
        run(Command::new("rustup").args(["target", "add", TARGET]))?;
    }
    let version = output(Command::new("wasm-bindgen").arg("--version")).unwrap_or_default();
    if version.split_whitespace().nth(1) != Some(WASM_BINDGEN_VERSION) {
        // Not `--locked`: the registry mirror may lack a yanked pin of the CLI's lock file.
        run(Command::new("cargo").args([
            "install",
            "wasm-bindgen-cli",
            "--version",
            WASM_BINDGEN_VERSION,
        ]))?;
    }
    ensure_npm()
}

/// `npm ci` when `node_modules/` is missing or older than the lock file.
pub fn ensure_npm() -> Result<()> {
    if !have("npm") {
        if !have("apt-get") {
            bail!("npm is missing and there is no apt-get to install it");
        }
        run(Command::new("apt-get").args(["install", "-y", "-qq", "nodejs", "npm"]))?;
    }
    let root = root();
    let stamp = root.join("node_modules/.package-lock.json");
    let lock = root.join("package-lock.json");
    let fresh = match (std::fs::metadata(&stamp), std::fs::metadata(&lock)) {
        (Ok(s), Ok(l)) => s.modified()? >= l.modified()?,
        _ => false,
    };
    if !fresh {
        run(Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&root))?;
    }
    Ok(())
}

/// Lower-case hex SHA-256 of `bytes`.
pub fn hex_sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The release wasm module cargo builds for `pkg/`, before `wasm-bindgen`.
fn release_module() -> PathBuf {
    target_dir().join(TARGET).join("release/pneumoscope.wasm")
}

/// The two modules of `pkg/`: the library with the WebGPU backend (`pneumoscope_webgpu.js`,
/// fetched only where WebGPU is measured or asked for), and without it (`pneumoscope.js`, the
/// CPU backend only, which every visit loads). The CPU module is built last, so that
/// [`profiling_pkg`] binds it.
pub const MODULES: [(&str, &[&str]); 2] = [
    ("pneumoscope_webgpu", &["--features", "webgpu"]),
    ("pneumoscope", &[]),
];

/// Builds `pkg/` (release): both [`MODULES`]; returns its folder.
pub fn build_pkg() -> Result<PathBuf> {
    ensure_tools()?;
    let pkg = root().join("pkg");
    for (name, features) in MODULES {
        build_module(&pkg, name, features)?;
    }
    Ok(pkg)
}

/// Compiles the crate for the browser with `features`, binds it as `pkg/NAME.js` +
/// `pkg/NAME_bg.wasm`, optimises the module and prints its sizes.
fn build_module(pkg: &std::path::Path, name: &str, features: &[&str]) -> Result<()> {
    run(cargo()
        .args([
            "rustc",
            "--lib",
            "--release",
            "--target",
            TARGET,
            "-p",
            "pneumoscope",
        ])
        .args(features)
        .args(["--crate-type", "cdylib"]))?;
    let wasm = release_module();
    run(Command::new("wasm-bindgen")
        .args(["--target", "web", "--out-name", name, "--out-dir"])
        .arg(pkg)
        .arg(&wasm))?;
    let glue = pkg.join(format!("{name}.js"));
    let js = std::fs::read_to_string(&glue)
        .with_context(|| format!("cannot read {}", glue.display()))?;
    unresolved_imports(&js, name)?;
    // wasm-opt takes a minute on this size: its output is cached.
    let bound = pkg.join(format!("{name}_bg.wasm"));
    let input =
        std::fs::read(&bound).with_context(|| format!("cannot read {}", bound.display()))?;
    let key = hex_sha256(format!("{} {}", hex_sha256(&input), WASM_OPT.join(" ")).as_bytes());
    let cached = cache_dir().join("wasm-opt").join(format!("{key}.wasm"));
    if !cached.is_file() {
        std::fs::create_dir_all(cached.parent().unwrap())?;
        let tmp = cached.with_extension("tmp");
        run(Command::new(root().join("node_modules/.bin/wasm-opt"))
            .args(WASM_OPT)
            .arg(&bound)
            .arg("-o")
            .arg(&tmp))?;
        std::fs::rename(&tmp, &cached)?;
    }
    std::fs::copy(&cached, &bound)?;
    let (raw, gz) = sizes(&bound)?;
    let what = if features.is_empty() {
        "the CPU module: what every visit downloads from a server that compresses; the model \
         comes on top"
    } else {
        "the WebGPU module: fetched only where WebGPU is measured or asked for"
    };
    println!(
        "{}: {:.2} MB, {:.2} MB gzipped ({what})",
        bound.display(),
        raw as f64 / 1e6,
        gz as f64 / 1e6
    );
    Ok(())
}

/// Raw and gzipped (level 9) sizes of a file, in bytes.
pub fn sizes(path: &std::path::Path) -> Result<(usize, usize)> {
    use std::io::Write;
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(&bytes)?;
    Ok((bytes.len(), gz.finish()?.len()))
}

/// The CPU module of the last [`build_pkg`], bound again with its function names kept and
/// without `wasm-opt` (which drops them), for profiles; returns its folder.
pub fn profiling_pkg() -> Result<PathBuf> {
    let wasm = release_module();
    let out = target_dir().join("profile-pkg");
    run(Command::new("wasm-bindgen")
        .args(["--keep-debug", "--target", "web", "--out-dir"])
        .arg(&out)
        .arg(&wasm))?;
    Ok(out)
}

/// Refuses a module that imports from `env`: functions some dependency declared `extern "C"`
/// (C's `malloc`, say) that nothing defined. wasm-bindgen leaves them as imports of a module no
/// browser has, and the page's worker would then fail to start without a message.
fn unresolved_imports(glue: &str, name: &str) -> Result<()> {
    let env = glue
        .lines()
        .filter(|l| l.starts_with("import ") && l.ends_with("from \"env\""))
        .count();
    anyhow::ensure!(
        env == 0,
        "pkg/{name}_bg.wasm imports {env} function(s) from \"env\" that no crate defines \
         (a dependency's extern \"C\" functions; see src/wasm_libc.rs): the browser cannot start it"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_crate_is_pinned_to_the_cli_version() {
        let manifest = std::fs::read_to_string(root().join("Cargo.toml")).unwrap();
        assert!(
            manifest.contains(&format!("wasm-bindgen = \"={WASM_BINDGEN_VERSION}\"")),
            "Cargo.toml must pin wasm-bindgen to ={WASM_BINDGEN_VERSION}"
        );
        let lock = std::fs::read_to_string(root().join("Cargo.lock")).unwrap();
        assert!(lock.contains(&format!(
            "name = \"wasm-bindgen\"\nversion = \"{WASM_BINDGEN_VERSION}\""
        )));
    }

    #[test]
    fn a_module_that_imports_from_env_is_refused() {
        let good = "import { foo } from './snippets/a.js';\nexport class Classifier {}\n";
        unresolved_imports(good, "pneumoscope").unwrap();
        let bad = format!("import * as import1 from \"env\"\n{good}");
        let e = unresolved_imports(&bad, "pneumoscope_webgpu")
            .unwrap_err()
            .to_string();
        assert!(e.contains("1 function(s) from \"env\""), "{e}");
        assert!(e.contains("pkg/pneumoscope_webgpu_bg.wasm"), "{e}");
    }
}
