//! The .deb and .rpm that `scripts/package.sh` writes to target/packages/ (scripts/test.sh
//! builds them once before the suite; these tests only read them):
//! - Debian policy as lintian checks it, and rpmlint: no errors and no warnings beyond the
//!   suppressions listed with their reasons in packaging/debian/lintian-overrides and
//!   packaging/rpm/rpmlint.toml;
//! - both carry the version of Cargo.toml (as do both binaries' --version), both binaries, the units, sysusers.d and tmpfiles.d
//!   files, the configuration as a conffile / %config(noreplace), man pages, bash/zsh/fish
//!   completions and the docs;
//! - the .deb installed with dpkg into a Debian bookworm (debootstrap minbase + systemd) chroot:
//!   the `lancache` user exists, files are where the FHS says, the enable symlinks of the four
//!   sockets and the service exist, `lancached --check-config` passes as user lancache with the
//!   shipped config, the installed units pass `systemd-analyze verify` and security <= 1.5;
//!   reinstalling (the upgrade path) keeps them enabled; remove disables and keeps the cache and
//!   config; purge removes everything the package made;
//! - a real systemd (PID 1 of a `systemd-nspawn --boot` container of that chroot) runs the
//!   installed package: sockets listening, the service active as user lancache with no
//!   capabilities under all its hardening, serving on the activated port, `systemctl reload`
//!   (ExecReload) succeeding, failing on a broken file while the service stays up, an upgrade
//!   restarting it, a clean `systemctl stop`, a connection to the control socket starting it
//!   again, and `dpkg -r` stopping the service and all four sockets;
//! - the .rpm's payload (`rpm -qpl`), config flags and scriptlets (`rpm -qp --scripts`, the
//!   hand-written files verbatim, no macros), then installed with `rpm --root` into a bookworm
//!   chroot (scriptlets run: user, enable symlinks) and erased (disabled, cache kept).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::systemd::{repo, UNITS};

struct Packages {
    deb: PathBuf,
    rpm: PathBuf,
}

const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The packages of this version in target/packages, checked to be newer than every file of the
/// repository that goes into them (so a test never passes on a stale package).
fn packages() -> &'static Packages {
    static P: OnceLock<Packages> = OnceLock::new();
    P.get_or_init(|| {
        let dir = std::env::var_os("LANCACHE_PACKAGES")
            .map(PathBuf::from)
            .unwrap_or_else(|| repo().join("target/packages"));
        let find = |suffix: &str| -> PathBuf {
            let hits: Vec<PathBuf> = std::fs::read_dir(&dir)
                .map(|rd| {
                    rd.flatten()
                        .map(|e| e.path())
                        .filter(|p| p.to_string_lossy().ends_with(suffix))
                        .collect()
                })
                .unwrap_or_default();
            assert!(
                hits.len() == 1,
                "expected one *{suffix} in {} (found {hits:?}): run scripts/package.sh",
                dir.display()
            );
            hits.into_iter().next().unwrap()
        };
        let deb = find(".deb");
        let rpm = find(".rpm");
        let name = |p: &Path| p.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            name(&deb).starts_with(&format!("lancached_{VERSION}-1_")),
            "{deb:?} is not version {VERSION}: run scripts/package.sh"
        );
        assert!(
            name(&rpm).starts_with(&format!("lancached-{VERSION}-1.")),
            "{rpm:?} is not version {VERSION}: run scripts/package.sh"
        );
        let built = std::fs::metadata(&deb)
            .unwrap()
            .modified()
            .unwrap()
            .min(std::fs::metadata(&rpm).unwrap().modified().unwrap());
        for input in [
            "systemd",
            "packaging/debian",
            "packaging/rpm",
            "packaging/lancached.toml",
        ]
        .iter()
        .flat_map(|p| files_under(&repo().join(p)))
        .chain([repo().join("Cargo.toml")])
        {
            let changed = std::fs::metadata(&input).unwrap().modified().unwrap();
            assert!(
                changed <= built,
                "{} changed after the packages were built: run scripts/package.sh",
                input.display()
            );
        }
        Packages { deb, rpm }
    })
}

fn files_under(p: &Path) -> Vec<PathBuf> {
    if p.is_file() {
        return vec![p.to_path_buf()];
    }
    std::fs::read_dir(p)
        .unwrap()
        .flatten()
        .flat_map(|e| files_under(&e.path()))
        .collect()
}

