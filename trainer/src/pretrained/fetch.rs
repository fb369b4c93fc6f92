//! `pneumoscope weights fetch`: the published ImageNet weights of an architecture, downloaded
//! into a cache (or taken from a folder on offline machines), resumable, with progress, and
//! verified against the SHA-256 prefix their file names carry (the PyTorch hub convention:
//! `resnet50-0676ba61.pth` must hash to `0676ba61…`).

use anyhow::{Context, Result, bail};
use pneumoscope::arch::ArchSpec;
use sha2::{Digest, Sha256};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// Where fetched weights live: `$PNEUMOSCOPE_WEIGHTS`, else `~/.cache/pneumoscope/weights`.
pub fn default_cache() -> PathBuf {
    if let Some(p) = std::env::var_os("PNEUMOSCOPE_WEIGHTS") {
        return PathBuf::from(p);
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
    home.join(".cache/pneumoscope/weights")
}

/// Options of a fetch.
#[derive(Clone, Debug)]
pub struct FetchOptions {
    /// The cache folder.
    pub cache: PathBuf,
    /// Take the files from this folder instead of downloading them (offline machines).
    pub weights_dir: Option<PathBuf>,
    /// Download from this folder address instead of the official one (a mirror).
    pub base_url: Option<String>,
}

/// What a fetch did.
#[derive(Debug, PartialEq, Eq)]
pub enum Fetched {
    /// The cache already held a verified copy.
    Cached,
    /// Copied from `--weights-dir`.
    Copied,
    /// Downloaded (`resumed_from` bytes were already there from an interrupted download).
    Downloaded {
        /// Bytes of the earlier partial download that were kept.
        resumed_from: u64,
    },
}

/// SHA-256 of a file, lowercase hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .with_context(|| format!("cannot read {}", path.display()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(format!("{:x}", h.finalize()))
}

/// Checks `path` against the SHA-256 prefix of `spec`'s published file name.
pub fn verify(spec: &ArchSpec, path: &Path) -> Result<String> {
    let sum = sha256_file(path)?;
    match spec.weights.sha256_prefix() {
        Some(prefix) if !sum.starts_with(prefix) => bail!(
            "{}: SHA-256 {sum} does not start with {prefix}, the hash in the published name {} \
             (a corrupt download, or another file under that name)",
            path.display(),
            spec.weights.file
        ),
        _ => Ok(sum),
    }
}

/// The cached weights of `spec`, if they were fetched.
pub fn cached(spec: &ArchSpec, cache: &Path) -> Option<PathBuf> {
    let p = cache.join(spec.weights.file);
    p.is_file().then_some(p)
}

/// Makes `spec`'s ImageNet weights available in the cache; returns their path and what was
/// done.
pub fn fetch(spec: &ArchSpec, o: &FetchOptions) -> Result<(PathBuf, Fetched)> {
    std::fs::create_dir_all(&o.cache)
        .with_context(|| format!("cannot create the weights cache {}", o.cache.display()))?;
    let dest = o.cache.join(spec.weights.file);
    if dest.is_file() {
        match verify(spec, &dest) {
            Ok(_) => return Ok((dest, Fetched::Cached)),
            Err(e) => {
                eprintln!("{e:#}; fetching it again");
                std::fs::remove_file(&dest)?;
            }
        }
    }
    if let Some(dir) = &o.weights_dir {
        let src = dir.join(spec.weights.file);
        if !src.is_file() {
            bail!(
                "{}: not found (--weights-dir needs the file under its published name {})",
                src.display(),
                spec.weights.file
            );
        }
        verify(spec, &src)?;
        let part = partial(&dest);
        std::fs::copy(&src, &part)
            .with_context(|| format!("cannot copy {} to {}", src.display(), part.display()))?;
        std::fs::rename(&part, &dest)?;
        return Ok((dest, Fetched::Copied));
    }
    let url = match (&o.base_url, spec.weights.url()) {
        (Some(base), _) => format!("{}/{}", base.trim_end_matches('/'), spec.weights.file),
        (None, Some(url)) => url,
        (None, None) => bail!(
            "{}: no download address is known for {} ({}); put the file in a folder and pass \
             --weights-dir, or --base-url of a mirror",
            spec.name,
            spec.weights.file,
            spec.weights.note
        ),
    };
    let resumed_from = download(&url, &partial(&dest))?;
    if let Err(e) = verify(spec, &partial(&dest)) {
        let _ = std::fs::remove_file(partial(&dest));
        return Err(e.context(format!("{url}: the download was removed")));
    }
    std::fs::rename(partial(&dest), &dest)?;
    Ok((dest, Fetched::Downloaded { resumed_from }))
}

