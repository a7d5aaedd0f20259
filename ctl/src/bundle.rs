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
    let mut stream = match UnixStream::connect(socket) {
        Ok(s) => s,
        Err(e) => {
            eprintln!(
                "lancachectl: cannot reach lancached at {}: {e} (is lancached running? set --socket or LANCACHE_SOCKET)",
                socket.display()
            );
            return ExitCode::from(2);
        }
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
    let bar = if !json && std::io::stderr().is_terminal() {
        let b = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
        b.set_style(
            ProgressStyle::with_template(
                "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        b.set_message("export");
        b
    } else {
        ProgressBar::hidden()
    };
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