/// Runs a command, fails the test with its output unless it succeeds; returns stdout.
fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// What both packages install, wherever the format puts the units.
fn common_payload(units_dir: &str, zsh_dir: &str) -> Vec<String> {
    let mut v: Vec<String> = [
        "/usr/bin/lancached",
        "/usr/bin/lancachectl",
        "/etc/lancached/lancached.toml",
        "/usr/lib/sysusers.d/lancached.conf",
        "/usr/lib/tmpfiles.d/lancached.conf",
        "/usr/share/man/man8/lancached.8.gz",
        "/usr/share/man/man1/lancachectl.1.gz",
        "/usr/share/man/man1/lancachectl-reload.1.gz",
        "/usr/share/bash-completion/completions/lancached",
        "/usr/share/bash-completion/completions/lancachectl",
        "/usr/share/fish/vendor_completions.d/lancached.fish",
        "/usr/share/fish/vendor_completions.d/lancachectl.fish",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    v.push(format!("{zsh_dir}/_lancached"));
    v.push(format!("{zsh_dir}/_lancachectl"));
    for u in UNITS {
        v.push(format!("{units_dir}/{u}"));
    }
    v
}

// ---- .deb --------------------------------------------------------------------------------

#[test]
fn deb_metadata_and_payload() {
    if !crate::util::require_program("dpkg-deb") {
        return;
    }
    let p = packages();
    let field = |f: &str| run(Command::new("dpkg-deb").args(["-f"]).arg(&p.deb).arg(f));
    assert_eq!(field("Package").trim(), "lancached");
    assert_eq!(field("Version").trim(), format!("{VERSION}-1"));
    assert!(field("Depends").contains("systemd"), "{}", field("Depends"));
    let listing = run(Command::new("dpkg-deb").arg("-c").arg(&p.deb));
    let paths: Vec<&str> = listing
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .map(|p| p.trim_start_matches('.'))
        .collect();
    for want in common_payload("/lib/systemd/system", "/usr/share/zsh/vendor-completions")
        .iter()
        .map(String::as_str)
        .chain([
            "/usr/share/doc/lancached/copyright",
            "/usr/share/doc/lancached/changelog.Debian.gz",
            "/usr/share/lintian/overrides/lancached",
        ])
    {
        assert!(
            paths.contains(&want),
            "{want} missing from the .deb:\n{listing}"
        );
    }
    let ctrl = tempfile::tempdir().unwrap();
    run(Command::new("dpkg-deb")
        .arg("-e")
        .arg(&p.deb)
        .arg(ctrl.path()));
    let conffiles = std::fs::read_to_string(ctrl.path().join("conffiles")).unwrap();
    assert_eq!(conffiles.trim(), "/etc/lancached/lancached.toml");
    for script in ["postinst", "prerm", "postrm"] {
        let shipped = std::fs::read_to_string(ctrl.path().join(script)).unwrap();
        let ours = std::fs::read_to_string(repo().join("packaging/debian").join(script)).unwrap();
        assert_eq!(shipped, ours, "{script} is not the hand-written one");
    }
    // The shipped config is the built-in default, byte for byte.
    let cfg = run(Command::new("sh").arg("-c").arg(format!(
        "dpkg-deb --fsys-tarfile {} | tar -xOf - ./etc/lancached/lancached.toml",
        p.deb.display()
    )));
    assert_eq!(cfg, lancached::config::PACKAGED_TOML);
}

#[test]
fn lintian_reports_nothing() {
    if !crate::util::require_program("lintian") {
        return;
    }
    let p = packages();
    // The overrides ship in the package (/usr/share/lintian/overrides/lancached), so lintian
    // applies them by itself; each says why. Errors and warnings fail; info tags are printed
    // but do not: one of them, spelling-error-in-binary, matches random bytes of machine code
    // ("tHIk") and comes and goes with every build.
    let out = Command::new("lintian")
        .args([
            "--display-info",
            "--fail-on",
            "error,warning",
            "--tag-display-limit",
            "0",
        ])
        .arg(&p.deb)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    eprintln!("lintian:\n{text}");
    let findings: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("E:") || l.starts_with("W:"))
        .collect();
    assert!(
        out.status.success() && findings.is_empty(),
        "lintian:\n{text}"
    );
}

