//! `lancachectl export`: the daemon streams the bundle over the control socket (an `export`
//! answer frame, then exactly that many raw tar bytes), written here to a file (through
//! `FILE.partial`, renamed when whole) or stdout, with an indicatif bar on a terminal's stderr.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use lancache_protocol::{read_frame, write_frame, Request, Response};
use std::io::{IsTerminal, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

pub fn export(socket: &Path, names: &[String], out: &Path, json: bool) -> ExitCode {
    let mut stream = match connect(socket) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(600)));
    let req = Request::Export {
        names: names.to_vec(),
    };
    let resp: Response = match write_frame(&mut stream, &req).and_then(|_| read_frame(&mut stream))
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!(
                "lancachectl: no valid answer from lancached at {}: {e}",
                socket.display()
            );
            return ExitCode::from(2);
        }
    };
    let (models, total) = match resp {
        Response::Export { models, bytes } => (models, bytes),
        Response::Error(e) => {
            eprintln!(
                "lancachectl: the daemon refused: {} ({:?})",
                e.message, e.kind
            );
            return ExitCode::from(1);
        }
        other => {
            eprintln!("lancachectl: unexpected answer: {other:?}");
            return ExitCode::from(2);
        }
    };
    let to_stdout = out == Path::new("-");
    let partial = out.with_extension("partial");
    let mut sink: Box<dyn Write> = if to_stdout {
        Box::new(std::io::stdout().lock())
    } else {
        match std::fs::File::create(&partial) {
            Ok(f) => Box::new(std::io::BufWriter::with_capacity(1 << 20, f)),
            Err(e) => {
                eprintln!("lancachectl: cannot create {}: {e}", partial.display());
                return ExitCode::from(1);
            }
        }
    };
    let bar = bar(total, "export", json);
    let mut buf = vec![0u8; 1 << 20];
    let mut done = 0u64;
    let fail = |msg: String| {
        if !to_stdout {
            let _ = std::fs::remove_file(&partial);
        }
        eprintln!("lancachectl: {msg}");
        ExitCode::from(1)
    };
    while done < total {
        let want = buf.len().min((total - done) as usize);
        let n = match stream.read(&mut buf[..want]) {
            Ok(0) => {
                bar.abandon();
                return fail(format!(
                    "the daemon ended the bundle after {done} of {total} bytes"
                ));
            }
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return fail(format!("reading the bundle: {e}")),
        };
        if let Err(e) = sink.write_all(&buf[..n]) {
            return fail(format!("writing {}: {e}", out.display()));
        }
        done += n as u64;
        bar.set_position(done);
    }
    if let Err(e) = sink.flush() {
        return fail(format!("writing {}: {e}", out.display()));
    }
    drop(sink);
    bar.finish_and_clear();
    if !to_stdout {
        if let Err(e) = std::fs::File::open(&partial)
            .and_then(|f| f.sync_all())
            .and_then(|_| std::fs::rename(&partial, out))
        {
            return fail(format!("finishing {}: {e}", out.display()));
        }
    }
    let summary = serde_json::json!({
        "response": "exported",
        "models": models,
        "bytes": total,
        "file": if to_stdout { "-".to_string() } else { out.display().to_string() },
    });
    if json {
        // stdout carries the tar with `-o -`: the summary goes to stderr then.
        let text = serde_json::to_string_pretty(&summary).unwrap();
        if to_stdout {
            eprintln!("{text}");
        } else {
            println!("{text}");
        }
    } else {
        let line = format!(
            "exported {} model(s), {} to {}",
            models.len(),
            crate::output::bytes(total),
            if to_stdout {
                "stdout".into()
            } else {
                out.display().to_string()
            }
        );
        if to_stdout {
            eprintln!("{line}");
        } else {
            println!("{line}");
        }
    }
    ExitCode::SUCCESS
}

fn connect(socket: &Path) -> Result<UnixStream, ExitCode> {
    UnixStream::connect(socket).map_err(|e| {
        eprintln!(
            "lancachectl: cannot reach lancached at {}: {e} (is lancached running? set --socket or LANCACHE_SOCKET)",
            socket.display()
        );
        ExitCode::from(2)
    })
}

fn bar(total: u64, msg: &'static str, json: bool) -> ProgressBar {
    if json || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let b = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    b.set_style(
        ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    b.set_message(msg);
    b
}

/// Counts what goes to the daemon, for the bar.
struct Counted<'a, W> {
    inner: W,
    bar: &'a ProgressBar,
}

impl<W: Write> Write for Counted<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.bar.inc(n as u64);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// One member the CLI sends for a directory.
enum DirMember {
    File(String, std::path::PathBuf, u64),
    Link(String, std::path::PathBuf),
}

