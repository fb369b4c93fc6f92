//! Project tasks:
//!
//! - `cargo xtask serve [--port N]`: the main job: build `pkg/` and serve the page with the
//!   shipped default model on 127.0.0.1 ([`web`], [`server`]);
//! - `cargo xtask test`: set up a fresh machine and run every test: fmt, clippy (native and
//!   wasm32), the native tests, the core in Chromium (wasm-bindgen-test), the page end to end
//!   (playwright-core + Debian chromium, `tests/browser/`);
//! - `cargo xtask bench` / `bench-web`: native speed against PyTorch, in-browser speed against
//!   onnxruntime-web;
//! - `cargo xtask venv`: the test-only Python environment.
//!
//! Builds share one target directory that survives between runs:
//! `$CARGO_TARGET_DIR`, or `$HOME/.cache/pneumoscope/target` when it is not set.

mod dist;
mod server;
mod web;

use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The repository root. `cargo xtask` (`cargo run`) sets `CARGO_MANIFEST_DIR` at run time; the
/// compile-time value can be stale when another checkout sharing the target directory built
/// the binary last.
fn root() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// `$HOME/.cache/pneumoscope`: build outputs and tools that survive between runs.
fn cache_dir() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp"))
        .join(".cache/pneumoscope")
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| cache_dir().join("target"))
}

fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("+ {cmd:?}");
    let status = cmd
        .status()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}

/// Runs a test command, echoing its output, and adds up its summary lines: cargo's
/// `test result: ok. N passed; M failed; ...` and the browser tests' `ok - ...`/`not ok - ...`.
fn run_counting(cmd: &mut Command) -> Result<(usize, usize)> {
    use std::io::{BufRead, BufReader};
    eprintln!("+ {cmd:?}");
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    let (mut passed, mut failed) = (0, 0);
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line?;
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            let num = |key: &str| -> usize {
                rest.split(';')
                    .find_map(|p| {
                        p.trim().strip_suffix(key).map(|n| {
                            n.trim()
                                .trim_start_matches("ok. ")
                                .trim_start_matches("FAILED. ")
                                .to_string()
                        })
                    })
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0)
            };
            passed += num("passed");
            failed += num("failed");
        } else if line.starts_with("ok - ") {
            passed += 1;
        } else if line.starts_with("not ok - ") {
            failed += 1;
        }
    }
    let status = child.wait()?;
    if !status.success() && failed == 0 {
        bail!("{cmd:?} failed ({status})");
    }
    Ok((passed, failed))
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root()).env("CARGO_TARGET_DIR", target_dir());
    c
}

fn have(cmd: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {cmd} >/dev/null 2>&1"))
        .status()
        .is_ok_and(|s| s.success())
}

/// Debian packages the tests need, with a file that proves each is installed.
const APT: [(&str, &str); 3] = [
    (
        "fonts-dejavu-core",
        "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    ),
    ("chromium", "/usr/bin/chromium"),
    ("chromium-driver", "/usr/bin/chromedriver"),
];

fn ensure_system() -> Result<()> {
    let missing: Vec<&str> = APT
        .iter()
        .filter(|(_, f)| !Path::new(f).exists())
        .map(|(p, _)| *p)
        .collect();
    if !missing.is_empty() {
        if !have("apt-get") {
            bail!("missing system packages {missing:?} and no apt-get to install them");
        }
        run(Command::new("apt-get").arg("update").arg("-qq"))?;
        run(Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing))?;
    }
    for comp in ["rustfmt", "clippy"] {
        let probe = if comp == "rustfmt" {
            "cargo fmt --version"
        } else {
            "cargo clippy --version"
        };
        if !Command::new("sh")
            .arg("-c")
            .arg(format!("{probe} >/dev/null 2>&1"))
            .status()
            .is_ok_and(|s| s.success())
        {
            run(Command::new("rustup").args(["component", "add", comp]))?;
        }
    }
    Ok(())
}

fn shared() -> Result<PathBuf> {
    let s = root().join("../shared");
    if !s.join("data").is_dir() {
        bail!(
            "{} not found: the tests read real data, weights and fixtures from ../shared",
            s.display()
        );
    }
    Ok(s.canonicalize()?)
}