/// A fresh copy of the cached bookworm chroot (scripts/bookworm-chroot.sh), with /proc mounted
/// for the maintainer scripts' tools; unmounted and deleted on drop.
struct Chroot {
    dir: Option<tempfile::TempDir>,
}

impl Chroot {
    fn new() -> Chroot {
        let tar = std::env::var_os("LANCACHE_CHROOT_TAR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/var/cache/lancache-test/chroot.tar"));
        assert!(
            tar.exists(),
            "{} is missing: run scripts/bookworm-chroot.sh (scripts/test.sh does)",
            tar.display()
        );
        let dir = tempfile::Builder::new()
            .prefix("lancache-chroot")
            .tempdir_in("/var/tmp")
            .unwrap();
        run(Command::new("tar")
            .arg("-xf")
            .arg(&tar)
            .arg("-C")
            .arg(dir.path()));
        run(Command::new("mount")
            .args(["-t", "proc", "proc"])
            .arg(dir.path().join("proc")));
        Chroot { dir: Some(dir) }
    }

    /// Makes the maintainer scripts believe systemd is running (`/run/systemd/system`), and
    /// records every `systemctl` call they make before handing it to the real one, offline
    /// (`SYSTEMD_OFFLINE=1`: enable/disable change files, start/stop are ignored). So the tests
    /// see what would be started, restarted and stopped on a live system.
    fn record_systemctl(&self) {
        std::fs::create_dir_all(self.path("/run/systemd/system")).unwrap();
        std::fs::rename(
            self.path("/usr/bin/systemctl"),
            self.path("/usr/bin/systemctl.real"),
        )
        .unwrap();
        std::fs::write(
            self.path("/usr/bin/systemctl"),
            "#!/bin/sh\necho \"$*\" >>/var/log/systemctl.calls\nSYSTEMD_OFFLINE=1 exec /usr/bin/systemctl.real \"$@\"\n",
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            self.path("/usr/bin/systemctl"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
    }

    /// The `systemctl` calls recorded since the last call of this function.
    fn systemctl_calls(&self) -> Vec<String> {
        let log = self.path("/var/log/systemctl.calls");
        let calls = std::fs::read_to_string(&log).unwrap_or_default();
        let _ = std::fs::remove_file(&log);
        calls
            .lines()
            .filter(|l| !l.contains("is-enabled") && !l.contains("is-active"))
            .filter(|l| !l.starts_with("--version"))
            .map(str::to_string)
            .collect()
    }

    fn root(&self) -> &Path {
        self.dir.as_ref().unwrap().path()
    }

    /// Before handing the tree to systemd-nspawn, which mounts its own /proc.
    fn unmount_proc(&self) {
        run(Command::new("umount").arg(self.path("/proc")));
    }

    fn path(&self, p: &str) -> PathBuf {
        self.root().join(p.trim_start_matches('/'))
    }

    /// `sh -c SCRIPT` inside the chroot; panics with the output on failure.
    fn sh(&self, script: &str) -> String {
        run(Command::new("chroot")
            .arg(self.root())
            .args(["/bin/sh", "-c", script])
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env_remove("NOTIFY_SOCKET"))
    }

    fn copy_in(&self, file: &Path) -> String {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        std::fs::copy(file, self.path("/tmp").join(&name)).unwrap();
        format!("/tmp/{name}")
    }

    fn enabled_links(&self) -> Vec<String> {
        let mut links = Vec::new();
        for (wants, unit) in [
            ("multi-user.target.wants", "lancached.service"),
            ("sockets.target.wants", "lancached-dns.socket"),
            ("sockets.target.wants", "lancached-http.socket"),
            ("sockets.target.wants", "lancached-https.socket"),
            ("sockets.target.wants", "lancached-control.socket"),
        ] {
            let link = self.path(&format!("/etc/systemd/system/{wants}/{unit}"));
            if link.symlink_metadata().is_ok() {
                links.push(format!("{wants}/{unit}"));
            }
        }
        links
    }
}

impl Drop for Chroot {
    fn drop(&mut self) {
        let proc_ = self.root().join("proc");
        let mounted = std::fs::read_to_string("/proc/self/mounts")
            .map(|m| m.contains(&format!(" {} ", proc_.display())))
            .unwrap_or(true);
        let unmounted = !mounted
            || Command::new("umount")
                .arg(&proc_)
                .status()
                .is_ok_and(|s| s.success());
        if !unmounted {
            // Never let the recursive delete walk into a mounted /proc: leave the tree.
            let dir = self.dir.take().unwrap();
            eprintln!("umount failed; leaving {}", dir.path().display());
            std::mem::forget(dir);
        }
    }
}

#[test]
fn deb_installs_upgrades_removes_and_purges_in_bookworm() {
    for p in ["chroot", "mount", "tar", "systemd-analyze"] {
        if !crate::util::require_program(p) {
            return;
        }
    }
    let p = packages();
    let c = Chroot::new();
    c.record_systemctl();
    let deb = c.copy_in(&p.deb);
    c.sh(&format!("dpkg -i {deb}"));
    // First install: the sockets, then the service, are started.
    let calls = c.systemctl_calls();
    let started = |what: &str| calls.iter().any(|l| l.ends_with(&format!("start {what}")));
    assert!(
        started("lancached-dns.socket lancached-http.socket lancached-https.socket lancached-control.socket")
            && started("lancached.service"),
        "{calls:?}"
    );

    // The user, from sysusers.d: a system account that cannot log in.
    let pw = c.sh("getent passwd lancache");
    let fields: Vec<&str> = pw.trim().split(':').collect();
    assert!(
        fields[2].parse::<u32>().unwrap() < 1000,
        "not a system uid: {pw}"
    );
    assert_eq!(fields[6], "/usr/sbin/nologin", "{pw}");
    c.sh("getent group lancache");

    // Files in FHS places.
    for f in common_payload("/lib/systemd/system", "/usr/share/zsh/vendor-completions") {
        assert!(c.path(&f).exists(), "{f} not installed");
    }
    for d in ["/var/cache/lancached", "/var/lib/lancached"] {
        let owner = c.sh(&format!("stat -c '%U:%G %a' {d}"));
        assert_eq!(owner.trim(), "lancache:lancache 750", "{d}");
    }

    // dpkg recorded the checksums itself (the lintian override for no-md5sums-control-file).
    assert!(c.path("/var/lib/dpkg/info/lancached.md5sums").exists());
    c.sh("dpkg --verify lancached");

    // Enabled: the four sockets and the service.
    assert_eq!(c.enabled_links().len(), 5, "{:?}", c.enabled_links());

    // The shipped config is valid, read as the service user.
    let ok = c.sh("setpriv --reuid=lancache --regid=lancache --init-groups \
         lancached --check-config --config /etc/lancached/lancached.toml");
    assert!(ok.contains("valid"), "{ok}");

    // The installed unit set, as systemd would load it.
    c.sh(
        "systemd-analyze verify --man=no /lib/systemd/system/lancached.service \
         /lib/systemd/system/lancached-dns.socket /lib/systemd/system/lancached-http.socket \
         /lib/systemd/system/lancached-https.socket /lib/systemd/system/lancached-control.socket",
    );
    let (figure, report) = crate::systemd::exposure(c.root());
    assert!(figure <= 1.5, "installed unit exposure {figure}:\n{report}");

    // Upgrade path (configure with the old version as $2): still enabled, config kept.
    std::fs::write(
        c.path("/etc/lancached/lancached.toml"),
        format!(
            "{}\n# edited by the admin\n",
            lancached::config::PACKAGED_TOML
        ),
    )
    .unwrap();
    c.sh(&format!("dpkg -i --force-confold {deb}"));
    assert_eq!(c.enabled_links().len(), 5, "{:?}", c.enabled_links());
    // Upgrade: the service restarts on the new binary; nothing is stopped.
    let calls = c.systemctl_calls();
    assert!(
        calls
            .iter()
            .any(|l| l.ends_with("restart lancached.service")),
        "{calls:?}"
    );
    assert!(!calls.iter().any(|l| l.contains("stop")), "{calls:?}");
    assert!(
        std::fs::read_to_string(c.path("/etc/lancached/lancached.toml"))
            .unwrap()
            .contains("edited by the admin")
    );

    // Something in the cache, as the daemon would leave it.
    std::fs::create_dir_all(c.path("/var/cache/lancached/blobs")).unwrap();
    std::fs::write(c.path("/var/cache/lancached/blobs/sha256-00"), b"x").unwrap();

    // Remove: binaries and units gone, disabled; cache, state and config kept.
    c.sh("dpkg -r lancached");
    let calls = c.systemctl_calls();
    assert!(
        calls.iter().any(|l| l.ends_with("stop lancached.service"))
            && calls.iter().any(|l| l.ends_with(
                "stop lancached-dns.socket lancached-http.socket lancached-https.socket lancached-control.socket"
            )),
        "{calls:?}"
    );
    assert!(!c.path("/usr/bin/lancached").exists());
    assert!(!c.path("/lib/systemd/system/lancached.service").exists());
    assert!(c.enabled_links().is_empty(), "{:?}", c.enabled_links());
    assert!(c.path("/var/cache/lancached/blobs/sha256-00").exists());
    assert!(c.path("/etc/lancached/lancached.toml").exists());

    // Purge: nothing the package made is left (the user stays, see postrm).
    c.sh("dpkg -P lancached");
    for gone in [
        "/etc/lancached",
        "/var/cache/lancached",
        "/var/lib/lancached",
        "/run/lancached",
        "/usr/share/doc/lancached",
        "/var/lib/systemd/deb-systemd-helper-enabled/lancached.service.dsh-also",
    ] {
        assert!(!c.path(gone).exists(), "{gone} left after purge");
    }
    let left = c.sh("dpkg -l lancached 2>/dev/null | grep -c '^[ip]' || true");
    assert_eq!(left.trim(), "0", "dpkg still lists lancached");
    assert!(c.enabled_links().is_empty());
}

// ---- .rpm --------------------------------------------------------------------------------

fn rpm_q(rpm: &Path, args: &[&str]) -> String {
    run(Command::new("rpm").arg("-qp").args(args).arg(rpm))
}

#[test]
fn rpm_metadata_payload_and_scriptlets() {
    if !crate::util::require_program("rpm") {
        return;
    }
    let p = packages();
    assert_eq!(
        rpm_q(&p.rpm, &["--qf", "%{NAME} %{VERSION} %{RELEASE}"]),
        format!("lancached {VERSION} 1")
    );
    let requires = rpm_q(&p.rpm, &["--requires"]);
    assert!(
        requires.lines().any(|l| l.starts_with("systemd")),
        "{requires}"
    );

    let listing = rpm_q(&p.rpm, &["-l"]);
    for want in common_payload("/usr/lib/systemd/system", "/usr/share/zsh/site-functions") {
        assert!(
            listing.lines().any(|l| l == want),
            "{want} missing from the .rpm:\n{listing}"
        );
    }
    assert!(listing
        .lines()
        .any(|l| l == "/usr/share/licenses/lancached/LICENSE"));
    // %config(noreplace): flags c (config) and n (noreplace).
    let flags = rpm_q(&p.rpm, &["--qf", "[%{FILENAMES} %{FILEFLAGS:fflags}\n]"]);
    let cfg = flags
        .lines()
        .find(|l| l.starts_with("/etc/lancached/lancached.toml "))
        .unwrap();
    assert!(cfg.ends_with(" cn"), "{cfg}");
    // Modes: binaries executable, everything else not.
    let modes = rpm_q(&p.rpm, &["--qf", "[%{FILEMODES:perms} %{FILENAMES}\n]"]);
    for line in modes.lines() {
        let (perms, path) = line.split_once(' ').unwrap();
        let exec = path.starts_with("/usr/bin/") || path.ends_with(".sh");
        assert_eq!(perms.starts_with("-rwx"), exec, "{line}");
        assert!(!perms.contains('w') || perms.starts_with("-rw"), "{line}");
    }

    // The scriptlets are the hand-written files, verbatim, run by /bin/sh, free of macros.
    let scripts = rpm_q(&p.rpm, &["--scripts"]);
    for (header, file) in [
        ("postinstall scriptlet (using /bin/sh):", "post.sh"),
        ("preuninstall scriptlet (using /bin/sh):", "preun.sh"),
        ("postuninstall scriptlet (using /bin/sh):", "postun.sh"),
    ] {
        let body = std::fs::read_to_string(repo().join("packaging/rpm").join(file)).unwrap();
        let at = scripts
            .find(header)
            .unwrap_or_else(|| panic!("no {header}\n{scripts}"));
        assert!(
            scripts[at + header.len()..]
                .trim_start()
                .starts_with(body.trim()),
            "{file} not shipped verbatim:\n{scripts}"
        );
        assert!(!body.contains("%{"), "{file} uses an rpm macro");
    }
}

#[test]
fn rpmlint_reports_nothing() {
    if !crate::util::require_program("rpmlint") {
        return;
    }
    let p = packages();
    let out = Command::new("rpmlint")
        .arg("--config")
        .arg(repo().join("packaging/rpm/rpmlint.toml"))
        .arg(&p.rpm)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && text.contains("0 errors, 0 warnings"),
        "rpmlint:\n{text}"
    );
}

