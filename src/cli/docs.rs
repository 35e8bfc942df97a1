//! `concord generate-docs DIR`: the man page and the shell completions, from the same command
//! line definition the binary parses (hack/deb.sh puts them in the Debian package), and the
//! metrics reference (docs/metrics.md), from the metrics registry.

use std::path::Path;

use clap_complete::Shell;

/// Writes `concord.8`, `concord.bash`, `_concord` (zsh), `concord.fish` and `metrics.md` into
/// `dir`.
pub fn generate(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let cmd = super::command();
    let mut man = Vec::new();
    clap_mangen::Man::new(cmd.clone())
        .section("8")
        .render(&mut man)?;
    write(dir, "concord.8", &man)?;
    for (shell, name) in [
        (Shell::Bash, "concord.bash"),
        (Shell::Zsh, "_concord"),
        (Shell::Fish, "concord.fish"),
    ] {
        let mut out = Vec::new();
        clap_complete::generate(shell, &mut cmd.clone(), "concord", &mut out);
        write(dir, name, &out)?;
    }
    write(
        dir,
        "metrics.md",
        concord::metrics::docs::markdown().as_bytes(),
    )?;
    Ok(())
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> anyhow::Result<()> {
    let path = dir.join(name);
    std::fs::write(&path, bytes)
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))
}
