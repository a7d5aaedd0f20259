//! A middle hop on its own loopback address: answers every request with a redirect whose
//! `Location` a closure computes from the request target (404 when it returns `None`). It
//! plays huggingface.co between hf.co and the CDN: `hf.co` 307 → `huggingface.co/v2/...?__sign=`
//! 302 → CDN. Counts the requests it saw, so a test can tell the chain was really walked.
//!
//! Plain threads and blocking sockets, like `upstream`.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

type Target = dyn Fn(&str) -> Option<String> + Send + Sync;

pub struct Hop {
    pub addr: SocketAddr,
    requests: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl Hop {
    /// Listens on `ip` (port 0) and redirects with `status` to `target(path_and_query)`.
    pub fn start(
        ip: &str,
        status: u16,
        target: impl Fn(&str) -> Option<String> + Send + Sync + 'static,
    ) -> Hop {
        let l = TcpListener::bind((ip, 0)).unwrap();
        let addr = l.local_addr().unwrap();
        let requests = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let target: Arc<Target> = Arc::new(target);
        let (r, st) = (requests.clone(), stop.clone());
        std::thread::spawn(move || {
            for conn in l.incoming() {
                if st.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(conn) = conn else { continue };
                let (r, target) = (r.clone(), target.clone());
                std::thread::spawn(move || {
                    let _ = serve(conn, status, &*target, &r);
                });
            }
        });
        Hop {
            addr,
            requests,
            stop,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }
}

impl Drop for Hop {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
    }
}

fn serve(conn: TcpStream, status: u16, target: &Target, n: &AtomicU64) -> std::io::Result<()> {
    let mut r = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    r.read_line(&mut line)?;
    let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
    loop {
        let mut h = String::new();
        if r.read_line(&mut h)? == 0 || h == "\r\n" || h == "\n" {
            break;
        }
    }
    n.fetch_add(1, Ordering::SeqCst);
    let mut conn = conn;
    let head = match target(&path) {
        Some(loc) => format!(
            "HTTP/1.1 {status} X\r\nLocation: {loc}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        ),
        None => "HTTP/1.1 404 X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_string(),
    };
    conn.write_all(head.as_bytes())
}