#[test]
fn rpm_installs_and_erases_with_rpm_root() {
    for p in ["rpm", "chroot", "mount", "tar"] {
        if !crate::util::require_program(p) {
            return;
        }
    }
    let p = packages();
    // A bookworm root: the scriptlets run chrooted into it and need sh, systemd-sysusers,
    // systemd-tmpfiles and systemctl, which it has.
    let c = Chroot::new();
    c.record_systemctl();
    let root = c.root().display().to_string();
    run(Command::new("rpm").args(["--root", &root, "--initdb"]));
    run(Command::new("rpm")
        .args(["--root", &root, "-i", "--nodeps"])
        .arg(&p.rpm));
    let units = crate::systemd::UNITS[1..]
        .iter()
        .chain(&crate::systemd::UNITS[..1])
        .copied()
        .collect::<Vec<_>>()
        .join(" ");
    let calls = c.systemctl_calls();
    assert!(
        calls.contains(&format!("--no-reload enable {units}"))
            && calls.contains(&format!("start {units}")),
        "{calls:?}"
    );
    for f in common_payload("/usr/lib/systemd/system", "/usr/share/zsh/site-functions") {
        assert!(c.path(&f).exists(), "{f} not installed");
    }
    // %post ran: the user exists, the directories are its, the units are enabled.
    c.sh("getent passwd lancache");
    let owner = c.sh("stat -c '%U:%G' /var/cache/lancached");
    assert_eq!(owner.trim(), "lancache:lancache");
    assert_eq!(c.enabled_links().len(), 5, "{:?}", c.enabled_links());
    let ok = c.sh("lancached --check-config --config /etc/lancached/lancached.toml");
    assert!(ok.contains("valid"), "{ok}");

    // Upgrade (here: the same package again): the service is restarted, nothing disabled.
    run(Command::new("rpm")
        .args(["--root", &root, "-U", "--replacepkgs", "--nodeps"])
        .arg(&p.rpm));
    let calls = c.systemctl_calls();
    assert!(
        calls.iter().any(|l| l == "try-restart lancached.service"),
        "{calls:?}"
    );
    assert!(!calls.iter().any(|l| l.contains("disable")), "{calls:?}");
    assert_eq!(c.enabled_links().len(), 5, "{:?}", c.enabled_links());

    std::fs::write(c.path("/var/cache/lancached/keep"), b"x").unwrap();
    run(Command::new("rpm").args(["--root", &root, "-e", "--nodeps", "lancached"]));
    let calls = c.systemctl_calls();
    assert!(
        calls.contains(&format!("--no-reload disable --now {units}")),
        "{calls:?}"
    );
    // %preun disabled everything; the cache stays (rpm has no purge).
    assert!(c.enabled_links().is_empty(), "{:?}", c.enabled_links());
    assert!(!c.path("/usr/bin/lancached").exists());
    assert!(c.path("/var/cache/lancached/keep").exists());
}