fn test() -> Result<()> {
    ensure_system()?;
    web::ensure_tools()?;
    let shared = shared()?;
    // torch, torchvision and pytorch-grad-cam: the parity fixtures of the torchvision ports.
    let python = venv()?;
    std::fs::create_dir_all(target_dir())?;
    run(cargo().args(["fmt", "--all", "--check"]))?;
    let clippy = ["clippy", "--release", "--all-targets"];
    let deny = ["--", "-D", "warnings"];
    run(cargo().args(clippy).arg("--workspace").args(deny))?;
    run(cargo()
        .args(clippy)
        .args([
            "--target",
            web::TARGET,
            "-p",
            "pneumoscope",
            "--features",
            "webgpu",
        ])
        .args(deny))?;
    let mut total = (0, 0);
    let mut add = |(p, f): (usize, usize)| {
        total.0 += p;
        total.1 += f;
    };
    // Native: unit, CLI and integration tests on the real data.
    add(run_counting(
        cargo()
            .args(["test", "--workspace", "--release", "--no-fail-fast"])
            .env("PNEUMOSCOPE_SHARED", &shared)
            .env("PNEUMOSCOPE_PYTHON", &python),
    )?);
    // The core inside Chromium (wasm-bindgen-test, chromedriver), CPU and WebGPU backends.
    add(run_counting(
        cargo()
            .args(["test", "--release", "--target", web::TARGET])
            .args([
                "-p",
                "pneumoscope",
                "--features",
                "webgpu",
                "--test",
                "wasm",
            ])
            .env("CHROMEDRIVER", "/usr/bin/chromedriver")
            .env("WASM_BINDGEN_TEST_TIMEOUT", "900"),
    )?);
    // The served page end to end in Chromium, against the native CLI.
    add(browser_tests(&shared, &python)?);
    let (passed, failed) = total;
    println!("tests: {passed} passed, {failed} failed");
    if failed > 0 || passed == 0 {
        bail!("{failed} tests failed, {passed} passed");
    }
    Ok(())
}

/// Only the page's end-to-end tests (a quicker loop while working on the page).
fn e2e() -> Result<()> {
    ensure_system()?;
    web::ensure_tools()?;
    let shared = shared()?;
    let python = venv()?;
    run(cargo().args(["build", "--release", "-p", "pneumoscope-trainer"]))?;
    let (passed, failed) = browser_tests(&shared, &python)?;
    println!("tests: {passed} passed, {failed} failed");
    if failed > 0 || passed == 0 {
        bail!("{failed} tests failed, {passed} passed");
    }
    Ok(())
}

/// Builds `pkg/` and the site folder into `out` (`cargo xtask dist`); returns `out`.
fn site(out: &Path) -> Result<PathBuf> {
    let pkg = web::build_pkg()?;
    let files = dist::build(&root(), &pkg, out)?;
    let bytes: u64 = files
        .iter()
        .filter_map(|f| std::fs::metadata(out.join(f)).ok())
        .map(|m| m.len())
        .sum();
    println!(
        "site: {} files, {:.1} MB in {}",
        files.len(),
        bytes as f64 / 1e6,
        out.display()
    );
    Ok(out.to_path_buf())
}

/// Prints what a first visit downloads: the site's own files (the page, the scripts, the CPU
/// build of the library, the examples; the model card, the models and the WebGPU build aside),
/// then each model of the index and the total with it, raw and gzipped (what a server that
/// compresses sends). The WebGPU build is printed apart: only a visit that measures or forces
/// WebGPU downloads it.
fn first_visit(site: &Path) -> Result<()> {
    let mut page = (0usize, 0usize);
    let mut stack = vec![site.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir)? {
            let p = e?.path();
            let rel = p.strip_prefix(site).unwrap_or(&p);
            if p.is_dir() {
                if !matches!(rel.to_str(), Some("models" | "docs")) {
                    stack.push(p);
                }
            } else if !matches!(
                rel.to_str(),
                Some("README.txt" | "pkg/pneumoscope_webgpu_bg.wasm" | "pkg/pneumoscope_webgpu.js")
            ) {
                let (r, g) = web::sizes(&p)?;
                page = (page.0 + r, page.1 + g);
            }
        }
    }
    let mb = |b: usize| b as f64 / 1e6;
    let (wasm, wasm_gz) = web::sizes(&site.join("pkg/pneumoscope_bg.wasm"))?;
    println!("first visit, bytes downloaded (MB, raw / gzipped):");
    let (gpu, gpu_gz) = web::sizes(&site.join("pkg/pneumoscope_webgpu_bg.wasm"))?;
    println!(
        "  wasm module       {:>6.2} / {:>6.2} (CPU backend; every visit)",
        mb(wasm),
        mb(wasm_gz)
    );
    println!(
        "  WebGPU module     {:>6.2} / {:>6.2} (only where a hardware WebGPU adapter is measured \
         or WebGPU is asked for; not in the totals below)",
        mb(gpu),
        mb(gpu_gz)
    );
    println!(
        "  site without models {:>4.2} / {:>6.2} (the CPU module included)",
        mb(page.0),
        mb(page.1)
    );
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(site.join("models/index.json"))?)?;
    let default = index["default"].as_str().unwrap_or_default();
    for m in index["models"].as_array().into_iter().flatten() {
        let Some(file) = m["file"].as_str() else {
            continue;
        };
        let (r, g) = web::sizes(&site.join("models").join(file))?;
        println!(
            "  {file}{} {:>6.2} / {:>6.2}; first visit with it {:>6.2} / {:>6.2}",
            if file == default { " (default)" } else { "" },
            mb(r),
            mb(g),
            mb(page.0 + r),
            mb(page.1 + g)
        );
    }
    Ok(())
}

