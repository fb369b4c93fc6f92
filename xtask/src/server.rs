//! The static file server of `cargo xtask serve`: the site folder that `cargo xtask dist` builds,
//! on loopback, GET and HEAD only, with the page's Content-Security-Policy on every response
//! and no way out of that folder.

use anyhow::{Context, Result};
use percent_encoding::percent_decode_str;
use std::net::SocketAddr;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use tiny_http::{Header, Method, Request, Response, Server};

/// The Content-Security-Policy of every response: same origin only, WebAssembly compilation
/// allowed, images only from the page itself or from `blob:` URLs it made. The same policy is
/// in `web/index.html` as a `<meta>` element for static hosting.
pub const CSP: &str = "default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; worker-src 'self'; \
connect-src 'self'; img-src 'self' blob:; style-src 'self'; object-src 'none'; base-uri 'none'; \
form-action 'none'";

/// The folder the server exposes.
#[derive(Clone, Debug)]
pub struct Site {
    /// The site (`cargo xtask dist`), served at `/`.
    pub root: PathBuf,
}

impl Site {
    /// Maps a request target (`/pkg/x.js?v=1`) to a file, or `None` when it is outside the
    /// site (`..`, absolute paths, encoded separators, hidden files) or absent.
    pub fn resolve(&self, target: &str) -> Option<PathBuf> {
        let path = target.split(['?', '#']).next().unwrap_or("");
        let decoded = percent_decode_str(path).decode_utf8().ok()?;
        if !decoded.starts_with('/') || decoded.contains('\\') || decoded.contains('\0') {
            return None;
        }
        let rel = Path::new(decoded.trim_start_matches('/'));
        let mut parts = Vec::new();
        for c in rel.components() {
            match c {
                Component::Normal(p) => {
                    let p = p.to_str()?;
                    if p.starts_with('.') {
                        return None;
                    }
                    parts.push(p);
                }
                Component::CurDir => {}
                _ => return None,
            }
        }
        let base = &self.root;
        let mut file = base.clone();
        file.extend(&parts);
        if file.is_dir() {
            file.push("index.html");
        }
        // Symbolic links must not lead out of the site either.
        let real = file.canonicalize().ok()?;
        let root = base.canonicalize().ok()?;
        (real.starts_with(&root) && real.is_file()).then_some(real)
    }
}

