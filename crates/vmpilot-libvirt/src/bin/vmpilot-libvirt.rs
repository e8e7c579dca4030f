//! `vmpilot-libvirt`: the `vmpilot` command with the libvirt backend linked in. `vmpilot`
//! execs it on libvirt nodes; it can be run directly too, with the same arguments.

fn main() -> std::process::ExitCode {
    vmpilot_libvirt::provide();
    vmpilot::entry::main()
}
