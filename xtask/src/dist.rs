//! `cargo xtask dist`: the static site in one folder that any static host serves as it is: the
//! page and the embed example, the generated `pkg/`, the models that `web/models/index.json`
//! names, the example X-rays, the model card and a `README.txt` on hosting it. Every URL in
//! the page is relative, and the Content-Security-Policy lives in its `<meta>` elements, so the
//! folder works under any sub-path with no server configuration.

use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};

/// How to host the folder, written into it as `README.txt`.
const README: &str = "\
Pneumoscope: a chest X-ray classifier that runs in the browser
================================================================

This folder is the whole site. Copy it to any static web host (a course page, GitHub Pages,
an nginx or Apache folder, `python3 -m http.server`) under any path; nothing else is needed.

- index.html   the page: choose an X-ray, see the probabilities and the Grad-CAM map
- embed.html   how to put the <pneumoscope-classifier> element into a page of your own
- models/      the model files the page offers (index.json lists them; the first is the default)
- examples/    example X-rays with their source, label and licence (examples.json)
- pkg/         the WebAssembly library the page runs
- docs/        the model card: how the models were trained and how well they do

Images never leave the visitor's machine: the page classifies them in the browser and sends
nothing. Its Content-Security-Policy is in the <meta> elements of the HTML files, so the host
needs no configuration, but it must serve .wasm files as application/wasm (every common
server does) and over HTTPS or from localhost (browsers require it for WebAssembly workers).

Not a medical device: the page is for teaching and research, never for diagnosis.
";

/// The site being written: its folder and the files in it, relative to it.
struct Site {
    dir: PathBuf,
    files: Vec<PathBuf>,
}

impl Site {
    /// Copies `from` to `rel` in the site.
    fn copy(&mut self, from: &Path, rel: &Path) -> Result<()> {
        let to = self.dir.join(rel);
        std::fs::create_dir_all(to.parent().unwrap())?;
        std::fs::copy(from, &to)
            .with_context(|| format!("cannot copy {} to {}", from.display(), to.display()))?;
        self.files.push(rel.to_path_buf());
        Ok(())
    }

    /// Copies every visible file at the top of `dir` into the site's folder `into`.
    fn copy_visible(&mut self, dir: &Path, into: &Path) -> Result<()> {
        for entry in sorted(dir)? {
            let name = entry.file_name().unwrap().to_string_lossy().to_string();
            if entry.is_file() && !name.starts_with('.') {
                self.copy(&entry, &into.join(&name))?;
            }
        }
        Ok(())
    }

    /// Writes `text` to `rel` in the site.
    fn write(&mut self, rel: &str, text: &str) -> Result<()> {
        std::fs::write(self.dir.join(rel), text)?;
        self.files.push(rel.into());
        Ok(())
    }
}

/// Builds the site into `out` (replacing what was there) from `web/`, `pkg/` and `docs/`.
/// Returns the list of files written, relative to `out`.
pub fn build(root: &Path, pkg: &Path, out: &Path) -> Result<Vec<PathBuf>> {
    let web = root.join("web");
    let tmp = out.with_extension("building");
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)?;
    }
    std::fs::create_dir_all(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    let mut site = Site {
        dir: tmp.clone(),
        files: Vec::new(),
    };
    // The page: every visible file at the top of web/.
    site.copy_visible(&web, Path::new(""))?;
    // The models the index names, and the index.
    let index_path = web.join("models/index.json");
    let index: serde_json::Value = serde_json::from_slice(
        &std::fs::read(&index_path)
            .with_context(|| format!("cannot read {}", index_path.display()))?,
    )
    .with_context(|| format!("{} is not JSON", index_path.display()))?;
    for name in model_files(&index)? {
        site.copy(
            &web.join("models").join(&name),
            &Path::new("models").join(&name),
        )?;
    }
    // The examples, when there are any.
    let examples = web.join("examples");
    if examples.is_dir() {
        site.copy_visible(&examples, Path::new("examples"))?;
    }
    // The library: the JavaScript glue and the WebAssembly module of each build (CPU only, and
    // with WebGPU).
    for (module, _) in crate::web::MODULES {
        for name in [format!("{module}.js"), format!("{module}_bg.wasm")] {
            site.copy(&pkg.join(&name), &Path::new("pkg").join(&name))?;
        }
    }
    site.copy(
        &root.join("docs/model-card.md"),
        Path::new("docs/model-card.md"),
    )?;
    write_index(&mut site, index)?;
    site.write("README.txt", README)?;
    version_service_worker(&site)?;
    if out.exists() {
        std::fs::remove_dir_all(out)
            .with_context(|| format!("cannot replace {}", out.display()))?;
    }
    std::fs::rename(&tmp, out)?;
    Ok(site.files)
}