fn partial(dest: &Path) -> PathBuf {
    let mut name = dest.file_name().unwrap_or_default().to_os_string();
    name.push(".part");
    dest.with_file_name(name)
}

/// Downloads `url` into `part`, continuing an earlier partial download with an HTTP range
/// request. Returns the number of bytes kept from before.
fn download(url: &str, part: &Path) -> Result<u64> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_connect(Some(std::time::Duration::from_secs(30)))
        .build()
        .into();
    let have = std::fs::metadata(part).map(|m| m.len()).unwrap_or(0);
    let mut req = agent.get(url);
    if have > 0 {
        req = req.header("Range", format!("bytes={have}-"));
    }
    let mut resp = req
        .call()
        .with_context(|| format!("{url}: cannot connect"))?;
    let Some((start, total)) = resume_point(url, &resp, have)? else {
        return Ok(have); // already complete; the hash check decides
    };
    let file = if start > 0 {
        OpenOptions::new().append(true).open(part)
    } else {
        File::create(part)
    }
    .with_context(|| format!("cannot write {}", part.display()))?;
    let mut reader = resp.body_mut().as_reader();
    let got = copy_body(url, &mut reader, (file, part), start, total)?;
    if let Some(t) = total
        && got != t
    {
        bail!(
            "{url}: download ended after {got} of {t} bytes; {} keeps what arrived: run the same \
             command again to resume",
            part.display()
        );
    }
    Ok(start)
}

/// Where the answer to a request for `url` (with `have` bytes already kept) starts, and the
/// whole file's length where the server says it; `None` where the file is already complete.
fn resume_point(
    url: &str,
    resp: &ureq::http::Response<ureq::Body>,
    have: u64,
) -> Result<Option<(u64, Option<u64>)>> {
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let length: Option<u64> = header("content-length").and_then(|v| v.parse().ok());
    Ok(Some(match resp.status().as_u16() {
        206 => {
            let range = header("content-range").unwrap_or_default();
            let start: Option<u64> = range
                .strip_prefix("bytes ")
                .and_then(|r| r.split('-').next())
                .and_then(|s| s.parse().ok());
            if start != Some(have) {
                bail!("{url}: the server answered the range request with '{range}'");
            }
            (have, length.map(|l| l + have))
        }
        200 => (0, length),
        416 if have > 0 => return Ok(None),
        404 => bail!("{url}: HTTP 404 Not Found"),
        s => bail!("{url}: HTTP {s}"),
    }))
}

/// Appends what `reader` yields to `file` (at `part`), which holds `start` bytes of `total`;
/// returns the bytes held at the end. An interrupted transfer keeps what arrived.
fn copy_body(
    url: &str,
    reader: &mut impl Read,
    (mut file, part): (File, &Path),
    start: u64,
    total: Option<u64>,
) -> Result<u64> {
    let pb = crate::machinery::progress::bytes_bar(total.unwrap_or(0), url);
    pb.set_position(start);
    let mut buf = vec![0u8; 1 << 16];
    let mut got = start;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => {
                file.sync_all().ok();
                pb.abandon();
                bail!(
                    "{url}: download interrupted after {got} of {} bytes ({e}); {} keeps what \
                     arrived: run the same command again to resume",
                    total.map_or("?".to_string(), |t| t.to_string()),
                    part.display()
                );
            }
        };
        file.write_all(&buf[..n])
            .with_context(|| format!("cannot write {}", part.display()))?;
        got += n as u64;
        pb.set_position(got);
    }
    file.sync_all()?;
    pb.finish_and_clear();
    Ok(got)
}

/// The weights a training run starts from: the given file, else the cached published file,
/// else nothing when random initialisation is allowed.
pub fn resolve_weights(
    arch: &str,
    given: Option<PathBuf>,
    allow_random: bool,
) -> Result<Option<PathBuf>> {
    if given.is_some() {
        return Ok(given);
    }
    let spec = pneumoscope::arch::find(arch)?;
    let cache = default_cache();
    if let Some(p) = cached(&spec, &cache) {
        return Ok(Some(p));
    }
    if allow_random {
        return Ok(None);
    }
    anyhow::bail!(
        "no ImageNet weights for {arch}: {} is not in {} — run `pneumoscope weights fetch {arch}` \
         (or pass --weights FILE); to train from random initialisation instead, pass \
         --allow-random-init",
        spec.weights.file,
        cache.display()
    )
}
