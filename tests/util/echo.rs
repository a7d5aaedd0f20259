//! A stand-in for a website behind a relayed host (hf.co's short links, later huggingface.co's
//! pages, login, uploads, git): records every request exactly as it arrived (method, target,
//! headers in order, body, with chunked bodies decoded) and answers by path:
//! - `/redirect/<rest>`: 307 to `https://huggingface.co/<rest>` (a link for the browser);
//! - `/big/<n>`: `n` deterministic bytes;
//! - `/slow`: `first-`, a pause of [`SLOW_PAUSE`], then `second` (to see streaming);
//! - anything else: 200 with the request body echoed, and a `Set-Cookie`.
//!
//! Plain threads and blocking sockets, like `upstream`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub const SLOW_PAUSE: Duration = Duration::from_millis(1500);

#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub target: String,
    /// Names lower-cased, in arrival order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

pub struct Echo {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    stop: Arc<AtomicBool>,
}

impl Echo {
    pub fn start() -> Echo {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (seen.clone(), stop.clone());
        std::thread::spawn(move || {
            for conn in l.incoming() {
                if st.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(conn) = conn else { continue };
                let s = s.clone();
                std::thread::spawn(move || {
                    let _ = serve(conn, &s);
                });
            }
        });
        Echo { addr, seen, stop }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every request so far, oldest first.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn last(&self) -> Seen {
        self.seen().pop().expect("the stand-in saw no request")
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
    }
}

fn serve(conn: TcpStream, seen: &Mutex<Vec<Seen>>) -> std::io::Result<()> {
    let mut r = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    r.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let target = parts.next().unwrap_or("").to_string();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if r.read_line(&mut h)? == 0 || h == "\r\n" || h == "\n" {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let get = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    let mut body = Vec::new();
    if get("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        loop {
            let mut size = String::new();
            r.read_line(&mut size)?;
            let n = usize::from_str_radix(size.trim().split(';').next().unwrap_or("0"), 16)
                .unwrap_or(0);
            let mut chunk = vec![0; n + 2];
            r.read_exact(&mut chunk)?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
    } else if let Some(n) = get("content-length").and_then(|v| v.parse::<usize>().ok()) {
        body.resize(n, 0);
        r.read_exact(&mut body)?;
    }
    seen.lock().unwrap().push(Seen {
        method: method.clone(),
        target: target.clone(),
        headers,
        body: body.clone(),
    });
    let mut conn = conn;
    let path = target.split('?').next().unwrap_or("");
    if let Some(rest) = path.strip_prefix("/redirect/") {
        let head = format!(
            "HTTP/1.1 307 X\r\nLocation: https://huggingface.co/{rest}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        return conn.write_all(head.as_bytes());
    }
    if let Some(n) = path.strip_prefix("/big/") {
        let bytes = super::upstream::blob_bytes(n.parse().unwrap_or(0), 7);
        let head = format!(
            "HTTP/1.1 200 X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            bytes.len()
        );
        conn.write_all(head.as_bytes())?;
        return conn.write_all(&bytes);
    }
    if path == "/slow" {
        conn.write_all(b"HTTP/1.1 200 X\r\nContent-Length: 12\r\nConnection: close\r\n\r\nfirst-")?;
        conn.flush()?;
        std::thread::sleep(SLOW_PAUSE);
        return conn.write_all(b"second");
    }
    let head = format!(
        "HTTP/1.1 200 X\r\nContent-Length: {}\r\nSet-Cookie: session=abc; Secure\r\nKeep-Alive: timeout=5\r\nX-Echo-Method: {method}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    if method == "HEAD" {
        return conn.write_all(head.as_bytes());
    }
    conn.write_all(head.as_bytes())?;
    conn.write_all(&body)
}