/// Both packages take their version from the root Cargo.toml; lancachectl is another crate
/// with its own version field, which must not drift from it.
#[test]
fn both_binaries_carry_the_package_version() {
    for bin in [crate::util::lancached_bin(), crate::util::lancachectl_bin()] {
        let out = run(Command::new(&bin).arg("--version"));
        assert!(
            out.split_whitespace().nth(1) == Some(VERSION),
            "{}: {out:?}, packages are {VERSION}",
            bin.display()
        );
    }
}

/// Runs inside the booted container as a oneshot unit once lancached.service is up, and writes
/// what it saw to /var/lib/lancache-check/ (read by the test after the container powers off).
const CHECK_SCRIPT: &str = r#"#!/bin/bash
out=/var/lib/lancache-check
mkdir -p "$out"
exec 2>"$out/stderr"
set -x
say() { echo "$1=$2" >>"$out/results"; }
systemctl is-active lancached.service >"$out/active"; say active "$(cat "$out/active")"
for s in dns http https control; do say "socket_$s" "$(systemctl is-active lancached-$s.socket)"; done
systemctl show lancached.service -p User -p Type -p StatusText -p MainPID >"$out/show"
pid=$(systemctl show -P MainPID lancached.service)
say main_pid_user "$(getent passwd "$(awk '/^Uid:/ {print $2}' /proc/"$pid"/status)" | cut -d: -f1)"
say capeff "$(awk '/^CapEff:/ {print $2}' /proc/"$pid"/status)"
say nonewprivs "$(awk '/^NoNewPrivs:/ {print $2}' /proc/"$pid"/status)"
say seccomp "$(awk '/^Seccomp:/ {print $2}' /proc/"$pid"/status)"
lancachectl status --json >"$out/status.json"; say status_rc $?
# GET /health on the socket-activated port 80, with bash's /dev/tcp.
if exec 3<>/dev/tcp/127.0.0.1/80; then
  printf 'GET /health HTTP/1.0\r\nHost: x\r\n\r\n' >&3
  say health "$(head -1 <&3 | tr -d '\r')"
  exec 3<&-
