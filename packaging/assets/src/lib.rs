//! Man pages and shell completions rendered from the binaries' own clap definitions, so the
//! documentation shipped in the .deb/.rpm can never drift from the options the code accepts.
//!
//! Each binary calls [`generate`] with its `clap::Command` from a hidden option
//! (`lancached --generate-assets DIR`, `lancachectl generate-assets DIR`); `scripts/package.sh`
//! runs both before building the packages. This lives in its own small crate because both
//! binaries need it and neither depends on the other.

use clap::Command;
use clap_complete::Shell;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Writes `DIR/man/<name>.<section>` (plus `<name>-<sub>.<section>` for every visible
/// subcommand) and `DIR/completions/{<name>.bash, _<name>, <name>.fish}`. Returns the files
/// written.
pub fn generate(cmd: Command, section: &str, dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    let man_dir = dir.join("man");
    let comp_dir = dir.join("completions");
    std::fs::create_dir_all(&man_dir)?;
    std::fs::create_dir_all(&comp_dir)?;

    let mut cmd = cmd.disable_help_subcommand(true);
    cmd.build();
    man_pages(&cmd, section, &man_dir, &mut written)?;

    let name = cmd.get_name().to_string();
    for (shell, file) in [
        (Shell::Bash, format!("{name}.bash")),
        (Shell::Zsh, format!("_{name}")),
        (Shell::Fish, format!("{name}.fish")),
    ] {
        let path = comp_dir.join(file);
        let mut out = std::fs::File::create(&path)?;
        clap_complete::generate(shell, &mut cmd, name.clone(), &mut out);
        out.flush()?;
        written.push(path);
    }
    Ok(written)
}

/// One page per command and visible subcommand (hidden ones, like `generate-assets`, are
/// internal), all in the same manual section.
fn man_pages(
    cmd: &Command,
    section: &str,
    dir: &Path,
    written: &mut Vec<PathBuf>,
) -> std::io::Result<()> {
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        man_pages(sub, section, dir, written)?;
    }
    let man = clap_mangen::Man::new(cmd.clone())
        .section(section)
        .manual("lancache");
    written.push(man.generate_to(dir)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Command {
        Command::new("tool")
            .version("1.0")
            .about("A sample")
            .subcommand(Command::new("run").about("Runs"))
            .subcommand(Command::new("secret").hide(true))
    }

    #[test]
    fn writes_pages_and_completions() {
        let dir = tempfile::tempdir().unwrap();
        let files = generate(sample(), "8", dir.path()).unwrap();
        let names: Vec<String> = files
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        for want in ["tool.8", "tool-run.8", "tool.bash", "_tool", "tool.fish"] {
            assert!(names.iter().any(|n| n == want), "{want} missing: {names:?}");
        }
        assert!(!names.iter().any(|n| n.contains("secret")), "{names:?}");
        let page = std::fs::read_to_string(dir.path().join("man/tool.8")).unwrap();
        assert!(page.contains(".TH tool 8"), "{page}");
        let bash = std::fs::read_to_string(dir.path().join("completions/tool.bash")).unwrap();
        assert!(bash.contains("complete -F"), "{bash}");
    }
}
