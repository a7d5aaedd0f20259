//! One or more models (a bundle) as a tar stream of exactly what belongs in an Ollama models
//! directory: `blobs/sha256-<hex>` for the config and every layer of every model (a blob shared
//! by several models is written once), then every `manifests/<host>/<ns>/<model>/<tag>` last, so
//! an interrupted `tar -x` leaves blobs Ollama will clean up rather than a manifest pointing at
//! missing data. `lancachectl import` reads the same format back (see `store::import`).
//!
//! The archive's length is known before the first byte (headers are 512 bytes, data is padded to
//! 512, two zero blocks end it), so the response carries `Content-Length` and a truncated
//! download is detectable. Blob files are opened (not following symlinks) and size-checked when
//! the response is built, then streamed from those open descriptors in 256 KiB reads: nothing is
//! buffered whole, and a blob unlinked mid-stream is still read to its end. Headers come from
//! the `tar` crate (ustar, with a PAX `path` record for names too long for ustar's fields).

use bytes::{Bytes, BytesMut};
use futures_util::{stream, TryStreamExt};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use std::os::unix::fs::OpenOptionsExt;
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::io::AsyncReadExt;

use super::catalog::Model;
use crate::http::body::Body;
use crate::http::sessions::SessionGuard;
use crate::hub::bundle::Entry as HubEntry;
use crate::store::{Layout, Pins};

const BLOCK: u64 = 512;
const CHUNK: usize = 256 * 1024;

enum Part {
    Bytes(Bytes),
    /// An open blob of exactly `len` bytes, followed by `pad` zero bytes.
    File {
        file: std::fs::File,
        len: u64,
        pad: u64,
    },
}

/// An archive ready to stream.
pub struct Archive {
    parts: Vec<Part>,
    pub len: u64,
    _pins: Vec<crate::store::pins::Pin>,
}

fn padding(len: u64) -> u64 {
    (BLOCK - len % BLOCK) % BLOCK
}

/// One header (plus a PAX header before it when the path does not fit ustar).
fn header(path: &str, size: u64, mtime: u64) -> std::io::Result<Bytes> {
    entry_header(path, size, mtime, None)
}

/// A header for a regular file, or for a symlink to `link` (a PAX record carries a path or
/// a link target too long for ustar's fields).
fn entry_header(path: &str, size: u64, mtime: u64, link: Option<&str>) -> std::io::Result<Bytes> {
    let mut out = BytesMut::new();
    let mut h = tar::Header::new_ustar();
    let long_path = h.set_path(path).is_err();
    let long_link = link.is_some_and(|l| l.len() > 100);
    if long_path || long_link {
        let mut record = Vec::new();
        if long_path {
            record.extend(pax_record("path", path));
        }
        if let Some(l) = link.filter(|_| long_link) {
            record.extend(pax_record("linkpath", l));
        }
        let mut x = tar::Header::new_ustar();
        x.set_path("PaxHeaders/entry")?;
        x.set_entry_type(tar::EntryType::XHeader);
        x.set_size(record.len() as u64);
        x.set_mode(0o644);
        x.set_mtime(mtime);
        x.set_cksum();
        out.extend_from_slice(x.as_bytes());
        out.extend_from_slice(&record);
        out.extend_from_slice(&vec![0u8; padding(record.len() as u64) as usize]);
        if long_path {
            // The ustar field keeps a truncated tail only for readers without PAX support.
            let mut cut = path.len().saturating_sub(99);
            while !path.is_char_boundary(cut) {
                cut += 1;
            }
            let tail = &path[cut..];
            h.set_path(tail.trim_start_matches('/'))?;
        }
    }
    match link {
        Some(l) => {
            h.set_entry_type(tar::EntryType::Symlink);
            if !long_link {
                h.set_link_name(l)?;
            }
            h.set_size(0);
            h.set_mode(0o777);
        }
        None => {
            h.set_entry_type(tar::EntryType::Regular);
            h.set_size(size);
            h.set_mode(0o644);
        }
    }
    h.set_mtime(mtime);
    h.set_cksum();
    out.extend_from_slice(h.as_bytes());
    Ok(out.freeze())
}

/// `"<len> <key>=<value>\n"` where `<len>` counts the whole record, itself included.
fn pax_record(key: &str, value: &str) -> Vec<u8> {
    let body = format!(" {key}={value}\n");
    let mut n = body.len() + 1;
    while (n.to_string().len() + body.len()) != n {
        n = n.to_string().len() + body.len();
    }
    format!("{n}{body}").into_bytes()
}

/// Why an archive cannot be built: the model is not (or no longer) complete.
#[derive(Debug)]
pub struct Incomplete(pub String);

impl Archive {
    pub fn build(layout: &Layout, pins: &Pins, model: &Model) -> Result<Archive, Incomplete> {
        Archive::build_many(layout, pins, std::slice::from_ref(model), Vec::new())
    }