fi
systemctl reload lancached.service; say reload_rc $?
cp /etc/lancached/lancached.toml /tmp/good.toml
printf '\n[cache]\nnot_a_key = 1\n' >>/etc/lancached/lancached.toml
systemctl reload lancached.service; say bad_reload_rc $?
say after_bad_reload "$(systemctl is-active lancached.service)"
cp /tmp/good.toml /etc/lancached/lancached.toml
# Upgrade (the same package again, configure with the old version): restarted, still up.
dpkg -i /root/lancached.deb >"$out/upgrade" 2>&1; say upgrade_rc $?
say after_upgrade "$(systemctl is-active lancached.service)"
[ "$(systemctl show -P MainPID lancached.service)" != "$pid" ] && say restarted yes
start=$(date +%s%N)
systemctl stop lancached.service; say stop_rc $?
say stop_ms $(( ($(date +%s%N) - start) / 1000000 ))
say result "$(systemctl show -P Result lancached.service)"
journalctl -u lancached.service --no-pager >"$out/journal"
# Socket activation proper: a connection to the control socket starts the service again.
lancachectl status >/dev/null; say reactivated_rc $?
say reactivated "$(systemctl is-active lancached.service)"
# Remove: prerm stops the service and all four sockets.
dpkg -r lancached >"$out/remove" 2>&1; say remove_rc $?
say after_remove "$(systemctl is-active lancached.service lancached-dns.socket lancached-http.socket lancached-https.socket lancached-control.socket | sort -u | tr '\n' ' ')"
say done yes
systemctl --no-block poweroff
"#;

