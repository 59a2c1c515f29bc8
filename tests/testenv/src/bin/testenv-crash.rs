//! Starts an etcd and a netns, prints them, and dies by SIGKILL: what a
//! test run killed mid-way leaves behind. Used by the reaper test.

fn main() {
    let etcd = leengine_testenv::Etcd::start();
    let ns = leengine_testenv::Netns::new();
    let etcd_pid =
        std::fs::read_to_string(leengine_testenv::run_dir().join("pids")).expect("pids inventory");
    println!("netns={}", ns.name());
    println!("etcd={}", etcd.endpoint());
    println!(
        "pids={}",
        etcd_pid.split_whitespace().collect::<Vec<_>>().join(",")
    );
    println!("dir={}", leengine_testenv::run_dir().display());
    use std::io::Write;
    std::io::stdout().flush().expect("flush");
    // SAFETY: raising SIGKILL on ourselves; no destructors run, on purpose.
    unsafe {
        libc::raise(libc::SIGKILL);
    }
}