/// Writes the index as the page reads it, with each model's download size, so that the page
/// can say it before fetching the model.
fn write_index(site: &mut Site, mut index: serde_json::Value) -> Result<()> {
    for m in index["models"].as_array_mut().into_iter().flatten() {
        if let Some(name) = m["file"].as_str() {
            let len = std::fs::metadata(site.dir.join("models").join(name))?.len();
            m["bytes"] = serde_json::json!(len);
        }
    }
    site.write(
        "models/index.json",
        &(serde_json::to_string_pretty(&index)? + "\n"),
    )
}

/// Names the service worker's cache by a checksum of everything else, so that a new version of
/// the site replaces the old cache.
fn version_service_worker(site: &Site) -> Result<()> {
    let version = site_version(&site.dir, &site.files)?;
    let sw = site.dir.join(SERVICE_WORKER);
    let text = std::fs::read_to_string(&sw)
        .with_context(|| format!("the site has no {SERVICE_WORKER}"))?;
    if !text.contains(VERSION_MARK) {
        bail!("web/{SERVICE_WORKER} has no `{VERSION_MARK}` line to version");
    }
    std::fs::write(
        &sw,
        text.replacen(VERSION_MARK, &format!("const VERSION = \"{version}\";"), 1),
    )?;
    Ok(())
}

/// The service worker, at the top of the site.
const SERVICE_WORKER: &str = "sw.js";
/// The line of `web/sw.js` that `build` rewrites with the site's version.
const VERSION_MARK: &str = "const VERSION = \"dev\";";

/// The first 16 hex digits of the SHA-256 of every file of the site but the service worker,
/// names and contents, in name order.
fn site_version(dir: &Path, files: &[PathBuf]) -> Result<String> {
    use sha2::{Digest, Sha256};
    let mut names: Vec<&PathBuf> = files
        .iter()
        .filter(|f| f.as_path() != Path::new(SERVICE_WORKER))
        .collect();
    names.sort();
    let mut h = Sha256::new();
    for f in names {
        h.update(f.to_string_lossy().as_bytes());
        h.update([0]);
        h.update(std::fs::read(dir.join(f))?);
    }
    let hex: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    Ok(hex[..16].to_string())
}

/// The files of a folder, sorted by name.
fn sorted(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()?;
    v.sort();
    Ok(v)
}

