//! `vmpilot generate`: the man page, shell completions and doc tables, all generated from
//! the code so they cannot drift from it.

use std::io::Write;
use std::path::Path;

use clap::CommandFactory;

use crate::cli::{Cli, GenerateArgs};
use crate::exit::{ExitStatus, UsageError};

/// Entry point.
pub fn generate(args: GenerateArgs) -> anyhow::Result<ExitStatus> {
    let mut cmd = Cli::command();
    let (name, bytes) = match args.what.as_str() {
        "man" => ("vmpilot.1".to_string(), man_page(&cmd)?),
        "state-table" => (
            "state-table.md".into(),
            crate::lease::table_markdown().into_bytes(),
        ),
        "exit-codes" => (
            "exit-codes.md".into(),
            crate::exit::table_markdown().into_bytes(),
        ),
        shell => {
            let shell: clap_complete::Shell = shell.parse().map_err(|_| UsageError {
                problem: format!("cannot generate `{shell}`"),
                hint: "use man, state-table, exit-codes, bash, zsh, fish, elvish or powershell"
                    .into(),
            })?;
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut cmd, "vmpilot", &mut out);
            (format!("vmpilot.{shell}"), out)
        }
    };
    match args.out {
        Some(dir) => {
            std::fs::create_dir_all(&dir)?;
            std::fs::write(Path::new(&dir).join(&name), bytes)?;
            if args.what == "man" {
                write_subcommand_pages(&cmd, &dir)?;
            }
        }
        None => std::io::stdout().write_all(&bytes)?,
    }
    Ok(ExitStatus::Success)
}

/// `vmpilot-run.1` and friends, which the main page refers to.
fn write_subcommand_pages(cmd: &clap::Command, dir: &Path) -> anyhow::Result<()> {
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = format!("vmpilot-{}", sub.get_name());
        let page = sub
            .clone()
            .name(name.clone())
            .version(env!("CARGO_PKG_VERSION"));
        let mut out = Vec::new();
        clap_mangen::Man::new(page).render(&mut out)?;
        std::fs::write(dir.join(format!("{name}.1")), out)?;
    }
    Ok(())
}

fn man_page(cmd: &clap::Command) -> anyhow::Result<Vec<u8>> {
    let man = clap_mangen::Man::new(cmd.clone());
    let mut out = Vec::new();
    man.render_title(&mut out)?;
    man.render_name_section(&mut out)?;
    man.render_synopsis_section(&mut out)?;
    man.render_description_section(&mut out)?;
    man.render_options_section(&mut out)?;
    man.render_subcommands_section(&mut out)?;
    out.extend_from_slice(b".SH \"EXIT STATUS\"\n");
    for (status, meaning) in ExitStatus::TABLE {
        out.extend_from_slice(
            format!(".TP\n{}\n{}\n", status.code(), meaning.replace('`', "")).as_bytes(),
        );
    }
    out.extend_from_slice(b".SH FILES\n.TP\n/etc/vmpilot/vmpilot.toml\nconfig (see --config)\n.TP\n/var/lib/vmpilot\nlease records, event spool, log\n");
    man.render_version_section(&mut out)?;
    Ok(out)
}
