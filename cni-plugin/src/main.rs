//! `leengine-cni`: see the library and docs/cni-plugin.md.

use std::io::{Read, Write};
use std::process::ExitCode;

use leengine_cli::Logs;
use leengine_cni::garp_follow;

/// For operators who run the file by hand; the runtime never passes flags.
const USAGE: &str = "\
leengine-cni: the CNI plugin of type \"leengine\" (docs/cni-plugin.md)

Usage: CNI_COMMAND=ADD|DEL|CHECK|VERSION|STATUS|GC CNI_CONTAINERID=... CNI_NETNS=... \\
         CNI_IFNAME=... CNI_PATH=... leengine < network-config.json
       leengine --version | --help

The runtime (containerd, CRI-O, podman) calls it as the CNI spec says:
the network configuration on stdin, the result or a CNI error as JSON on
stdout. Logs go to stderr, filtered by LEENGINE_CNI_LOG (default: warn).
";

fn main() -> ExitCode {
    Logs {
        env: "LEENGINE_CNI_LOG",
        default: "warn",
        ..Logs::default()
    }
    .init();
    let argv: Vec<String> = std::env::args().collect();
    match argv.get(1).map(String::as_str) {
        Some(garp_follow::ARG) => std::process::exit(garp_follow::run(&argv[2..])),
        // Operators ask the file; the runtime asks with CNI_COMMAND=VERSION.
        Some("--version") => {
            println!("leengine-cni {}", leengine_cli::version!());
            return ExitCode::SUCCESS;
        }
        Some("--help" | "-h") => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        _ => {}
    }
    let mut stdin = Vec::new();
    let read = std::io::stdin().read_to_end(&mut stdin).map(|_| stdin);
    let (out, code) = leengine_cni::answer(read);
    let mut so = std::io::stdout().lock();
    if !out.is_null() {
        let _ = serde_json::to_writer(&mut so, &out);
        let _ = so.write_all(b"\n");
    }
    let _ = so.flush();
    ExitCode::from(code)
}