/// The hub cache under `dir`: `dir` itself when it holds repo folders (`models--org--name`),
/// else `dir/hub` (`~/.cache/huggingface`) when that does.
fn hub_root(dir: &Path) -> Option<std::path::PathBuf> {
    let has_repos = |p: &Path| {
        std::fs::read_dir(p)
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| {
                let n = e.file_name().to_string_lossy().into_owned();
                (n.starts_with("models--") || n.starts_with("datasets--"))
                    && e.file_type().is_ok_and(|t| t.is_dir())
            })
    };
    [dir.to_path_buf(), dir.join("hub")]
        .into_iter()
        .find(|p| has_repos(p))
}

/// A hub cache's repo folders as `hub/...` members: every snapshot entry as it is (links stay
/// links; the daemon checks their form), the blobs they link that are present, the refs. Real
/// directories only; `huggingface_hub`'s `.locks/`, `.no_exist/` and `*.incomplete` files stay
/// behind.
fn hub_members(root: &Path) -> Vec<DirMember> {
    fn walk(p: &Path, rel: &str, out: &mut Vec<(String, std::path::PathBuf, std::fs::FileType)>) {
        let mut ents: Vec<_> = std::fs::read_dir(p)
            .into_iter()
            .flatten()
            .flatten()
            .collect();
        ents.sort_by_key(|e| e.file_name());
        for e in ents {
            let name = e.file_name().to_string_lossy().into_owned();
            let r = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            let Ok(t) = e.file_type() else { continue };
            if t.is_dir() {
                walk(&e.path(), &r, out);
            } else {
                out.push((r, e.path(), t));
            }
        }
    }
    let mut folders: Vec<_> = std::fs::read_dir(root)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("models--") || n.starts_with("datasets--"))
        .collect();
    folders.sort();
    let (mut blobs, mut links, mut refs) = (Vec::new(), Vec::new(), Vec::new());
    for f in folders {
        let repo = root.join(&f);
        let mut snaps = Vec::new();
        walk(&repo.join("snapshots"), "", &mut snaps);
        let mut linked = std::collections::BTreeSet::new();
        for (rel, path, t) in snaps {
            let name = format!("hub/{f}/snapshots/{rel}");
            if t.is_symlink() {
                if let Ok(target) = std::fs::read_link(&path) {
                    if let Some(hash) = target.file_name() {
                        linked.insert(hash.to_string_lossy().into_owned());
                    }
                    links.push(DirMember::Link(name, target));
                }
            } else if let Ok(m) = std::fs::symlink_metadata(&path) {
                // Sent as it is: the daemon names it (snapshots hold links, not files).
                links.push(DirMember::File(name, path, m.len()));
            }
        }
        for hash in linked {
            let p = repo.join("blobs").join(&hash);
            if let Ok(m) = std::fs::symlink_metadata(&p) {
                if m.is_file() {
                    blobs.push(DirMember::File(format!("hub/{f}/blobs/{hash}"), p, m.len()));
                }
            }
        }
        let mut rs = Vec::new();
        walk(&repo.join("refs"), "", &mut rs);
        for (rel, path, t) in rs {
            if t.is_file() {
                if let Ok(m) = std::fs::symlink_metadata(&path) {
                    refs.push(DirMember::File(
                        format!("hub/{f}/refs/{rel}"),
                        path,
                        m.len(),
                    ));
                }
            }
        }
    }
    blobs.extend(links);
    blobs.extend(refs);
    blobs
}

/// What a directory holds as tar members: an Ollama models directory's manifests (exactly four
/// levels, real directories and regular files only) and the blobs they reference that are
/// present, and a hub cache's repos (see [`hub_members`]); with the tar's size for the bar.
fn dir_members(dir: &Path) -> (Vec<DirMember>, u64) {
    let ollama = ollama_members(dir);
    let mut out: Vec<DirMember> = ollama
        .into_iter()
        .map(|(n, p, l)| DirMember::File(n, p, l))
        .collect();
    if let Some(root) = hub_root(dir) {
        out.extend(hub_members(&root));
    }
    let total = out
        .iter()
        .map(|m| match m {
            DirMember::File(_, _, n) => 512 + n.div_ceil(512) * 512,
            DirMember::Link(..) => 1024,
        })
        .sum::<u64>()
        + 1024;
    (out, total)
}