    /// A bundle of several models: every distinct blob once, then every manifest; then the
    /// Hub repos' members (`hub/...`, in their order: blobs, snapshot links, refs).
    pub fn build_many(
        layout: &Layout,
        pins: &Pins,
        models: &[Model],
        hub: Vec<HubEntry>,
    ) -> Result<Archive, Incomplete> {
        let mtime = models
            .iter()
            .map(|m| m.modified)
            .max()
            .unwrap_or_else(SystemTime::now)
            .duration_since(UNIX_EPOCH)
            .or_else(|_| SystemTime::now().duration_since(UNIX_EPOCH))
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let mut parts = Vec::new();
        let mut pins_held = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let io = |e: std::io::Error| Incomplete(format!("cannot build the archive: {e}"));
        for layer in models.iter().flat_map(|m| m.manifest.blobs()) {
            if !seen.insert(layer.digest.clone()) {
                continue;
            }
            pins_held.push(pins.pin(&layer.digest));
            let path = layout.blob_path(&layer.digest);
            let file = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&path)
                .map_err(|e| {
                    Incomplete(format!("blob {} is not in the cache ({e})", layer.digest))
                })?;
            let meta = file.metadata().map_err(io)?;
            if !meta.is_file() || meta.len() != layer.size {
                return Err(Incomplete(format!(
                    "blob {} is incomplete in the cache ({} of {} bytes)",
                    layer.digest,
                    meta.len(),
                    layer.size
                )));
            }
            parts.push(Part::Bytes(
                header(
                    &format!("blobs/{}", layer.digest.file_name()),
                    layer.size,
                    mtime,
                )
                .map_err(io)?,
            ));
            parts.push(Part::File {
                file,
                len: layer.size,
                pad: padding(layer.size),
            });
        }
        let mut tail = BytesMut::new();
        for model in models {
            let n = &model.name;
            let mpath = format!("manifests/{}/{}/{}/{}", n.host, n.namespace, n.model, n.tag);
            let mbytes = model.manifest_bytes.as_slice();
            tail.extend_from_slice(&header(&mpath, mbytes.len() as u64, mtime).map_err(io)?);
            tail.extend_from_slice(mbytes);
            tail.extend_from_slice(&vec![0u8; padding(mbytes.len() as u64) as usize]);
        }
        parts.push(Part::Bytes(tail.freeze()));
        for e in hub {
            match e {
                HubEntry::File { path, file, len } => {
                    parts.push(Part::Bytes(header(&path, len, mtime).map_err(io)?));
                    parts.push(Part::File {
                        file,
                        len,
                        pad: padding(len),
                    });
                }
                HubEntry::Link { path, target } => parts.push(Part::Bytes(
                    entry_header(&path, 0, mtime, Some(&target)).map_err(io)?,
                )),
                HubEntry::Data { path, bytes } => {
                    let mut b =
                        BytesMut::from(&header(&path, bytes.len() as u64, mtime).map_err(io)?[..]);
                    b.extend_from_slice(&bytes);
                    b.extend_from_slice(&vec![0u8; padding(bytes.len() as u64) as usize]);
                    parts.push(Part::Bytes(b.freeze()));
                }
            }
        }
        parts.push(Part::Bytes(Bytes::from_static(&[0u8; 2 * BLOCK as usize])));
        let len = parts
            .iter()
            .map(|p| match p {
                Part::Bytes(b) => b.len() as u64,
                Part::File { len, pad, .. } => len + pad,
            })
            .sum();
        Ok(Archive {
            parts,
            len,
            _pins: pins_held,
        })
    }

    /// The response body; `session` counts the bytes and ends with the stream.
    pub fn into_body(self, session: SessionGuard) -> Body {
        StreamBody::new(self.into_stream(Some(session)).map_ok(Frame::data)).boxed()
    }

    /// The archive's bytes in order (the control socket's `export` writes them raw).
    pub fn into_stream(
        self,
        session: Option<SessionGuard>,
    ) -> impl futures_util::Stream<Item = std::io::Result<Bytes>> + Send {
        struct St {
            parts: std::vec::IntoIter<Part>,
            current: Option<(tokio::fs::File, u64, u64)>,
            session: Option<SessionGuard>,
            _pins: Vec<crate::store::pins::Pin>,
        }
        let st = St {
            parts: self.parts.into_iter(),
            current: None,
            session,
            _pins: self._pins,
        };
        let s = stream::try_unfold(st, |mut st| async move {
            loop {
                if let Some((file, left, pad)) = &mut st.current {
                    if *left > 0 {
                        let want = (*left).min(CHUNK as u64) as usize;
                        let mut buf = BytesMut::zeroed(want);
                        let n = file.read(&mut buf[..]).await?;
                        if n == 0 {
                            // The blob shrank under us: abort so the client sees a truncated
                            // archive, never one that looks whole.
                            return Err(std::io::Error::new(
                                std::io::ErrorKind::UnexpectedEof,
                                "blob shorter than its manifest says",
                            ));
                        }
                        buf.truncate(n);
                        *left -= n as u64;
                        add(&st.session, n as u64);
                        return Ok(Some((buf.freeze(), st)));
                    }
                    let pad = *pad;
                    st.current = None;
                    if pad > 0 {
                        add(&st.session, pad);
                        return Ok(Some((Bytes::from(vec![0u8; pad as usize]), st)));
                    }
                }
                match st.parts.next() {
                    None => return Ok(None),
                    Some(Part::Bytes(b)) => {
                        add(&st.session, b.len() as u64);
                        return Ok(Some((b, st)));
                    }
                    Some(Part::File { file, len, pad }) => {
                        st.current = Some((tokio::fs::File::from_std(file), len, pad));
                    }
                }
            }
        });
        s
    }
}

fn add(session: &Option<SessionGuard>, n: u64) {
    if let Some(s) = session {
        s.add(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_record_length_counts_itself() {
        let r = pax_record("path", "x");
        assert_eq!(r, b"9 path=x\n");
        let long = "a".repeat(95);
        let r = pax_record("path", &long);
        let s = String::from_utf8(r.clone()).unwrap();
        let n: usize = s.split(' ').next().unwrap().parse().unwrap();
        assert_eq!(n, r.len());
    }

    #[test]
    fn long_paths_get_a_pax_header() {
        let long = format!("manifests/{}/ns/model/tag", "h".repeat(200));
        let h = header(&long, 10, 0).unwrap();
        assert_eq!(h.len(), 512 * 3);
        assert_eq!(header("blobs/sha256-x", 10, 0).unwrap().len(), 512);
    }
}