/// Every model file `index.json` names (its default, its list and its lung segmenter), once
/// each, in that order. A name that would lead out of `models/` is refused.
pub fn model_files(index: &serde_json::Value) -> Result<Vec<String>> {
    let mut names: Vec<String> = Vec::new();
    let listed = index["models"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["file"].as_str());
    for name in index["default"]
        .as_str()
        .into_iter()
        .chain(listed)
        .chain(index["lungs"].as_str())
    {
        if name.is_empty() || name.contains('/') || name.contains('\\') || name.starts_with('.') {
            bail!("web/models/index.json names {name:?}, which is not a file of models/");
        }
        if !names.iter().any(|n| n == name) {
            names.push(name.to_string());
        }
    }
    if names.is_empty() {
        bail!("web/models/index.json names no model");
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_index_names_each_model_once_and_only_inside_models() {
        let index = serde_json::json!({
            "default": "a.pneumoscope",
            "lungs": "l.pneumoscope",
            "models": [{"file": "a.pneumoscope"}, {"file": "b.pneumoscope"}],
        });
        assert_eq!(
            model_files(&index).unwrap(),
            ["a.pneumoscope", "b.pneumoscope", "l.pneumoscope"]
        );
        for bad in ["../secret", "x/y.pneumoscope", ".hidden", ""] {
            let index = serde_json::json!({ "default": bad });
            assert!(model_files(&index).is_err(), "{bad:?} accepted");
        }
        assert!(model_files(&serde_json::json!({})).is_err());
    }

    #[test]
    fn the_examples_are_small_licensed_test_images() {
        let dir = crate::root().join("web/examples");
        let list: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("examples.json")).unwrap()).unwrap();
        let examples = list["examples"].as_array().unwrap();
        assert!(
            (5..=6).contains(&examples.len()),
            "{} examples",
            examples.len()
        );
        for e in examples {
            let file = e["file"].as_str().unwrap();
            let len = std::fs::metadata(dir.join(file)).unwrap().len();
            assert!(len <= 100_000, "{file}: {len} bytes");
            assert_eq!(e["bytes"].as_u64(), Some(len), "{file}");
            let licence = e["licence"].as_str().unwrap();
            assert!(
                licence.starts_with("CC BY") && !licence.contains("NC") && !licence.contains("ND")
                    || licence.starts_with("public"),
                "{file}: licence {licence}"
            );
            assert_ne!(
                e["source"], "folder",
                "{file}: the teaching set states no licence"
            );
            assert_eq!(e["split"], "test", "{file}");
            assert!(!e["credit"].as_str().unwrap().is_empty(), "{file}");
        }
    }

    #[test]
    fn the_site_holds_the_page_the_library_and_the_indexed_models() {
        let root = crate::root();
        let tmp = std::env::temp_dir().join(format!("pneumoscope-dist-{}", std::process::id()));
        let pkg = tmp.join("pkg-in");
        std::fs::create_dir_all(&pkg).unwrap();
        for module in ["pneumoscope", "pneumoscope_webgpu"] {
            std::fs::write(pkg.join(format!("{module}.js")), "export default 1;").unwrap();
            std::fs::write(pkg.join(format!("{module}_bg.wasm")), [0, 97, 115, 109]).unwrap();
        }
        std::fs::write(pkg.join("pneumoscope.d.ts"), "").unwrap();
        let out = tmp.join("site");
        let files = build(&root, &pkg, &out).unwrap();
        for want in [
            "index.html",
            "embed.html",
            "worker.js",
            "sw.js",
            "models/index.json",
            "pkg/pneumoscope_bg.wasm",
            "pkg/pneumoscope_webgpu_bg.wasm",
            "pkg/pneumoscope_webgpu.js",
            "docs/model-card.md",
            "README.txt",
        ] {
            assert!(out.join(want).is_file(), "{want} missing");
            assert!(
                files.iter().any(|f| f == Path::new(want)),
                "{want} not listed"
            );
        }
        assert!(!out.join("pkg/pneumoscope.d.ts").exists());
        let index: serde_json::Value =
            serde_json::from_slice(&std::fs::read(root.join("web/models/index.json")).unwrap())
                .unwrap();
        let served: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join("models/index.json")).unwrap()).unwrap();
        for m in served["models"].as_array().unwrap() {
            let file = m["file"].as_str().unwrap();
            let len = std::fs::metadata(root.join("web/models").join(file))
                .unwrap()
                .len();
            assert_eq!(m["bytes"].as_u64(), Some(len), "{file}: download size");
        }
        for m in model_files(&index).unwrap() {
            assert_eq!(
                std::fs::metadata(out.join("models").join(&m))
                    .unwrap()
                    .len(),
                std::fs::metadata(root.join("web/models").join(&m))
                    .unwrap()
                    .len(),
                "{m}"
            );
        }
        // The service worker names its cache after the site's contents.
        let version = |dir: &Path| {
            let sw = std::fs::read_to_string(dir.join("sw.js")).unwrap();
            let line = sw.lines().find(|l| l.starts_with("const VERSION")).unwrap();
            line.to_string()
        };
        let first = version(&out);
        assert!(!first.contains("\"dev\""), "{first}");
        // Built again, the folder is replaced, not added to, and the same contents keep the
        // version; another library gives another.
        std::fs::write(out.join("stale.txt"), "old").unwrap();
        build(&root, &pkg, &out).unwrap();
        assert!(!out.join("stale.txt").exists());
        assert_eq!(version(&out), first);
        std::fs::write(pkg.join("pneumoscope.js"), "export default 2;").unwrap();
        build(&root, &pkg, &out).unwrap();
        assert_ne!(version(&out), first);
        std::fs::remove_dir_all(&tmp).unwrap();
    }
}