/// The media type of a file, by extension.
pub fn content_type(path: &Path) -> &'static str {
    match path.extension().and_then(|e| e.to_str()).unwrap_or("") {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "json" => "application/json",
        "wasm" => "application/wasm",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "svg" => "image/svg+xml",
        "ts" | "md" | "txt" => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

fn header(name: &str, value: &str) -> Header {
    Header::from_bytes(name.as_bytes(), value.as_bytes()).expect("valid header")
}

fn security_headers() -> Vec<Header> {
    vec![
        header("Content-Security-Policy", CSP),
        header("X-Content-Type-Options", "nosniff"),
        header("Referrer-Policy", "no-referrer"),
        header("Cross-Origin-Resource-Policy", "same-origin"),
        header("Cache-Control", "no-cache"),
    ]
}

fn respond(site: &Site, request: Request) {
    let method = request.method().clone();
    let result = if method != Method::Get && method != Method::Head {
        let mut r = Response::from_string("only GET and HEAD are served\n").with_status_code(405);
        r.add_header(header("Allow", "GET, HEAD"));
        for h in security_headers() {
            r.add_header(h);
        }
        request.respond(r)
    } else {
        match site
            .resolve(request.url())
            .and_then(|p| std::fs::File::open(&p).ok().map(|f| (p, f)))
        {
            Some((path, file)) => {
                let mut r = Response::from_file(file);
                r.add_header(header("Content-Type", content_type(&path)));
                for h in security_headers() {
                    r.add_header(h);
                }
                if method == Method::Head {
                    let len = std::fs::metadata(&path).map(|m| m.len() as usize).ok();
                    let mut h = Response::empty(200).with_data(std::io::empty(), len);
                    for x in r.headers() {
                        h.add_header(x.clone());
                    }
                    request.respond(h)
                } else {
                    request.respond(r)
                }
            }
            None => {
                let mut r = Response::from_string("not found\n").with_status_code(404);
                for h in security_headers() {
                    r.add_header(h);
                }
                request.respond(r)
            }
        }
    };
    if let Err(e) = result {
        eprintln!("serve: cannot answer a request: {e}");
    }
}

/// A running server; dropped, it stops.
pub struct Running {
    server: Arc<Server>,
    /// The bound address.
    pub addr: SocketAddr,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Running {
    /// The page's address.
    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// Serves until the process ends.
    pub fn wait(mut self) {
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.server.unblock();
        for _ in 1..self.threads.len() {
            self.server.unblock();
        }
    }
}

/// Threads answering requests: a download of a model holds one until it is sent, so that
/// several at once leave others free for the page's small files.
const THREADS: usize = 8;

/// Starts serving `site` on `addr` (port 0 picks a free port) with [`THREADS`] worker threads.
pub fn start(site: Site, addr: SocketAddr) -> Result<Running> {
    let server = Arc::new(
        Server::http(addr)
            .map_err(|e| anyhow::anyhow!("{e}"))
            .with_context(|| format!("cannot listen on {addr}"))?,
    );
    let addr = server
        .server_addr()
        .to_ip()
        .context("the server is not on an IP address")?;
    let threads = (0..THREADS)
        .map(|_| {
            let server = server.clone();
            let site = site.clone();
            std::thread::spawn(move || {
                while let Ok(request) = server.recv() {
                    respond(&site, request);
                }
            })
        })
        .collect();
    Ok(Running {
        server,
        addr,
        threads,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpStream;

    fn site() -> (tempdir::Dir, Site) {
        let dir = tempdir::Dir::new();
        let web = dir.0.join("site");
        let pkg = web.join("pkg");
        std::fs::create_dir_all(web.join("models")).unwrap();
        std::fs::create_dir_all(&pkg).unwrap();
        std::fs::write(web.join("index.html"), "<p>page</p>").unwrap();
        std::fs::write(web.join("models/m.bin"), [1, 2, 3]).unwrap();
        std::fs::write(web.join(".secret"), "x").unwrap();
        std::fs::write(pkg.join("lib.wasm"), [0, 97, 115, 109]).unwrap();
        std::fs::write(dir.0.join("outside.txt"), "private").unwrap();
        std::os::unix::fs::symlink(dir.0.join("outside.txt"), web.join("link.txt")).unwrap();
        (dir, Site { root: web })
    }

    mod tempdir {
        /// A temporary folder removed on drop.
        pub struct Dir(pub std::path::PathBuf);
        impl Dir {
            pub fn new() -> Self {
                use std::sync::atomic::{AtomicUsize, Ordering};
                static N: AtomicUsize = AtomicUsize::new(0);
                let p = std::env::temp_dir().join(format!(
                    "pneumoscope-serve-{}-{}",
                    std::process::id(),
                    N.fetch_add(1, Ordering::SeqCst)
                ));
                let _ = std::fs::remove_dir_all(&p);
                std::fs::create_dir_all(&p).unwrap();
                Self(p)
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    #[test]
    fn resolve_stays_inside_the_site() {
        let (_d, s) = site();
        assert!(s.resolve("/").unwrap().ends_with("site/index.html"));
        assert!(
            s.resolve("/models/m.bin?x=1")
                .unwrap()
                .ends_with("models/m.bin")
        );
        assert!(
            s.resolve("/pkg/lib.wasm")
                .unwrap()
                .ends_with("pkg/lib.wasm")
        );
        for bad in [
            "/../outside.txt",
            "/models/../../outside.txt",
            "/%2e%2e/outside.txt",
            "/%2E%2E%2Foutside.txt",
            "/pkg/../../outside.txt",
            "/..%5Coutside.txt",
            "//etc/passwd",
            "/.secret",
            "/link.txt",
            "relative",
            "/nope.html",
            "/%ff",
        ] {
            assert_eq!(s.resolve(bad), None, "{bad} must not resolve");
        }
    }

    fn raw_request(addr: SocketAddr, request: &str) -> String {
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(request.as_bytes()).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    #[test]
    fn serves_files_with_the_policy_and_refuses_the_rest() {
        let (_d, s) = site();
        let running = start(s, "127.0.0.1:0".parse().unwrap()).unwrap();
        assert!(running.addr.ip().is_loopback());
        let ok = raw_request(running.addr, "GET /pkg/lib.wasm HTTP/1.0\r\n\r\n");
        assert!(
            ok.starts_with("HTTP/1.0 200") || ok.starts_with("HTTP/1.1 200"),
            "{ok}"
        );
        assert!(ok.contains("application/wasm"), "{ok}");
        assert!(ok.contains(CSP), "{ok}");
        for target in ["/../outside.txt", "/%2e%2e/outside.txt", "/link.txt"] {
            let r = raw_request(running.addr, &format!("GET {target} HTTP/1.0\r\n\r\n"));
            assert!(r.contains(" 404 "), "{target}: {r}");
            assert!(!r.contains("private"), "{target} leaked: {r}");
        }
        let post = raw_request(
            running.addr,
            "POST / HTTP/1.0\r\nContent-Length: 5\r\n\r\nhello",
        );
        assert!(post.contains(" 405 "), "{post}");
    }

    /// Status code and body of a whole HTTP/1.0 exchange.
    fn get(addr: SocketAddr, target: &str) -> (u16, Vec<u8>) {
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(format!("GET {target} HTTP/1.0\r\n\r\n").as_bytes())
            .unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).unwrap();
        let end = out
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .unwrap_or_else(|| panic!("{target}: no end of headers"));
        let head = String::from_utf8_lossy(&out[..end]).into_owned();
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| panic!("{target}: {head}"));
        (status, out[end + 4..].to_vec())
    }

    #[test]
    fn fifty_clients_and_six_downloads_of_the_largest_model_are_answered_in_full() {
        use sha2::{Digest, Sha256};
        let web = crate::root().join("web");
        let largest = std::fs::read_dir(web.join("models"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .max_by_key(|p| std::fs::metadata(p).unwrap().len())
            .unwrap();
        let model = std::fs::read(&largest).unwrap();
        let want = Sha256::digest(&model);
        let target = format!("/models/{}", largest.file_name().unwrap().to_str().unwrap());
        let running = start(Site { root: web.clone() }, "127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = running.addr;
        let small: Vec<(String, Option<Vec<u8>>)> = [
            "index.html",
            "app.js",
            "client.js",
            "worker.js",
            "style.css",
            "models/index.json",
        ]
        .iter()
        .map(|f| (format!("/{f}"), Some(std::fs::read(web.join(f)).unwrap())))
        .chain(
            ["/../Cargo.toml", "/%2e%2e/Cargo.toml", "/nope.html"]
                .iter()
                .map(|t| (t.to_string(), None)),
        )
        .collect();
        let small = Arc::new(small);
        let downloads: Vec<_> = (0..6)
            .map(|_| {
                let target = target.clone();
                std::thread::spawn(move || get(addr, &target))
            })
            .collect();
        let clients: Vec<_> = (0..50)
            .map(|c| {
                let small = small.clone();
                std::thread::spawn(move || {
                    for i in 0..8 {
                        let (target, body) = &small[(c * 8 + i) % small.len()];
                        let (status, got) = get(addr, target);
                        match body {
                            Some(body) => {
                                assert_eq!(status, 200, "{target}");
                                assert!(
                                    got == *body,
                                    "{target}: {} of {} bytes",
                                    got.len(),
                                    body.len()
                                );
                            }
                            None => assert_eq!(status, 404, "{target}"),
                        }
                    }
                })
            })
            .collect();
        for c in clients {
            c.join().expect("a client failed");
        }
        for d in downloads {
            let (status, body) = d.join().expect("a download failed");
            assert_eq!(status, 200);
            assert_eq!(body.len(), model.len(), "a download came back cut");
            assert!(
                Sha256::digest(&body) == want,
                "a download came back changed"
            );
        }
    }

    #[test]
    fn the_page_carries_the_same_policy() {
        let html = std::fs::read_to_string(crate::root().join("web/index.html")).unwrap();
        assert!(
            html.contains(&format!("content=\"{CSP}\"")),
            "web/index.html's <meta> policy differs from the server's"
        );
    }
}