/// The site's default folder: `dist/` in the repository.
fn dist_dir() -> PathBuf {
    root().join("dist")
}

/// `dist [--out DIR]`: builds the static site.
fn dist_command(out: Option<PathBuf>) -> Result<()> {
    let out = site(&out.unwrap_or_else(dist_dir))?;
    println!(
        "copy {} to any static host (see its README.txt)",
        out.display()
    );
    Ok(())
}

/// A plain static server that knows nothing of the project: Python's `http.server` on a free
/// loopback port, serving `dir`. Stopped when dropped.
struct PlainServer {
    child: std::process::Child,
    port: u16,
}

impl PlainServer {
    fn start(dir: &Path) -> Result<Self> {
        use std::io::BufRead;
        let mut child = Command::new("python3")
            .args([
                "-u",
                "-m",
                "http.server",
                "--bind",
                "127.0.0.1",
                "--directory",
            ])
            .arg(dir)
            .arg("0")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .context("cannot start python3 -m http.server")?;
        let stdout = child.stdout.take().context("no output from http.server")?;
        let mut line = String::new();
        std::io::BufReader::new(stdout).read_line(&mut line)?;
        // "Serving HTTP on 127.0.0.1 port 41234 (http://127.0.0.1:41234/) ..."
        let port = line
            .split_whitespace()
            .skip_while(|w| *w != "port")
            .nth(1)
            .and_then(|p| p.parse().ok())
            .with_context(|| format!("http.server said {line:?}"))?;
        Ok(Self { child, port })
    }
}

impl Drop for PlainServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The sub-path the page tests put the site under, as a course page would.
const SUB_PATH: &str = "course/pneumoscope";

/// Builds the site under a sub-path, serves it with a plain static server (no policy headers:
/// the page's own `<meta>` policy must hold) and runs `tests/browser/e2e.mjs` against it.
fn browser_tests(shared: &Path, python: &Path) -> Result<(usize, usize)> {
    let top = target_dir().join("test-site");
    let folder = site(&top.join(SUB_PATH))?;
    let plain = PlainServer::start(&top)?;
    let url = format!("http://127.0.0.1:{}/{SUB_PATH}/", plain.port);
    let artifacts = target_dir().join("test-artifacts/browser");
    let model = folder.join("models").join(
        default_model()?
            .file_name()
            .context("the default model has no file name")?,
    );
    let counts = run_counting(
        Command::new("node")
            .arg(root().join("tests/browser/e2e.mjs"))
            .arg("--url")
            .arg(&url)
            .arg("--site")
            .arg(&folder)
            .arg("--shared")
            .arg(shared)
            .arg("--pneumoscope")
            .arg(target_dir().join("release/pneumoscope"))
            .arg("--model")
            .arg(&model)
            .arg("--artifacts")
            .arg(&artifacts)
            .arg("--python")
            .arg(python)
            .current_dir(root()),
    )?;
    println!(
        "browser test artifacts (screenshots): {}",
        artifacts.display()
    );
    Ok(counts)
}