fn ollama_members(dir: &Path) -> Vec<(String, std::path::PathBuf, u64)> {
    fn subdirs(p: &Path) -> Vec<(String, std::path::PathBuf)> {
        let mut v: Vec<_> = std::fs::read_dir(p)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
            .collect();
        v.sort();
        v
    }
    let mut manifests = Vec::new();
    for (h, hp) in subdirs(&dir.join("manifests")) {
        for (n, np) in subdirs(&hp) {
            for (m, mp) in subdirs(&np) {
                let mut tags: Vec<_> = std::fs::read_dir(&mp)
                    .into_iter()
                    .flatten()
                    .flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
                    .collect();
                tags.sort_by_key(|e| e.file_name());
                for t in tags {
                    let tag = t.file_name().to_string_lossy().into_owned();
                    manifests.push((format!("manifests/{h}/{n}/{m}/{tag}"), t.path()));
                }
            }
        }
    }
    let mut blobs = std::collections::BTreeSet::new();
    for (_, p) in &manifests {
        let Ok(v) = std::fs::read(p).and_then(|b| {
            serde_json::from_slice::<serde_json::Value>(&b).map_err(std::io::Error::other)
        }) else {
            continue;
        };
        let layers = v["layers"].as_array().cloned().unwrap_or_default();
        for l in std::iter::once(&v["config"]).chain(layers.iter()) {
            if let Some(hex) = l["digest"].as_str().and_then(|d| d.strip_prefix("sha256:")) {
                if hex.len() == 64 && hex.bytes().all(|c| c.is_ascii_hexdigit()) {
                    blobs.insert(format!("blobs/sha256-{hex}"));
                }
            }
        }
    }
    let mut out = Vec::new();
    for b in blobs {
        let p = dir.join(&b);
        // A missing blob is left out: the daemon then names the manifest that needs it.
        if let Ok(m) = std::fs::symlink_metadata(&p) {
            if m.is_file() {
                out.push((b, p, m.len()));
            }
        }
    }
    for (name, p) in manifests {
        if let Ok(m) = std::fs::symlink_metadata(&p) {
            out.push((name, p, m.len()));
        }
    }
    out
}

pub fn import(socket: &Path, path: &Path, local: bool, json: bool) -> ExitCode {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("lancachectl import: {}: {e}", path.display());
            return ExitCode::from(1);
        }
    };
    let mut stream = match connect(socket) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(600)));
    let req = Request::Import {
        source: path.display().to_string(),
        local,
    };
    if let Err(e) = write_frame(&mut stream, &req) {
        eprintln!(
            "lancachectl: cannot send to lancached at {}: {e}",
            socket.display()
        );
        return ExitCode::from(2);
    }
    let sent = if meta.is_dir() {
        let (members, total) = dir_members(path);
        let b = bar(total, "import", json);
        let w = Counted {
            inner: std::io::BufWriter::with_capacity(1 << 20, &stream),
            bar: &b,
        };
        let mut tb = tar::Builder::new(w);
        let mut res = Ok(());
        for m in members {
            let (r, p) = match m {
                DirMember::File(name, p, len) => (
                    std::fs::File::open(&p).and_then(|f| {
                        let mut h = tar::Header::new_gnu();
                        h.set_size(len);
                        h.set_mode(0o644);
                        h.set_entry_type(tar::EntryType::Regular);
                        tb.append_data(&mut h, &name, f.take(len))
                    }),
                    p,
                ),
                DirMember::Link(name, target) => {
                    let mut h = tar::Header::new_gnu();
                    h.set_size(0);
                    h.set_mode(0o777);
                    h.set_entry_type(tar::EntryType::Symlink);
                    (tb.append_link(&mut h, &name, &target), target)
                }
            };
            if let Err(e) = r {
                res = Err(format!("{}: {e}", p.display()));
                break;
            }
        }
        let res = res.and_then(|_| {
            tb.into_inner()
                .and_then(|mut w| w.flush())
                .map_err(|e| e.to_string())
        });
        b.finish_and_clear();
        res
    } else {
        let b = bar(meta.len(), "import", json);
        let r = std::fs::File::open(path)
            .and_then(|mut f| {
                let mut w = Counted {
                    inner: &stream,
                    bar: &b,
                };
                std::io::copy(&mut f, &mut w)
            })
            .map(|_| ())
            .map_err(|e| e.to_string());
        b.finish_and_clear();
        r
    };
    let _ = stream.shutdown(std::net::Shutdown::Write);
    // A daemon that refused the bundle part-way has hung up: its answer says why, so read it
    // even when sending failed.
    let resp: Response = match read_frame(&mut stream) {
        Ok(r) => r,
        Err(e) => {
            let why = sent
                .err()
                .map(|s| format!(" (sending: {s})"))
                .unwrap_or_default();
            eprintln!(
                "lancachectl: no valid answer from lancached at {}: {e}{why}",
                socket.display()
            );
            return ExitCode::from(2);
        }
    };
    crate::finish(&resp, json)
}
