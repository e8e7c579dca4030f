//! `vmpilot`: the pilot command (docs/cli.md). On a libvirt node it becomes
//! `vmpilot-libvirt` before doing anything, so this binary never maps libvirt.

fn main() -> std::process::ExitCode {
    vmpilot::entry::main()
}