/// A real systemd (PID 1 of a `systemd-nspawn --boot` container made from the bookworm chroot)
/// runs the installed package: the sockets listen, lancached.service starts under all its
/// hardening as user lancache with no capabilities and reports READY, serves on the activated
/// port, reloads through ExecReload (and refuses a broken file, staying up), and stops.
#[test]
fn systemd_runs_the_installed_package_in_a_container() {
    for p in ["chroot", "mount", "tar", "systemd-nspawn"] {
        if !crate::util::require_program(p) {
            return;
        }
    }
    let p = packages();
    let c = Chroot::new();
    let deb = c.copy_in(&p.deb);
    c.sh(&format!("dpkg -i {deb}"));
    // Where the check script finds it for the upgrade (nspawn puts a tmpfs on /tmp).
    std::fs::copy(&p.deb, c.path("/root/lancached.deb")).unwrap();
    std::fs::write(c.path("/usr/local/bin/lancache-check"), CHECK_SCRIPT).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        c.path("/usr/local/bin/lancache-check"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    std::fs::write(
        c.path("/etc/systemd/system/lancache-check.service"),
        "[Unit]\nAfter=lancached.service multi-user.target\nWants=lancached.service\n\n\
         [Service]\nType=oneshot\nExecStart=/usr/local/bin/lancache-check\n\n\
         [Install]\nWantedBy=multi-user.target\n",
    )
    .unwrap();
    std::os::unix::fs::symlink(
        "/etc/systemd/system/lancache-check.service",
        c.path("/etc/systemd/system/multi-user.target.wants/lancache-check.service"),
    )
    .unwrap();
    c.unmount_proc();

    // --private-network: the container's own ports 53/80/443, nothing reaches the host's.
    // --register=no/--keep-unit: there is no systemd (nor bus) on this host to register with.
    let machine = format!("lancache-test-{}", std::process::id());
    let mut nspawn = Command::new("systemd-nspawn")
        .args([
            "--quiet",
            "--boot",
            "--private-network",
            "--register=no",
            "--keep-unit",
        ])
        .arg(format!("--machine={machine}"))
        .arg("-D")
        .arg(c.root())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let status = loop {
        if let Some(s) = nspawn.try_wait().unwrap() {
            break Some(s);
        }
        if std::time::Instant::now() > deadline {
            let _ = nspawn.kill();
            let _ = nspawn.wait();
            break None;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    // nspawn leaves its (empty) propagation directory behind when it cannot register.
    let _ = std::fs::remove_dir(format!("/run/systemd/nspawn/propagate/{machine}"));
    let console = {
        use std::io::Read;
        let mut s = String::new();
        let _ = nspawn.stdout.take().unwrap().read_to_string(&mut s);
        let _ = nspawn.stderr.take().unwrap().read_to_string(&mut s);
        s
    };
    let read = |f: &str| std::fs::read_to_string(c.path(&format!("/var/lib/lancache-check/{f}")));
    let results = read("results").unwrap_or_default();
    let get = |k: &str| {
        results
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .unwrap_or("")
            .to_string()
    };
    let why = format!(
        "results:\n{results}\njournal:\n{}\nscript stderr:\n{}\nconsole:\n{console}",
        read("journal").unwrap_or_default(),
        read("stderr").unwrap_or_default()
    );
    assert!(
        status.is_some(),
        "container did not power off in time\n{why}"
    );
    assert_eq!(get("done"), "yes", "{why}");
    assert_eq!(get("active"), "active", "{why}");
    for s in ["dns", "http", "https", "control"] {
        assert_eq!(get(&format!("socket_{s}")), "active", "{s}.socket\n{why}");
    }
    assert_eq!(get("main_pid_user"), "lancache", "{why}");
    assert_eq!(get("capeff"), "0000000000000000", "{why}");
    assert_eq!(get("nonewprivs"), "1", "{why}");
    assert_eq!(get("seccomp"), "2", "SystemCallFilter= not in force\n{why}");
    assert_eq!(get("status_rc"), "0", "{why}");
    assert!(get("health").contains(" 200"), "{why}");
    assert_eq!(get("reload_rc"), "0", "{why}");
    assert_ne!(get("bad_reload_rc"), "0", "a broken config reloaded\n{why}");
    assert_eq!(get("after_bad_reload"), "active", "{why}");
    assert_eq!(get("upgrade_rc"), "0", "{why}");
    assert_eq!(get("after_upgrade"), "active", "{why}");
    assert_eq!(
        get("restarted"),
        "yes",
        "upgrade did not restart the service\n{why}"
    );
    assert_eq!(get("stop_rc"), "0", "{why}");
    assert_eq!(get("result"), "success", "{why}");
    assert_eq!(get("reactivated_rc"), "0", "{why}");
    assert_eq!(get("reactivated"), "active", "{why}");
    assert_eq!(get("remove_rc"), "0", "{why}");
    assert_eq!(get("after_remove").trim(), "inactive", "{why}");
    let status: serde_json::Value = serde_json::from_str(&read("status.json").unwrap()).unwrap();
    let text = status.to_string();
    for want in [
        "udp ",
        "tcp ",
        "unix /run/lancached/control.sock (socket-activated)",
    ] {
        assert!(text.contains(want), "{want} not in status: {text}");
    }
    eprintln!("{results}");
}