/// `web/models/index.json`.
fn model_index() -> Result<serde_json::Value> {
    let index = root().join("web/models/index.json");
    serde_json::from_str(&std::fs::read_to_string(&index)?)
        .with_context(|| format!("{} is not JSON", index.display()))
}

/// The shipped default model named by `web/models/index.json`.
fn default_model() -> Result<PathBuf> {
    let json = model_index()?;
    let name = json["default"]
        .as_str()
        .context("web/models/index.json: no \"default\" entry")?;
    Ok(root().join("web/models").join(name))
}

/// The shipped single-network model of architecture `arch` listed in `web/models/index.json`.
fn shipped_model_of(arch: &str) -> Result<PathBuf> {
    let json = model_index()?;
    let name = json["models"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|m| m["arch"] == arch)
        .and_then(|m| m["file"].as_str())
        .with_context(|| format!("web/models/index.json lists no {arch} model"))?;
    Ok(root().join("web/models").join(name))
}

/// `serve [--port N] [--host ADDR]`: builds `pkg/` and serves the page on loopback.
fn serve(port: u16, host: std::net::IpAddr) -> Result<()> {
    let running = server::start(
        server::Site {
            root: site(&dist_dir())?,
        },
        (host, port).into(),
    )?;
    if !host.is_loopback() {
        eprintln!("warning: serving on {host}, which other machines may reach");
    }
    println!("Pneumoscope is served at {}", running.url());
    println!(
        "(the site folder {} with the shipped default model; press Ctrl-C to stop)",
        dist_dir().display()
    );
    running.wait();
    Ok(())
}

/// The pinned requirements of the test-only Python environment.
const REQUIREMENTS: &str = "tests/requirements.txt";

/// The test-only Python environment under `~/.cache/pneumoscope/venv`, with exactly the
/// versions of `tests/requirements.txt` (reinstalled whenever that file changes, so a figure
/// measured today can be measured again); returns its interpreter.
fn venv() -> Result<PathBuf> {
    let dir = cache_dir().join("venv");
    let py = dir.join("bin/python");
    let requirements = root().join(REQUIREMENTS);
    let wanted = std::fs::read(&requirements)
        .with_context(|| format!("cannot read {}", requirements.display()))?;
    let stamp = dir.join(".requirements.sha256");
    let key = web::hex_sha256(&wanted);
    if std::fs::read_to_string(&stamp).ok().as_deref() == Some(key.as_str()) && py.exists() {
        return Ok(py);
    }
    if !py.exists() {
        run(Command::new("python3").args(["-m", "venv"]).arg(&dir))?;
    }
    let install = || {
        run(Command::new(dir.join("bin/pip"))
            .args(["install", "-q", "--disable-pip-version-check", "-r"])
            .arg(&requirements))
    };
    if install().is_err() {
        // An install that was cut off halfway leaves packages pip cannot read: start afresh.
        eprintln!("the test venv is damaged; creating it again");
        run(Command::new("python3")
            .args(["-m", "venv", "--clear"])
            .arg(&dir))?;
        install()?;
    }
    std::fs::write(&stamp, key)?;
    Ok(py)
}

fn bench(args: &[String]) -> Result<()> {
    let py = venv()?;
    run(cargo().args(["build", "--release", "-p", "pneumoscope-trainer"]))?;
    run(Command::new(target_dir().join("release/pneumoscope"))
        .arg("bench")
        .arg("--python")
        .arg(&py)
        .args(args))
}

/// What `bench-web` measures besides the CPU rows.
struct BenchWebParts {
    /// A V8 profile of the library's CPU inference.
    profile: bool,
    /// The WebGPU rows.
    webgpu: bool,
}

/// `bench-web [--runs N] [--rounds R] [--profile] [--cpu-only]`: in-browser latency of the page
/// (both backends) next to onnxruntime-web on the same network (the shipped EfficientNet-Lite0
/// model, which is what the ONNX reference holds), the CPU rows alternated for R rounds, and the
/// default model's choose → result time, in headless chromium.
fn bench_web(runs: Option<u32>, rounds: Option<u32>, parts: BenchWebParts) -> Result<()> {
    ensure_system()?;
    let shared = shared()?;
    let py = venv()?;
    let onnx = cache_dir().join("bench/efficientnet_lite0.onnx");
    if !onnx.is_file() {
        std::fs::create_dir_all(onnx.parent().unwrap())?;
        run(Command::new(&py)
            .arg(root().join("tests/browser/make_onnx.py"))
            .arg(shared.join("weights/efficientnet-lite0-57934424.pth"))
            .arg(&onnx))?;
    }
    let folder = site(&target_dir().join("bench-site"))?;
    first_visit(&folder)?;
    let running = server::start(
        server::Site {
            root: folder.clone(),
        },
        ([127, 0, 0, 1], 0).into(),
    )?;
    let out = target_dir().join("bench-web.json");
    let profile = if parts.profile {
        vec![
            "--profile-pkg".into(),
            web::profiling_pkg()?.into_os_string(),
            "--profile-out".into(),
            target_dir().join("bench-web.cpuprofile").into_os_string(),
        ]
    } else {
        Vec::new()
    };
    run(Command::new("node")
        .arg(root().join("tests/browser/bench.mjs"))
        .arg("--url")
        .arg(running.url())
        .arg("--image")
        .arg(shared.join("data/kermany/chest_xray/test/PNEUMONIA/person1018_virus_1706.jpeg"))
        .arg("--onnx")
        .arg(&onnx)
        .arg("--pkg")
        .arg(folder.join("pkg"))
        .arg("--model")
        .arg(shipped_model_of("efficientnet_lite0")?)
        .arg("--default-model")
        .arg(default_model()?)
        .arg("--out")
        .arg(&out)
        .args(
            [("--runs", runs), ("--rounds", rounds)]
                .into_iter()
                .filter_map(|(flag, n)| n.map(|n| [flag.to_string(), n.to_string()]))
                .flatten(),
        )
        .args(
            (!parts.webgpu)
                .then_some(["--cpu-only", "yes"])
                .into_iter()
                .flatten(),
        )
        .args(profile)
        .current_dir(root()))
}

/// Project tasks (`cargo xtask TASK`).
#[derive(clap::Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "Project tasks: serve the page, run every test, benchmarks"
)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(clap::Subcommand)]
enum Task {
    /// Set up a fresh machine and run every test (fmt, clippy, native, wasm in Chromium, the
    /// page end to end).
    Test,
    /// Only the page's end-to-end tests (builds what they need).
    E2e,
    /// Build the web package and serve the page with the shipped default model.
    Serve {
        /// Port to listen on.
        #[arg(long, default_value_t = 8787)]
        port: u16,
        /// Address to listen on (loopback unless told otherwise).
        #[arg(long, default_value = "127.0.0.1")]
        host: std::net::IpAddr,
    },
    /// Build the static site, one folder to publish.
    Dist {
        /// Folder to write (default: `dist/` in the repository).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Create or update the test-only Python environment and print its interpreter.
    Venv,
    /// Native speed against PyTorch: `pneumoscope bench` with the reference environment.
    Bench {
        /// Arguments of `pneumoscope bench` (see `pneumoscope bench --help`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// In-browser speed of the page against onnxruntime-web, in one headless Chromium run.
    BenchWeb {
        /// Timed runs per measurement.
        #[arg(long)]
        runs: Option<u32>,
        /// Rounds of the page's CPU backend alternated with onnxruntime-web's wasm (default 3),
        /// each one like-for-like ratio.
        #[arg(long)]
        rounds: Option<u32>,
        /// Also profile the library's CPU inference in the browser (V8's sampling profiler):
        /// prints the functions with the most samples and writes `bench-web.cpuprofile`.
        #[arg(long)]
        profile: bool,
        /// Only the CPU backends (the page's CPU backend and onnxruntime-web's wasm), leaving out
        /// WebGPU, which takes minutes on a machine without a GPU.
        #[arg(long)]
        cpu_only: bool,
    },
}

fn main() {
    let cli = <Cli as clap::Parser>::parse();
    let done = match cli.task {
        Task::Test => test(),
        Task::E2e => e2e(),
        Task::Serve { port, host } => serve(port, host),
        Task::Dist { out } => dist_command(out),
        Task::Venv => venv().map(|p| println!("{}", p.display())),
        Task::Bench { args } => bench(&args),
        Task::BenchWeb {
            runs,
            rounds,
            profile,
            cpu_only,
        } => bench_web(
            runs,
            rounds,
            BenchWebParts {
                profile,
                webgpu: !cpu_only,
            },
        ),
    };
    if let Err(e) = done {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
